"""`make demo` runs `python demo.py`: both triggers as the container runs them, on the fixture records."""

import json
import subprocess

from emulators.process import python_child


def test_demo_delivers_every_fixture_record_once():
    # The demo's own servers share its process group: a timeout here ends them all.
    with python_child("demo.py", stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as demo:
        output = demo.communicate(timeout=600)[0].decode()
    assert demo.returncode == 0, output[-3000:]
    lines = output.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["office365_management_api"]["expected"] == 118
    # 29 fixture records in 11 envelopes, a JSON document, two NDJSON lines and a text line (a heartbeat: none).
    assert summary["consume_eventhub_messages"]["expected"] == 29 + 1 + 2 + 1
    for figures in summary.values():
        assert figures["delivered"] == figures["expected"] and figures["lost"] == figures["duplicates"] == 0
    # What a person looks for: one event of each content type and body kind, and where the logs are.
    for kind in ("Audit.AzureActiveDirectory", "DLP.All", "envelope", "JSON document", "NDJSON", "text"):
        assert any(line.strip().startswith(kind + " ") and "NONE DELIVERED" not in line for line in lines), kind
    assert "trigger output" in output and "SEKOIA_DATA_PATH" in output
