"""The delivery layer against the runtime stub (a real HTTP server on loopback)."""

import threading
import time

import orjson
import pytest

from connectors.delivery import BatchLimits, Forwarder, IntakeSink, OversizeStore, PlaybookSink
from connectors.retry import Backoff


def events(count, start=0, pad=0):
    return [orjson.dumps({"n": i, "pad": "x" * pad}) for i in range(start, start + count)]


class Recorder:
    """Acknowledgements as a collector would see them, with what the runtime had when each ran."""

    def __init__(self, runtime=None):
        self.runtime = runtime
        self.acks = []

    def ack(self, name):
        def run():
            delivered = len(self.runtime.delivered()) if self.runtime else None
            self.acks.append((name, delivered))

        return run


# Two senders share the wire, so batches may land in either order: compare what arrived as a multiset, and
# check the order that matters (acknowledgements) directly.
def forwarder(runtime, tmp_path, logs=None, **limits):
    sink = IntakeSink(runtime.info["intake_url"], runtime.info["intake_key"], user_agent="tests")
    return Forwarder(
        sink,
        trigger="tests",
        limits=BatchLimits(**{"max_events": 100, "max_age": 0.2, **limits}),
        log=(lambda message, level: logs.append((level, message))) if logs is not None else None,
        oversize=OversizeStore(tmp_path / "oversize.jsonl"),
        backoff=lambda: Backoff(base=0.05, cap=0.5),
    )


def test_events_arrive_exactly_as_sent_and_acks_follow_confirmation(runtime, tmp_path):
    recorder = Recorder(runtime)
    fwd = forwarder(runtime, tmp_path)
    for unit in range(10):
        fwd.add(events(37, start=unit * 37), ack=recorder.ack(unit), origin=f"unit-{unit}")
    assert fwd.drain(timeout=30)
    fwd.close()
    assert sorted(runtime.delivered()) == sorted(events(370))
    assert [name for name, _ in recorder.acks] == list(range(10))
    # Each ack ran only once every event of its unit (and of the units before) was in the runtime's file.
    for name, delivered in recorder.acks:
        assert delivered >= (name + 1) * 37


def test_age_flushes_a_partial_batch_without_an_explicit_flush(runtime, tmp_path):
    fwd = forwarder(runtime, tmp_path, max_events=1000, max_age=0.2)
    fwd.add(events(3))
    assert _wait(lambda: len(runtime.delivered()) == 3, 5)
    fwd.close()


def test_runtime_down_then_back_loses_nothing(runtime, tmp_path):
    logs = []
    runtime.control(down_for=2.0)
    recorder = Recorder(runtime)
    fwd = forwarder(runtime, tmp_path, logs=logs)
    fwd.add(events(250), ack=recorder.ack("all"))
    assert fwd.drain(timeout=30)
    fwd.close()
    assert sorted(runtime.delivered()) == sorted(events(250))
    assert recorder.acks == [("all", 250)]
    assert runtime.stats()["cut"] > 0
    warnings = [m for level, m in logs if level == "warning" and "retrying" in m]
    assert len(warnings) == 1  # one line per outage, not one per attempt, batch or sender
    assert any("reachable again" in m for _, m in logs)


def test_failures_and_503s_are_retried_until_confirmed(runtime, tmp_path):
    runtime.control(failure_rate=0.5, down_status=503)
    fwd = forwarder(runtime, tmp_path, max_events=20)
    fwd.add(events(400))
    assert fwd.drain(timeout=60)
    fwd.close()
    assert sorted(runtime.delivered()) == sorted(events(400))
    assert runtime.stats()["failures"] > 0


def test_oversize_event_is_counted_logged_once_and_kept(runtime, tmp_path):
    logs = []
    fwd = forwarder(runtime, tmp_path, logs=logs)
    big = orjson.dumps({"n": "big", "pad": "y" * 260_000})
    batch = events(5)[:2] + [big] + events(5)[2:]
    fwd.add(batch, origin="blob-42")
    assert fwd.drain(timeout=30)
    fwd.close()
    assert sorted(runtime.delivered()) == sorted(events(5))
    assert fwd.oversize == 1
    oversize_logs = [m for _, m in logs if "over the intake limit" in m]
    assert len(oversize_logs) == 1 and str(len(big)) in oversize_logs[0] and "blob-42" in oversize_logs[0]
    kept = [orjson.loads(line) for line in (tmp_path / "oversize.jsonl").read_bytes().splitlines()]
    assert kept == [{"origin": "blob-42", "bytes": len(big), "event": big.decode()}]


def test_large_batches_are_split_under_the_payload_limit(runtime, tmp_path):
    fwd = forwarder(runtime, tmp_path, max_events=100_000, max_bytes=7_000_000, max_age=5)
    batch = events(300, pad=20_000)  # ~6 MB raw, more once escaped inside `jsons`
    fwd.add(batch)
    assert fwd.drain(timeout=60)
    fwd.close()
    assert sorted(runtime.delivered()) == sorted(batch)
    assert runtime.stats()["batches"] >= 1


def test_unconfirmed_batch_is_never_acknowledged(runtime, tmp_path):
    runtime.control(down_for=60)
    recorder = Recorder()
    fwd = forwarder(runtime, tmp_path)
    fwd.add(events(10), ack=recorder.ack("never"))
    assert fwd.close(grace=1.0) is False
    assert recorder.acks == []


def test_wrong_intake_key_is_not_confirmed(runtime, tmp_path):
    recorder = Recorder()
    sink = IntakeSink(runtime.info["intake_url"], "not-the-key", user_agent="tests")
    fwd = Forwarder(sink, trigger="tests", limits=BatchLimits(max_age=0.1), backoff=lambda: Backoff(0.05, 0.2))
    fwd.add(events(3), ack=recorder.ack("never"))
    assert fwd.close(grace=1.0) is False
    assert recorder.acks == [] and runtime.delivered() == []
    assert runtime.stats()["rejected"] > 0


def test_playbook_mode_sends_a_records_file_event(runtime, tmp_path):
    sink = PlaybookSink(runtime.info["callback_url"], runtime.info["token"], runtime.data_path, "tests")
    fwd = Forwarder(sink, trigger="tests", limits=BatchLimits(max_events=50, max_age=0.1))
    recorder = Recorder(runtime)
    fwd.add(events(120), ack=recorder.ack("done"))
    assert fwd.drain(timeout=30)
    fwd.close()
    assert sorted(runtime.delivered()) == sorted(events(120))
    assert runtime.stats()["playbook_events"] == 3
    assert recorder.acks == [("done", 120)]
    assert not any((runtime.data_path / "tests_events").iterdir())  # records files removed once confirmed


def test_ack_only_units_and_concurrent_producers_keep_order(runtime, tmp_path):
    fwd = forwarder(runtime, tmp_path, max_events=7)
    order = []
    lock = threading.Lock()

    def produce(worker):
        for unit in range(20):
            with lock:  # a unit's events and its ack are added together, as the triggers do
                fwd.add(events(3, start=worker * 1000 + unit * 3), ack=lambda w=worker, u=unit: order.append((w, u)))
                fwd.add([], ack=lambda w=worker, u=unit: order.append((w, u, "empty")))

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fwd.drain(timeout=30)
    fwd.close()
    assert len(runtime.delivered()) == 180
    for worker in range(3):
        mine = [entry for entry in order if entry[0] == worker]
        assert [entry[1] for entry in mine] == sorted(entry[1] for entry in mine)
        assert len(mine) == 40


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
