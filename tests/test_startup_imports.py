"""Start-up cost (issue 12): each trigger's process loads its own stack only. The Office 365 trigger never imports
an azure package, the Event Hubs trigger never imports msal, from ``python main.py PARAMETER`` to records
delivered. Read from the interpreter's own import log (``PYTHONPROFILEIMPORTTIME``), not from timings.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

from emulators.process import wait_until
from tests.eventhub_helpers import EventHubStack, records_with_ids
from tests.o365_helpers import O365Rig

IMPORTED = re.compile(rb"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$", re.MULTILINE)


def top_level_imports(log: Path) -> set[str]:
    return {name.split(b".")[0].decode() for name in IMPORTED.findall(log.read_bytes())}


def test_office365_trigger_imports_no_azure_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    with O365Rig(tmp_path, "--blobs", "2", "--records-per-blob", "3") as rig:
        proc = rig.start_trigger()
        assert rig.wait_complete(60), rig.comparison()
        rig.stop_trigger(proc)
    imported = top_level_imports(tmp_path / "trigger.log")
    assert {"office365", "msal", "sekoia_automation"} <= imported  # the log is the whole run's
    assert not {name for name in imported if name.startswith("azure")}, sorted(imported)


def test_eventhub_trigger_imports_no_msal(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    with EventHubStack(tmp_path, partitions=2) as stack:
        stack.publish(records_with_ids(10))
        proc = stack.start_process(stack.config())
        assert wait_until(lambda: stack.delivered_count() >= 10, 60), stack.delivered_count()
        proc.stop(30)
    imported = top_level_imports(tmp_path / "trigger-0.log")
    assert {"azure", "azure_eventhub", "sekoia_automation"} <= imported
    assert "msal" not in imported and "office365" not in imported, sorted(imported)


def test_sigterm_while_starting_is_a_clean_stop(tmp_path, monkeypatch):
    """An orchestrator may stop a container in its first second, before the SDK installs its own handler: the
    process ends with 0 (a clean stop: nothing was collected yet), not by the signal's default action (-15)."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    with O365Rig(tmp_path, "--blobs", "2", "--records-per-blob", "3") as rig:
        proc = rig.start_trigger()
        log = tmp_path / "trigger.log"
        # Still importing: the SDK's modules are loading, the trigger (and its handler) does not exist yet.
        assert wait_until(lambda: b"sekoia_automation" in log.read_bytes(), 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait_for(30) == 0, log.read_bytes()[-2000:]
        assert rig.delivered_count() == 0
