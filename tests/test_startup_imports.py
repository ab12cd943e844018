"""Start-up cost (issue 12): each trigger's process loads its own stack only. The Office 365 trigger never imports
an azure package, the Event Hubs trigger never imports msal, from ``python main.py PARAMETER`` to records
delivered. Read from the interpreter's own import log (``PYTHONPROFILEIMPORTTIME``), not from timings.
"""

from __future__ import annotations

import re
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
