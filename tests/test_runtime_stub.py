"""The runtime stub's intake API as the benchmarks run it (``--count-only``): checked and counted, nothing kept."""

import socket

import orjson
import pytest
import requests

from emulators.process import wait_until
from emulators.runtime.harness import Runtime


@pytest.fixture
def counting(tmp_path):
    runtime = Runtime(tmp_path, "--count-only")
    yield runtime
    runtime.stop()


def post(runtime: Runtime, body: bytes) -> requests.Response:
    return requests.post(runtime.info["url"] + "/batch", data=body, headers={"Content-Type": "application/json"},
                         timeout=10)


def batch(runtime: Runtime, events: list[str], key: str | None = None) -> bytes:
    return orjson.dumps({"intake_key": key or runtime.info["intake_key"], "jsons": events})


def test_count_only_confirms_and_counts_events_and_writes_none(counting):
    events = ['{"Id":"a","é":1}', '{"Id":"b","n":123456789012345678901234}', "plain text"]
    answer = post(counting, batch(counting, events))
    assert answer.status_code == 200 and answer.json() == {"received": True, "event_ids": ["ev-0", "ev-1", "ev-2"]}
    answer = post(counting, batch(counting, events[:1]))
    assert answer.json()["event_ids"] == ["ev-3"]
    assert counting.stats()["events"] == 4 and counting.stats()["batches"] == 2
    assert counting.delivered() == []


def test_the_counter_reads_the_confirmed_count(counting):
    confirmed = counting.counter()
    assert confirmed() == 0
    post(counting, batch(counting, ["a", "b"]))
    assert confirmed() == 2 and confirmed() == counting.stats()["events"]


@pytest.mark.parametrize("body", ['{"intake_key": "KEY", "jsons": [1]}', '{"jsons": []}', '{"intake_key": "KEY", '])
def test_count_only_still_refuses_what_the_intake_would(counting, body):
    assert post(counting, body.replace("KEY", counting.info["intake_key"]).encode()).status_code == 400
    assert post(counting, batch(counting, ["x"], key="wrong")).status_code == 401
    assert counting.stats()["events"] == 0


def test_count_only_still_applies_the_refusal_knobs(counting):
    counting.control(refuse_markers=["refuse-me"])
    assert post(counting, batch(counting, ['{"a":"refuse-me"}', '{"b":1}'])).status_code == 400
    assert post(counting, batch(counting, ['{"b":1}'])).status_code == 200
    assert counting.stats()["events"] == 1 and counting.stats()["refused"] == 1


def test_stats_number_delivery_requests_and_say_the_oldest_still_handled(counting):
    """What the kill scenarios wait on: every request received before a kill answered, or cut with the trigger."""
    body = batch(counting, ['{"a":1}'])
    held = socket.create_connection(("127.0.0.1", counting.info["port"]))
    held.sendall(b"POST /batch HTTP/1.1\r\nHost: stub\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])  # the stub waits for the rest
    assert wait_until(lambda: counting.stats()["active"] == 1, 10)
    assert post(counting, body).status_code == 200  # a later request answered does not hide the older one
    stats = counting.stats()
    assert (stats["deliveries"], stats["active"], stats["oldest_active"]) == (2, 1, 0)
    held.close()  # as a killed trigger's connection
    assert wait_until(lambda: counting.stats()["active"] == 0, 10)
    assert counting.stats()["oldest_active"] == counting.stats()["deliveries"] == 2
    assert counting.stats()["events"] == 1
