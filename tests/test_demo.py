"""`make demo` runs `python demo.py`: both triggers as the container runs them, on the fixture records."""

import json
import subprocess
import sys

from emulators.process import ROOT


def test_demo_delivers_every_fixture_record_once():
    result = subprocess.run([sys.executable, "demo.py"], cwd=ROOT, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stdout.decode()[-3000:]
    summary = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert summary["office365_management_api"]["expected"] == 118
    assert summary["consume_eventhub_messages"]["expected"] == 29
    for figures in summary.values():
        assert figures["delivered"] == figures["expected"] and figures["duplicates"] == 0
