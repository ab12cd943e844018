"""``make demo``: both triggers, run as the container runs them, against the local servers and the real sample data.

Starts on 127.0.0.1 the Office 365 emulator (fixture records), the Event Hubs emulator (seeded with the fixture
envelopes by the real producer client), Azurite and one runtime stub per trigger; runs
``python main.py <docker_parameters>`` with the container's environment; waits until every expected record
arrived (or a timeout); stops each trigger with SIGTERM; prints a summary and, last, one JSON line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import requests

from emulators import fixtures
from emulators.azurite import Azurite
from emulators.process import ROOT, ServerProcess, wait_until
from emulators.runtime.harness import Runtime, compare

TIMEOUT = 180.0


def canonical(record: dict) -> str:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()


def run_trigger(parameter: str, env: dict[str, str], log_path: Path, delivered: Callable[[], int], expected: int):
    """Start ``python main.py PARAMETER``, wait for ``expected`` deliveries, stop it gracefully."""
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "main.py", parameter], cwd=ROOT, env={**os.environ, **env},
                                stdout=log, stderr=log)
        complete = wait_until(lambda: delivered() >= expected or proc.poll() is not None, TIMEOUT, 0.1)
        seconds = time.monotonic() - started
        time.sleep(2)  # let anything delivered twice show up before counting
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return complete and proc.returncode in (0, None), round(seconds, 2), proc.returncode


def office365(work: Path) -> dict:
    emulator = ServerProcess("emulators.office365", "--port", "0", "--workdir", str(work / "o365"),
                             log_path=work / "office365-emulator.log")
    runtime = Runtime(work / "o365-runtime")
    try:
        info = emulator.info
        published = requests.get(info["management_url"] + "/_emulator/published?all=1", verify=info["ca_file"],
                                 timeout=10).json()["ids"]
        env = runtime.env({
            "tenant_id": info["tenant_id"],
            "client_id": info["client_id"],
            "client_secret": info["client_secret"],
            "login_url": info["login_url"],
            "management_url": info["management_url"],
        })
        env.update(SSL_CERT_FILE=info["ca_file"], REQUESTS_CA_BUNDLE=info["ca_file"])
        ok, seconds, code = run_trigger("office365_management_api", env, work / "office365-trigger.log",
                                        lambda: len(runtime.delivered()), len(published))
        delivered_ids = [record.get("Id") for record in runtime.delivered_records()]
        return {**compare(published, delivered_ids), "seconds": seconds, "complete": ok, "exit_code": code}
    finally:
        runtime.stop()
        emulator.stop()


def eventhub(work: Path) -> dict:
    from azure.eventhub import EventData, EventHubProducerClient

    hub = "insights-logs-demo"
    emulator = ServerProcess("emulators.eventhub", "--port", "0", "--hub", hub, "--partitions", "4",
                             log_path=work / "eventhub-emulator.log")
    azurite = Azurite(location=work / "azurite").start()
    runtime = Runtime(work / "eventhub-runtime")
    try:
        azurite.create_container("checkpoints")
        expected = []
        producer = EventHubProducerClient.from_connection_string(emulator.info["connection_string"])
        with producer:
            for lines in fixtures.eventhub_records().values():
                records = [orjson.loads(line) for line in lines]
                expected.extend(canonical(record) for record in records)
                batch = producer.create_batch()
                batch.add(EventData(orjson.dumps({"records": records})))
                producer.send_batch(batch)
        env = runtime.env({
            "hub_connection_string": emulator.info["connection_string"],
            "hub_name": hub,
            "hub_consumer_group": "$Default",
            "storage_connection_string": azurite.connection_string,
            "storage_container_name": "checkpoints",
        })
        ok, seconds, code = run_trigger("consume_eventhub_messages", env, work / "eventhub-trigger.log",
                                        lambda: len(runtime.delivered()), len(expected))
        delivered = [canonical(record) for record in runtime.delivered_records()]
        return {**compare(expected, delivered), "seconds": seconds, "complete": ok, "exit_code": code}
    finally:
        runtime.stop()
        azurite.stop()
        emulator.stop()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="sekoia-m365-demo-"))
    print(f"Demo workspace (logs, data paths, delivered records): {work}")
    results = {}
    for name, run in (("office365_management_api", office365), ("consume_eventhub_messages", eventhub)):
        print(f"\n== {name}: starting the local servers and `python main.py {name}` ...", flush=True)
        results[name] = run(work)
        r = results[name]
        print(f"   expected {r['expected']}, delivered {r['delivered']}, lost {r['lost']}, "
              f"duplicates {r['duplicates']}, {r['seconds']} s, exit code {r['exit_code']}")
    passed = all(r["lost"] == 0 and r["duplicates"] == 0 and r["complete"] for r in results.values())
    print("\nAll records delivered once." if passed else "\nSOME RECORDS WERE NOT DELIVERED EXACTLY ONCE: see the logs above.")
    print(json.dumps({name: {key: r[key] for key in ("expected", "delivered", "duplicates", "seconds")}
                      for name, r in results.items()}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
