"""``make demo``: both triggers, run as the container runs them, against the local servers and the real sample data.

Starts on 127.0.0.1 the Office 365 emulator (the fixture records), the Event Hubs emulator (fed by the real
producer client with the fixture envelopes and one message of every other body kind), Azurite and one runtime
stub per trigger; runs ``python main.py <docker_parameters>`` with the container's environment; waits until every
expected event arrived (or a timeout); stops each trigger with SIGTERM. Then it shows one delivered event of each
content type and body kind, where the logs and the data path are, and, last, one JSON line of figures.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import requests

from emulators import fixtures
from emulators.azurite import Azurite
from emulators.process import ServerProcess, python_child, wait_until
from emulators.runtime.harness import Runtime, compare

TIMEOUT = 180.0
SAMPLE_CHARS = 150
HEARTBEAT = "heartbeat"
_JSON = b'{"time":"2026-11-29T10:00:00Z","category":"DemoApp","message":"a JSON object, not an envelope"}'
_TEXT = b"<134>Nov 29 10:00:00 fw01 demo[42]: a plain text line"
# Event Hubs bodies besides the diagnostic-settings envelopes: kind -> (body, the events it must become).
OTHER_BODIES: dict[str, tuple[bytes, list[bytes]]] = {
    "JSON document": (_JSON, [_JSON]),
    "NDJSON": (b'{"line":1,"source":"shipper"}\n{"line":2,"source":"shipper"}\n',
               [b'{"line":1,"source":"shipper"}', b'{"line":2,"source":"shipper"}']),
    "text": (_TEXT, [_TEXT]),
    HEARTBEAT: (b'{"records":[]}', []),  # skipped: nothing to deliver
}


def key(event: bytes) -> str:
    """An event as a comparable string: JSON in canonical form (key order aside), text as it is."""
    try:
        value = orjson.loads(event)
    except orjson.JSONDecodeError:
        return event.decode("utf-8", "backslashreplace")
    return value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def run_trigger(parameter: str, env: dict[str, str], log_path: Path, delivered: Callable[[], int],
                expected: int) -> tuple[bool, float, int]:
    """``python main.py PARAMETER`` until ``expected`` deliveries, then SIGTERM: (complete, seconds, exit code)."""
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = python_child("main.py", parameter, env={**os.environ, **env}, name=parameter, stdout=log, stderr=log)
    with proc:
        complete = wait_until(lambda: delivered() >= expected or proc.poll() is not None, TIMEOUT, 0.1)
        seconds = round(time.monotonic() - started, 2)
        # A graceful stop: once it exited, everything it delivered (and any duplicate) is in the runtime's file.
        code = proc.stop(30)
    return complete and code == 0, seconds, code


def samples(lines: list[bytes], kind_of: dict[str, str]) -> dict[str, bytes]:
    """The first delivered event of each kind."""
    first: dict[str, bytes] = {}
    for line in lines:
        kind = kind_of.get(key(line))
        if kind is not None:
            first.setdefault(kind, line)
    return first


def office365(work: Path) -> dict:
    emulator = ServerProcess("emulators.office365", "--port", "0", "--workdir", str(work / "o365"),
                             log_path=work / "office365-emulator.log")
    try:
        runtime = Runtime(work / "o365-runtime")
    except BaseException:
        emulator.stop()
        raise
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
        log = work / "office365-trigger.log"
        ok, seconds, code = run_trigger("office365_management_api", env, log, lambda: len(runtime.delivered()),
                                        len(published))
        lines = runtime.delivered()
        delivered_ids = [orjson.loads(line).get("Id") for line in lines]
        kind_of = {key(line): content_type for content_type, records in fixtures.o365_records().items()
                   for line in records}
        return {**compare(published, delivered_ids), "seconds": seconds, "complete": ok, "exit_code": code,
                "samples": samples(lines, kind_of), "kinds": list(fixtures.O365_CONTENT_TYPES),
                "paths": paths(log, work / "office365-emulator.log", runtime)}
    finally:
        runtime.stop()
        emulator.stop()


def eventhub(work: Path) -> dict:
    from azure.eventhub import EventData, EventHubProducerClient

    hub = "insights-logs-demo"
    bodies: list[bytes] = []
    kind_of: dict[str, str] = {}
    expected: list[str] = []
    for records in fixtures.eventhub_records().values():  # one envelope per diagnostic-settings category
        bodies.append(b'{"records":[' + b",".join(records) + b"]}")
        expected += [key(record) for record in records]
        kind_of.update((key(record), "envelope") for record in records)
    for kind, (body, events) in OTHER_BODIES.items():
        bodies.append(body)
        expected += [key(event) for event in events]
        kind_of.update((key(event), kind) for event in events)

    emulator = ServerProcess("emulators.eventhub", "--port", "0", "--hub", hub, "--partitions", "4",
                             log_path=work / "eventhub-emulator.log")
    azurite = runtime = None
    try:
        azurite = Azurite(location=work / "azurite", log_path=work / "azurite.log").start()
        runtime = Runtime(work / "eventhub-runtime")
        azurite.create_container("checkpoints")
        with EventHubProducerClient.from_connection_string(emulator.info["connection_string"]) as producer:
            for body in bodies:
                batch = producer.create_batch()
                batch.add(EventData(body))
                producer.send_batch(batch)
        env = runtime.env({
            "hub_connection_string": emulator.info["connection_string"],
            "hub_name": hub,
            "hub_consumer_group": "$Default",
            "storage_connection_string": azurite.connection_string,
            "storage_container_name": "checkpoints",
        })
        log = work / "eventhub-trigger.log"
        ok, seconds, code = run_trigger("consume_eventhub_messages", env, log, lambda: len(runtime.delivered()),
                                        len(expected))
        lines = runtime.delivered()
        return {**compare(expected, [key(line) for line in lines]), "seconds": seconds, "complete": ok,
                "exit_code": code, "samples": samples(lines, kind_of), "kinds": ["envelope", *OTHER_BODIES],
                "paths": paths(log, work / "eventhub-emulator.log", runtime)}
    finally:
        for server in (runtime, azurite, emulator):
            if server is not None:
                server.stop()


def paths(trigger_log: Path, emulator_log: Path, runtime: Runtime) -> dict[str, Path]:
    return {
        "trigger output": trigger_log,
        "trigger logs sent to Sekoia": Path(runtime.info["logs_out"]),
        "emulator log": emulator_log,
        "data path (SEKOIA_DATA_PATH)": runtime.data_path,
        "delivered events": runtime.out,
    }


def show(name: str, result: dict) -> None:
    print(f"   expected {result['expected']}, delivered {result['delivered']}, lost {result['lost']}, "
          f"duplicates {result['duplicates']}, {result['seconds']} s, exit code {result['exit_code']}")
    what = "content type" if name == "office365_management_api" else "body kind"
    print(f"   one delivered event of each {what}:")
    width = max(map(len, result["kinds"]))
    for kind in result["kinds"]:
        line = result["samples"].get(kind)
        if line is None:
            text = "skipped, as it should be (nothing to deliver)" if kind == HEARTBEAT else "NONE DELIVERED"
        else:
            text = line.decode("utf-8", "backslashreplace")
            text = text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "..."
        print(f"     {kind:<{width}}  {text}")
    width = max(map(len, result["paths"]))
    for label, path in result["paths"].items():
        print(f"   {label:<{width}}  {path}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="sekoia-m365-demo-"))
    print(f"Demo workspace (every log, data path and delivered event below is in it): {work}")
    results = {}
    for name, run in (("office365_management_api", office365), ("consume_eventhub_messages", eventhub)):
        print(f"\n== {name}: starting the local servers and `python main.py {name}` ...", flush=True)
        results[name] = run(work)
        show(name, results[name])
    passed = all(r["lost"] == 0 and r["duplicates"] == 0 and r["complete"] for r in results.values())
    print("\nAll events delivered once." if passed else "\nSOME EVENTS WERE NOT DELIVERED EXACTLY ONCE: see the logs.")
    figures = ("expected", "delivered", "lost", "duplicates", "seconds")
    print(json.dumps({name: {field: r[field] for field in figures} for name, r in results.items()}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
