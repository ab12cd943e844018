"""The runtime stub's intake API as the benchmarks run it (``--count-only``): checked and counted, nothing kept."""

import orjson
import pytest
import requests

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
