"""The delivery layer against the runtime stub (a real HTTP server on loopback)."""

import asyncio
import hashlib
import json
import os
import stat
import threading
import time
from urllib.parse import urlsplit

import orjson
import pytest
from sekoia_automation.module import Module

from connectors.delivery import REFUSES_EVERYTHING_REQUESTS, BatchLimits, DeliveryBroken, Forwarder, UnkeptRefusal
from connectors.setaside import EXPIRY_CHECK_SECONDS, ORIGINALS_PREFIX, REFUSED_FILE, Kept, OriginalsArchive, RefusedFile, SetAsideStore
from connectors.sinks import IntakeSink, PlaybookSink
from connectors.errors import ConfigurationError
from connectors.locks import InstanceLock
from connectors.trigger import CollectorTrigger
from connectors.retry import Backoff
from connectors.truncation import MARKER, shorten
from emulators.process import eventually, wait_until
from tests.support.private_ca import private_ca


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
def forwarder(runtime, tmp_path, logs=None, sink=None, fatal=None, store=True, backoff=(0.05, 0.5),
              timeout=(10.0, 120.0), idle_flush=0.0, delivered=None, **limits):
    sink = sink or IntakeSink(runtime.info["intake_url"], runtime.info["intake_key"], user_agent="tests")
    return Forwarder(
        sink,
        trigger="tests",
        limits=BatchLimits(**{"max_events": 100, "max_age": 0.2, **limits}),
        log=(lambda message, level: logs.append((level, message))) if logs is not None else None,
        set_aside=(SetAsideStore(tmp_path) if store is True else store or None),
        backoff=lambda: Backoff(base=backoff[0], cap=backoff[1]),
        timeout=timeout,
        on_fatal=fatal.append if fatal is not None else None,
        idle_flush=idle_flush,
        on_delivered=delivered.append if delivered is not None else None,  # what the trigger counts as forwarded
    )


def set_aside(tmp_path, kind="both"):
    """What the set-aside files hold: the refused events, then the originals of shortened ones, oldest first."""
    paths = [tmp_path / REFUSED_FILE] if kind in ("both", "refused") else []
    paths += sorted(tmp_path.glob(f"{ORIGINALS_PREFIX}*.jsonl")) if kind in ("both", "originals") else []
    return [orjson.loads(line) for path in paths if path.exists() for line in path.read_bytes().splitlines()]


async def test_the_end_of_a_burst_goes_at_once_not_at_the_max_age(runtime, tmp_path):
    """A source gone quiet (the last blob, the end of a partition's backlog): with an idle flush, the buffer and
    its acknowledgement go once no add came for a moment, long before the batch's max age; without, they wait."""
    waiting, prompt = Recorder(runtime), Recorder(runtime)
    plain = forwarder(runtime, tmp_path, max_age=60)
    await plain.add(events(5), ack=waiting.ack("plain"))
    quiet = forwarder(runtime, tmp_path, max_age=60, idle_flush=0.05)
    for unit in range(3):  # a burst: one timer, cut once the adds stop
        await quiet.add(events(5, start=10 + unit * 5), ack=prompt.ack(unit))
    assert await eventually(lambda: len(prompt.acks) == 3, 20)
    assert prompt.acks == [(0, 15), (1, 15), (2, 15)] and waiting.acks == []  # one batch for the burst
    assert sorted(runtime.delivered()) == sorted(events(15, start=10))
    await quiet.close()
    await plain.close()


async def test_events_arrive_exactly_as_sent_and_acks_follow_confirmation(runtime, tmp_path):
    recorder = Recorder(runtime)
    fwd = forwarder(runtime, tmp_path)
    for unit in range(10):
        await fwd.add(events(37, start=unit * 37), ack=recorder.ack(unit), origin=f"unit-{unit}")
    assert await fwd.drain(timeout=30)
    assert await fwd.close() is True
    assert await fwd.add(events(1)) == 0  # closed: no sender would take it
    assert sorted(runtime.delivered()) == sorted(events(370))
    assert [name for name, _ in recorder.acks] == list(range(10))
    # Each ack ran only once every event of its unit (and of the units before) was in the runtime's file.
    for name, delivered in recorder.acks:
        assert delivered >= (name + 1) * 37


async def test_age_flushes_a_partial_batch_without_an_explicit_flush(runtime, tmp_path):
    fwd = forwarder(runtime, tmp_path, max_events=1000, max_age=0.2)
    await fwd.add(events(3))
    assert await eventually(lambda: len(runtime.delivered()) == 3, 5)
    await fwd.close()


async def test_runtime_down_then_back_loses_nothing(runtime, tmp_path):
    logs = []
    runtime.control(down_for=120)  # ended below, once the forwarder has met it: however slow its first attempt
    recorder = Recorder(runtime)
    fwd = forwarder(runtime, tmp_path, logs=logs)
    await fwd.add(events(250), ack=recorder.ack("all"))
    assert await eventually(lambda: fwd.outage_seconds is not None, 30)
    runtime.control(down_for=0)
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert sorted(runtime.delivered()) == sorted(events(250))
    assert recorder.acks == [("all", 250)]
    assert runtime.stats()["cut"] > 0
    warnings = [m for level, m in logs if level == "warning" and "retrying" in m]
    assert len(warnings) == 1  # one line per outage, not one per attempt, batch or sender
    assert any("reachable again" in m for _, m in logs)


async def test_an_answer_slower_than_the_read_timeout_is_retried(runtime, tmp_path):
    logs = []
    runtime.control(hang_seconds=30)
    recorder = Recorder(runtime)
    fwd = forwarder(runtime, tmp_path, logs=logs, timeout=(5.0, 0.5))
    await fwd.add(events(20), ack=recorder.ack("all"))
    assert await eventually(lambda: fwd.outage_seconds is not None, 10)  # the first attempt timed out
    runtime.control(hang_seconds=0)
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert recorder.acks == [("all", 20)]
    assert sorted(runtime.delivered()) == sorted(events(20))  # the timed-out attempts were dropped by the runtime
    [warning] = [m for level, m in logs if level == "warning" and "retrying" in m]
    assert "unreachable: " in warning and "Timeout" in warning


async def test_failures_and_503s_are_retried_until_confirmed(runtime, tmp_path):
    runtime.control(failure_rate=0.5, down_status=503)
    fwd = forwarder(runtime, tmp_path, max_events=20)
    await fwd.add(events(400))
    assert await fwd.drain(timeout=60)
    await fwd.close()
    assert sorted(runtime.delivered()) == sorted(events(400))
    assert runtime.stats()["failures"] > 0


async def test_oversize_event_arrives_shortened_and_is_kept_whole(runtime, tmp_path):
    logs = []
    fwd = forwarder(runtime, tmp_path, logs=logs)
    big = orjson.dumps({"n": "big", "pad": "y" * 260_000, "note": "kept", "deep": {"text": "z" * 100_000}})
    text = b"a plain text line " * 20_000
    batch = events(5)[:2] + [big, text] + events(5)[2:]
    await fwd.add(batch, origin="blob-42")
    assert await fwd.drain(timeout=30)
    await fwd.close()
    delivered = runtime.delivered()
    assert sorted(line for line in delivered if b"sekoia_truncated" not in line) == sorted(events(5))
    [short_json] = [orjson.loads(line) for line in delivered if line.startswith(b'{"n":"big"')]
    [short_text] = [line for line in delivered if line.startswith(b"a plain text line")]
    assert len(orjson.dumps(short_json)) <= 250_000 and len(short_text) <= 250_000
    marker = short_json[MARKER]
    assert marker["original_bytes"] == len(big) and marker["fields"] == ["pad"]  # the longest value alone was cut
    assert short_json["note"] == "kept" and short_json["deep"]["text"] == "z" * 100_000
    assert short_text.endswith(f"original_bytes={len(text)} sha256={hashlib.sha256(text).hexdigest()}]".encode())
    assert fwd.shortened == 2
    warnings = [m for _, m in logs if "over the intake limit" in m]
    assert len(warnings) == 2 and all("blob-42" in m and "sent shortened" in m for m in warnings)
    kept = set_aside(tmp_path)
    assert [entry["event"].encode() for entry in kept] == [big, text]
    assert {entry["origin"] for entry in kept} == {"blob-42"} and kept[0]["sha256"] == marker["sha256"]


@pytest.mark.parametrize("value", [
    {"a": {"b": "x" * 300_000, "c": "short"}, "n": 123456789012345678901234, "l": ["y" * 100_000, "z"]},
    ["w" * 200_000, "v" * 200_000],
    list(range(60_000)),  # small values only: the start of the event, wrapped
    "é" * 200_000,
])
def test_shortened_json_stays_json_under_the_limit(value):
    event = json.dumps(value, ensure_ascii=False).encode()
    short = shorten(event, 250_000)
    assert len(short.event) <= 250_000 and short.original_bytes == len(event)
    result = json.loads(short.event)  # exact integers: the standard library
    if isinstance(value, dict):
        assert result["n"] == value["n"] and result["a"]["c"] == "short" and result["l"] == value["l"]
        assert result[MARKER]["fields"] == ["a.b"] and value["a"]["b"].startswith(result["a"]["b"])
        assert len(short.event) > 249_000  # cut no more than needed
    elif isinstance(value, str):
        assert result.startswith("éé") and MARKER in result
    else:
        assert result[MARKER]["sha256"] == short.sha256


async def test_large_batches_are_split_under_the_payload_limit(runtime, tmp_path):
    fwd = forwarder(runtime, tmp_path, max_events=100_000, max_bytes=7_000_000, max_age=5)
    # ~6 MB raw, twice that once escaped inside `jsons` (each \" becomes \\\"): over the 10 MB payload limit
    batch = [orjson.dumps({"n": i, "pad": '"' * 10_000}) for i in range(300)]
    await fwd.add(batch)
    assert await fwd.drain(timeout=60)
    await fwd.close()
    assert sorted(runtime.delivered()) == sorted(batch)
    assert runtime.stats()["batches"] == 2  # one batch cut, sent in two requests


async def test_batches_are_cut_at_the_event_reaching_their_size_or_count(runtime, tmp_path):
    # Room for every batch (no wait in add, so no sender runs in between): what is cut is what add did.
    fwd = forwarder(runtime, tmp_path, max_events=12, max_bytes=1000, max_age=5, in_flight=20)
    sized = [b'{"n":"%04d","pad":"%s"}' % (i, b"x" * 79) for i in range(95)]  # 100 bytes each
    assert {len(event) for event in sized} == {100}
    await fwd.add(sized[:33], origin="a")  # 10 per batch by bytes: three cut, three buffered
    assert fwd.pending == 3
    await fwd.add(sized[33:], origin="b")
    assert fwd.pending == 9  # the last five still buffered
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert runtime.stats()["batches"] == 10  # nine of ten events (1,000 bytes) and the last five
    assert sorted(runtime.delivered()) == sorted(sized)
    small = forwarder(runtime, tmp_path, max_events=12, max_bytes=1_000_000, max_age=5, in_flight=20)
    await small.add(sized[:30])
    assert small.pending == 2  # two of twelve events cut, six buffered
    assert await small.drain(timeout=30)
    await small.close()
    assert runtime.stats()["batches"] == 13


async def test_a_proxy_from_the_environment_is_used(runtime, tmp_path, monkeypatch):
    # The runtime stub as the proxy of an intake whose name does not resolve: the events arrive only through it.
    for name in ("http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", runtime.info["intake_url"])
    sink = IntakeSink("http://intake.invalid", runtime.info["intake_key"], user_agent="tests")
    fwd = forwarder(runtime, tmp_path, sink=sink)
    await fwd.add(events(5))
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert sorted(runtime.delivered()) == sorted(events(5))


async def test_unconfirmed_batch_is_never_acknowledged(runtime, tmp_path):
    runtime.control(down_for=60)
    recorder = Recorder()
    fwd = forwarder(runtime, tmp_path)
    await fwd.add(events(10), ack=recorder.ack("never"))
    assert await fwd.close(grace=1.0) is False
    assert recorder.acks == []


async def test_playbook_mode_sends_a_records_file_event(runtime, tmp_path):
    # Left by earlier runs: a request abandoned two hours ago (removed), one a minute ago (the runtime may still
    # read it: kept).
    parent = runtime.data_path / "tests_events"
    old, recent = parent / "abandoned-2h", parent / "abandoned-1min"
    for directory, age in ((old, 7200), (recent, 60)):
        directory.mkdir(parents=True)
        (directory / "event.json").write_bytes(b"[]")
        os.utime(directory, (time.time() - age, time.time() - age))
    sink = PlaybookSink(runtime.info["callback_url"], runtime.info["token"], runtime.data_path, "tests")
    fwd = Forwarder(sink, trigger="tests", limits=BatchLimits(max_events=50, max_age=0.1))
    recorder = Recorder(runtime)
    await fwd.add(events(120), ack=recorder.ack("done"))
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert sorted(runtime.delivered()) == sorted(events(120))
    assert runtime.stats()["playbook_events"] == 3
    assert recorder.acks == [("done", 120)]
    assert list(parent.iterdir()) == [recent]  # records files removed once confirmed, the old abandoned one too


async def test_ack_only_units_and_concurrent_producers_keep_order(runtime, tmp_path):
    fwd = forwarder(runtime, tmp_path, max_events=7)
    order = []
    lock = asyncio.Lock()

    async def produce(worker):
        for unit in range(20):
            async with lock:  # a unit's events and its ack are added together, as the triggers do
                await fwd.add(events(3, start=worker * 1000 + unit * 3),
                              ack=lambda w=worker, u=unit: order.append((w, u)))
                await fwd.add([], ack=lambda w=worker, u=unit: order.append((w, u, "empty")))

    await asyncio.gather(*(produce(worker) for worker in range(3)))
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert len(runtime.delivered()) == 180
    for worker in range(3):
        mine = [entry for entry in order if entry[0] == worker]
        assert [entry[1] for entry in mine] == sorted(entry[1] for entry in mine)
        assert len(mine) == 40


async def test_acknowledgements_run_on_the_loop_in_order_across_senders(runtime, tmp_path):
    # Four senders, batches of 10 and a runtime that holds some requests longer than others: batches are
    # confirmed out of order, acknowledged in order, each on the loop's own thread.
    runtime.control(failure_rate=0.3, down_status=503)
    loop, thread = asyncio.get_running_loop(), threading.get_ident()
    seen = []

    def ack(unit):
        def run():
            seen.append((unit, threading.get_ident() == thread and asyncio.get_running_loop() is loop,
                         len(runtime.delivered())))
        return run

    threads = threading.active_count()
    fwd = forwarder(runtime, tmp_path, max_events=10, senders=4, in_flight=4)
    for unit in range(30):
        await fwd.add(events(10, start=unit * 10), ack=ack(unit))
    assert await fwd.drain(timeout=60)
    assert threading.active_count() == threads, [t.name for t in threading.enumerate()]  # none of delivery's own
    await fwd.close()
    assert [unit for unit, _, _ in seen] == list(range(30))
    assert all(on_loop for _, on_loop, _ in seen)
    assert all(delivered >= (unit + 1) * 10 for unit, _, delivered in seen)
    assert sorted(runtime.delivered()) == sorted(events(300))


async def test_refused_events_are_isolated_set_aside_and_the_rest_goes_on(runtime, tmp_path):
    logs = []
    runtime.control(refuse_markers=["refuse-me"])
    recorder, counted = Recorder(runtime), []
    fwd = forwarder(runtime, tmp_path, logs=logs, delivered=counted)
    bad = {}
    for unit in range(10):
        batch = events(100, start=unit * 100)
        if unit in (2, 5, 9):
            batch[37] = orjson.dumps({"n": f"bad-{unit}", "note": "refuse-me"})
            bad[batch[37]] = f"blob-{unit}"
        await fwd.add(batch, ack=recorder.ack(unit), origin=f"blob-{unit}")
    assert await fwd.drain(timeout=60)
    await fwd.close()
    good = [event for unit in range(10) for event in events(100, start=unit * 100)
            if not (unit in (2, 5, 9) and event == events(1, start=unit * 100 + 37)[0])]
    assert sorted(runtime.delivered()) == sorted(good)
    assert [name for name, _ in recorder.acks] == list(range(10))  # the resume point went past them
    kept = set_aside(tmp_path)
    assert {entry["event"].encode(): entry["origin"] for entry in kept} == bad
    assert all(entry["reason"].startswith("refused: HTTP 400") for entry in kept)
    assert fwd.refused == 3 and runtime.stats()["refused"] >= 3
    assert sum(counted) == 997  # set aside, not counted as delivered
    refusals = [m for level, m in logs if "refused an event" in m]
    assert len(refusals) == 3 and all(any(origin in m for m in refusals) for origin in bad.values())
    assert not any("retrying" in m for _, m in logs)  # a refusal is not an outage


async def test_a_payload_too_large_is_split_until_it_fits(runtime, tmp_path):
    runtime.control(refuse_over_bytes=20_000)
    logs, counted = [], []
    fwd = forwarder(runtime, tmp_path, logs=logs, max_events=200, delivered=counted)
    batch = events(200, pad=900)  # about 1 KB each: requests of 20 events at most are taken
    # Under the event limit, over this intake's request: the first fits once halved, the second does not.
    halved = orjson.dumps({"n": "alone", "pad": "q" * 30_000})
    too_large = orjson.dumps({"n": "too large", "pad": "r" * 50_000})
    await fwd.add(batch[:100] + [halved] + batch[100:150] + [too_large] + batch[150:], origin="partition 3")
    assert await fwd.drain(timeout=60)
    await fwd.close()
    delivered = runtime.delivered()
    assert sorted(line for line in delivered if MARKER.encode() not in line) == sorted(batch)
    [short] = [orjson.loads(line) for line in delivered if MARKER.encode() in line]
    assert short["n"] == "alone" and short[MARKER]["sha256"] == hashlib.sha256(halved).hexdigest()
    assert len(orjson.dumps(short)) <= len(halved) // 2
    kept = {entry["event"].encode(): entry for entry in set_aside(tmp_path)}
    assert set(kept) == {halved, too_large}
    assert kept[halved]["reason"].startswith("too large for the intake (HTTP 413): sent shortened")
    assert kept[too_large]["reason"].startswith("refused: HTTP 413")
    assert {entry["origin"] for entry in kept.values()} == {"partition 3"}
    assert fwd.shortened == 1 and fwd.refused == 1 and sum(counted) == 201
    assert len([m for _, m in logs if "as too large" in m and "sent shortened" in m]) == 1


async def test_playbook_refusals_are_classified_the_same_way(runtime, tmp_path):
    runtime.control(refuse_markers=["refuse-me"])
    sink = PlaybookSink(runtime.info["callback_url"], runtime.info["token"], runtime.data_path, "tests")
    fwd = forwarder(runtime, tmp_path, sink=sink, max_events=50)
    batch = events(120)
    batch[60] = orjson.dumps({"n": "bad", "note": "refuse-me"})
    await fwd.add(batch, origin="partition 0")
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert sorted(runtime.delivered()) == sorted(batch[:60] + batch[61:])
    assert [entry["event"].encode() for entry in set_aside(tmp_path)] == [batch[60]]
    assert not any((runtime.data_path / "tests_events").iterdir())  # every split's records file removed


@pytest.mark.parametrize("case, field", [
    ("wrong_key", "intake_key"), ("forbidden", "intake_key"), ("wrong_server", "intake_server"),
    ("redirect", "intake_server"), ("playbook_token", "intake_key"),
])
async def test_configuration_errors_stop_delivery_and_name_the_field(runtime, tmp_path, case, field):
    info = runtime.info
    sink = {
        "wrong_key": IntakeSink(info["intake_url"], "not-the-key", user_agent="tests"),
        "forbidden": IntakeSink(info["intake_url"], info["intake_key"], user_agent="tests"),
        "wrong_server": IntakeSink(info["intake_url"] + "/no/intake/here", info["intake_key"], user_agent="tests"),
        "redirect": IntakeSink(info["intake_url"], info["intake_key"], user_agent="tests"),
        "playbook_token": PlaybookSink(info["callback_url"], "not-the-token", runtime.data_path, "tests"),
    }[case]
    if case in ("forbidden", "redirect"):  # a redirected POST would come back as a GET that "succeeds"
        runtime.control(deny_status=403 if case == "forbidden" else 308)
    fatal, recorder = [], Recorder()
    fwd = forwarder(runtime, tmp_path, sink=sink, fatal=fatal)
    for unit in range(5):
        await fwd.add(events(100, start=unit * 100), ack=recorder.ack(unit))
    assert await eventually(lambda: fatal, 10)
    assert await fwd.drain(timeout=10) is False
    assert await fwd.add(events(3), ack=recorder.ack("after")) == 0  # nothing taken once it cannot be acknowledged
    assert await fwd.close(grace=1.0) is False
    [error] = fatal  # told once, whatever the number of senders and batches
    assert isinstance(error, ConfigurationError) and error.field == field
    assert f"`{field}`" in str(error) and "not-the" not in str(error)  # names the field, never the value
    assert recorder.acks == [] and runtime.delivered() == []


async def test_close_returns_by_its_deadline_while_the_runtime_hangs(runtime, tmp_path):
    runtime.control(hang_seconds=120)
    recorder = Recorder()
    fwd = forwarder(runtime, tmp_path, senders=2, max_events=10)
    await fwd.add(events(20), ack=recorder.ack("never"))
    assert await eventually(lambda: runtime.stats()["hung"] >= 2, 10)  # both senders are blocked in HTTP calls
    started = time.monotonic()
    assert await fwd.close(grace=1.0) is False
    assert time.monotonic() - started < 10  # a bound far under the hang, not a measure of speed
    assert recorder.acks == [] and runtime.delivered() == []
    assert fwd.transport.session.closed  # the stuck calls were cancelled and the connections closed
    assert await fwd.add(events(1)) == 0 and fwd.pending == 0
    assert await fwd.close() is False  # idempotent


async def test_a_stop_request_frees_a_producer_waiting_for_room(runtime, tmp_path):
    runtime.control(hang_seconds=120)
    fwd = forwarder(runtime, tmp_path, max_events=10, in_flight=0, senders=1)
    producer = asyncio.create_task(fwd.add(events(100)))
    assert await eventually(lambda: runtime.stats()["hung"] >= 1, 10)
    assert not producer.done()  # waiting for room behind the hung batch
    assert fwd.pending == 2  # bounded: the batch on the wire and the one waiting for the sender, no more
    stopper = threading.Thread(target=fwd.stopping, args=(1.0,))  # as from a signal handler or another thread
    stopper.start()
    stopper.join()
    await asyncio.wait_for(producer, 10)
    assert await fwd.close(grace=5.0) is False


class FailingSink(IntakeSink):
    """The intake sink, whose first preparations fail like a full disk (the playbook sink writes a file)."""

    def __init__(self, runtime, failures):
        super().__init__(runtime.info["intake_url"], runtime.info["intake_key"], user_agent="tests")
        self.failures = failures

    def prepare(self, events):
        if self.failures > 0:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        return super().prepare(events)


async def test_a_local_write_failing_is_retried_and_nothing_is_lost(runtime, tmp_path):
    logs = []
    recorder = Recorder(runtime)
    sink = FailingSink(runtime, failures=4)
    fwd = forwarder(runtime, tmp_path, logs=logs, sink=sink, max_events=50)
    for unit in range(6):
        await fwd.add(events(50, start=unit * 50), ack=recorder.ack(unit), origin=f"unit-{unit}")
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert sink.failures == 0
    assert sorted(runtime.delivered()) == sorted(events(300))
    assert [name for name, _ in recorder.acks] == list(range(6))
    for name, delivered in recorder.acks:
        assert delivered >= (name + 1) * 50
    said = [m for level, m in logs if level == "error" and "No space left" in m]
    assert len(said) == 1  # said once, however many attempts and senders
    assert any("Local writes work again" in m for _, m in logs)


async def test_refused_events_of_a_request_are_kept_in_one_write_and_one_line(runtime, tmp_path):
    logs = []
    runtime.control(refuse_markers=["refuse-me"])
    fwd = forwarder(runtime, tmp_path, logs=logs, max_events=64)
    batch = events(64)
    for index in (3, 20, 41):
        batch[index] = orjson.dumps({"n": f"bad-{index}", "note": "refuse-me"})
    await fwd.add(batch[:32], origin="blob-a")
    await fwd.add(batch[32:], origin="blob-b")
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert sorted(runtime.delivered()) == sorted(e for e in batch if b"refuse-me" not in e)
    assert len(set_aside(tmp_path)) == 3 and fwd.refused == 3
    [line] = [m for _, m in logs if "refused" in m]
    assert "refused 3 events (HTTP 400" in line and "blob-a, blob-b" in line


async def test_a_run_of_neighbouring_refused_events_is_set_aside_not_a_configuration_error(runtime, tmp_path):
    # An envelope of bad records: 16 in a row inside one large batch (the split costs about 14 + 2 x 16 refusals
    # in a row), and a whole small batch of bad records.
    runtime.control(refuse_markers=["refuse-me"])
    fatal, recorder = [], Recorder()
    fwd = forwarder(runtime, tmp_path, fatal=fatal, max_events=4096)
    batch = events(4096)
    for index in range(1000, 1016):
        batch[index] = orjson.dumps({"n": f"bad-{index}", "note": "refuse-me"})
    await fwd.add(batch, ack=recorder.ack("large"), origin="envelope-a")
    fwd.flush()
    await fwd.add([orjson.dumps({"n": f"bad-small-{i}", "note": "refuse-me"}) for i in range(5)],
            ack=recorder.ack("small"), origin="envelope-b")
    assert await fwd.drain(timeout=60)
    await fwd.close()
    assert fatal == []
    assert [name for name, _ in recorder.acks] == ["large", "small"]
    assert len(set_aside(tmp_path)) == fwd.refused == 21
    assert sorted(runtime.delivered()) == sorted(e for e in batch if b"refuse-me" not in e)


async def test_refused_events_without_a_set_aside_file_are_never_acknowledged_past(runtime, tmp_path):
    runtime.control(refuse_markers=["refuse-me"])
    fatal, recorder = [], Recorder(runtime)
    fwd = forwarder(runtime, tmp_path, fatal=fatal, store=None)
    await fwd.add(events(100), ack=recorder.ack("before"), origin="blob-1")
    assert await fwd.drain(timeout=30)
    batch = events(100, start=100)
    batch[50] = orjson.dumps({"n": "bad", "note": "refuse-me"})
    await fwd.add(batch, ack=recorder.ack("refused"), origin="blob-2")
    await fwd.add(events(100, start=200), ack=recorder.ack("after"), origin="blob-3")
    assert await eventually(lambda: fatal, 10)
    assert await fwd.close(grace=1.0) is False
    assert recorder.acks == [("before", 100)]  # neither the batch holding it nor any later one
    [error] = fatal
    assert isinstance(error, UnkeptRefusal) and "blob-2" in str(error) and "restart" in str(error)


async def test_refused_events_past_the_cap_are_still_kept_and_delivery_goes_on(runtime, tmp_path):
    """The cap of the refused events file is warned, never a stop: only the disk refusing a write holds delivery."""
    runtime.control(refuse_markers=["refuse-me"])
    fatal, logs, recorder = [], [], Recorder(runtime)
    log = lambda message, level: logs.append((level, message))  # noqa: E731
    store = SetAsideStore(tmp_path, refused_cap_bytes=1_000, log=log)
    fwd = forwarder(runtime, tmp_path, fatal=fatal, store=store, logs=logs, max_events=20)
    bad = [orjson.dumps({"n": f"bad-{n}", "note": "refuse-me", "pad": "p" * 200}) for n in range(8)]
    for unit, event in enumerate(bad):  # each about 300 bytes in the file: the cap is passed at the fourth
        await fwd.add(events(19, start=unit * 19) + [event], ack=recorder.ack(unit), origin=f"blob-{unit}")
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert fatal == [] and [name for name, _ in recorder.acks] == list(range(8))
    assert [entry["event"].encode() for entry in set_aside(tmp_path, "refused")] == bad
    cap_lines = [(level, m) for level, m in logs if "its cap" in m]
    assert [level for level, _ in cap_lines] == ["warning", "error"]  # at 80 %, then at the cap; once each
    assert "80 %" in cap_lines[0][1] and "still kept" in cap_lines[1][1] and str(tmp_path / REFUSED_FILE) in cap_lines[1][1]


class DiskFullStore(SetAsideStore):
    """A set-aside store on a disk that refuses its first writes (ENOSPC), then takes them."""

    def __init__(self, directory, failures):
        super().__init__(directory)
        self.failures = failures

    def keep(self, kept):
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        return super().keep(kept)


async def test_a_refused_event_the_disk_will_not_take_holds_acknowledgements_until_it_does(runtime, tmp_path):
    runtime.control(refuse_markers=["refuse-me"])
    fatal, logs, recorder = [], [], Recorder(runtime)
    store = DiskFullStore(tmp_path, failures=3)
    fwd = forwarder(runtime, tmp_path, fatal=fatal, store=store, logs=logs, max_events=50, senders=1)
    batch = events(50)
    batch[10] = orjson.dumps({"n": "bad", "note": "refuse-me"})
    await fwd.add(batch, ack=recorder.ack("refused"), origin="blob-1")
    await fwd.add(events(50, start=50), ack=recorder.ack("after"), origin="blob-2")
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert store.failures == 0 and fatal == []
    assert [name for name, _ in recorder.acks] == ["refused", "after"]
    assert [entry["event"].encode() for entry in set_aside(tmp_path, "refused")] == [batch[10]]
    assert len([m for level, m in logs if level == "error" and "No space left" in m]) == 1


async def test_a_runtime_refusing_everything_is_a_configuration_error(runtime, tmp_path):
    runtime.control(refuse_markers=['"n"'], refuse_status=422)  # every event: a proxy refusing every request
    fatal, recorder = [], Recorder()
    fwd = forwarder(runtime, tmp_path, fatal=fatal)
    await fwd.add(events(1000), ack=recorder.ack("never"), origin="blob-1")
    assert await eventually(lambda: fatal, 30)
    assert await fwd.close(grace=1.0) is False
    [error] = fatal
    assert isinstance(error, ConfigurationError) and error.field == "intake_server" and "422" in str(error)
    # Not one request per event (splitting 1,000 events down to each alone: about 2,000); a second sender may have
    # had one more on the wire.
    assert runtime.stats()["refused"] <= REFUSES_EVERYTHING_REQUESTS + 1
    assert recorder.acks == [] and set_aside(tmp_path) == [] and fwd.refused == 0


async def test_a_runtime_refusing_every_one_event_request_is_a_configuration_error(runtime, tmp_path):
    # Requests of one event each: nothing to split, every refusal counts.
    runtime.control(refuse_markers=['"n"'], refuse_status=422)
    fatal, recorder = [], Recorder()
    fwd = forwarder(runtime, tmp_path, fatal=fatal, max_events=1)
    await fwd.add(events(300), ack=recorder.ack("never"), origin="blob-1")
    assert await eventually(lambda: fatal, 30)
    assert await fwd.close(grace=1.0) is False
    [error] = fatal
    assert isinstance(error, ConfigurationError) and error.field == "intake_server" and "422" in str(error)
    assert f"{REFUSES_EVERYTHING_REQUESTS} requests in a row refused" in str(error)
    # The 100th refusal stops it (a second sender may have had one more on the wire): not 300 events set aside.
    assert REFUSES_EVERYTHING_REQUESTS <= runtime.stats()["refused"] <= REFUSES_EVERYTHING_REQUESTS + 1
    assert len(set_aside(tmp_path)) == fwd.refused < REFUSES_EVERYTHING_REQUESTS and recorder.acks == []
    assert runtime.delivered() == []


async def test_a_stop_cuts_a_backoff_sleep_short(runtime, tmp_path):
    runtime.control(down_for=60, down_status=503)
    recorder = Recorder(runtime)
    fwd = forwarder(runtime, tmp_path, backoff=(60.0, 60.0), senders=1)  # a sleep of 30 s or more once failed
    await fwd.add(events(10), ack=recorder.ack("all"))
    # The sender took the failure in and sleeps (a stop before its sleep began would leave no time for it).
    assert await eventually(lambda: fwd.outage_seconds is not None, 10)
    runtime.control(down_for=0)
    fwd.stopping(grace=5.0)  # as from the signal handler: no lock, no Event
    assert await fwd.close(grace=5.0) is True  # the sender woke and tried once more within the grace
    assert recorder.acks == [("all", 10)]


async def test_no_acknowledgement_runs_after_close_returned(runtime, tmp_path):
    runtime.control(hang_seconds=2)
    recorder = Recorder()
    fwd = forwarder(runtime, tmp_path, senders=1)
    await fwd.add(events(10), ack=recorder.ack("late"))
    assert await eventually(lambda: runtime.stats()["hung"] >= 1, 10)
    assert await fwd.close(grace=0.5) is False
    # The sender was cancelled in its HTTP call: past the runtime's hang (whether it kept the request or not),
    # no acknowledgement runs (the trigger may have closed its state by then).
    assert not await eventually(lambda: recorder.acks, 3.0)
    assert recorder.acks == [] and len(runtime.delivered()) in (0, 10)


def test_the_refused_file_counts_its_bytes_and_starts_again_when_moved_away(tmp_path):
    logs = []
    refused = RefusedFile(tmp_path / "kept.jsonl", cap_bytes=20_000, log=lambda m, level: logs.append((level, m)))
    control = "\x01" * 2_000  # escaped as \u0001: six bytes each in the file
    refused.keep([Kept(orjson.dumps({"c": control}), "blob-1", "refused")])
    assert refused.written == (tmp_path / "kept.jsonl").stat().st_size > 12_000
    assert [level for level, _ in logs] == []
    refused.keep([Kept(orjson.dumps({"c": control}), "blob-2", "refused")])  # past the cap: kept, said
    assert refused.written == (tmp_path / "kept.jsonl").stat().st_size > 24_000
    assert [level for level, _ in logs] == ["error"]
    assert RefusedFile(tmp_path / "kept.jsonl").written == refused.written
    (tmp_path / "kept.jsonl").rename(tmp_path / "looked-at.jsonl")  # a person moved it away
    refused.keep([Kept(b'{"n":3}', "blob-3", "refused")])
    assert [orjson.loads(line)["origin"] for line in (tmp_path / "kept.jsonl").read_bytes().splitlines()] == ["blob-3"]
    assert len((tmp_path / "looked-at.jsonl").read_bytes().splitlines()) == 2
    assert refused.written == (tmp_path / "kept.jsonl").stat().st_size


def test_originals_rotate_and_expire_by_age_and_by_size(tmp_path):
    now = [time.time()]  # segments age by their files' modification times
    logs = []
    archive = OriginalsArchive(tmp_path, cap_bytes=40_000, max_age_seconds=3600, clock=lambda: now[0],
                               log=lambda m, level: logs.append((level, m)))
    original = lambda n: Kept(orjson.dumps({"n": n, "pad": "o" * 3_000}), f"blob-{n}", "oversize", sent=True)  # noqa: E731
    for n in range(3):  # a segment holds a quarter of the cap: three per segment
        archive.keep([original(n)])
        now[0] += 1
    assert len(archive.segments()) == 1
    archive.keep([original(3)])
    assert len(archive.segments()) == 2
    first = archive.segments()[0]
    os.utime(first, (now[0] - 7200, now[0] - 7200))  # its last write two hours ago
    now[0] += EXPIRY_CHECK_SECONDS  # the next look for age
    archive.expire()
    assert first not in archive.segments() and len(archive.segments()) == 1
    for n in range(4, 40):  # far more than the cap, within the age limit
        archive.keep([original(n)])
        now[0] += 1
    total = sum(path.stat().st_size for path in archive.segments())
    assert total <= 40_000 and len(archive.segments()) >= 3
    kept = [orjson.loads(line)["origin"] for path in archive.segments() for line in path.read_bytes().splitlines()]
    assert kept[-1] == "blob-39" and kept == sorted(kept, key=lambda origin: int(origin.split("-")[1]))
    assert any(level == "warning" and "80 %" in m for level, m in logs)
    assert len([m for level, m in logs if level == "warning"]) == 1  # at its cap is the steady state: said once
    assert any(level == "info" and "oldest segments" in m for level, m in logs)


def test_records_files_are_private_whatever_the_umask(runtime, tmp_path):
    previous = os.umask(0o022)
    try:
        sink = PlaybookSink(runtime.info["callback_url"], runtime.info["token"], tmp_path, "tests")
        [request] = sink.prepare(events(3))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "tests_events").stat().st_mode) == 0o700
    assert stat.S_IMODE(request.cleanup.stat().st_mode) == 0o700
    assert stat.S_IMODE((request.cleanup / "event.json").stat().st_mode) == 0o600
    assert orjson.loads((request.cleanup / "event.json").read_bytes()) == [orjson.loads(e) for e in events(3)]


def test_the_instance_lock_is_private_whatever_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        lock = InstanceLock(tmp_path / "state" / "instance.lock", "field", "stop the other one")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / "instance.lock").stat().st_mode) == 0o600
    assert (tmp_path / "state" / "instance.lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(ConfigurationError, match="another instance"):
        InstanceLock(tmp_path / "state" / "instance.lock", "field", "stop the other one")
    lock.release()
    InstanceLock(tmp_path / "state" / "instance.lock", "field", "stop the other one").release()


class FailingRun(CollectorTrigger):
    """A trigger whose run hands a batch over and fails while the runtime holds it."""

    stop_grace_seconds = 0.5
    acks: list = []

    def collect(self) -> None:
        self.run_async(self._collect)

    async def _collect(self, stopping) -> None:
        runs = len(type(self).runs)
        type(self).runs.append(self.forwarder)
        await self.forwarder.add(events(10, start=runs * 10), ack=lambda: type(self).acks.append(runs))
        if runs == 0:
            raise RuntimeError("the source failed")
        assert await self.forwarder.drain(timeout=30)


def test_a_failed_run_leaves_no_acknowledgement_behind(runtime, tmp_path, monkeypatch):
    for key, value in runtime.env({}).items():
        monkeypatch.setenv(key, value)
    runtime.control(down_for=60, down_status=503)
    FailingRun.acks, FailingRun.runs = [], []
    module = Module()
    module.register(FailingRun, "failing_run")
    trigger = FailingRun(module)
    trigger._failures = Backoff(base=0.01, cap=0.01)
    try:
        trigger.run()  # fails; its forwarder is closed after its grace and dropped, its batch unconfirmed
        assert "forwarder" not in trigger.__dict__
        runtime.control(down_for=0)
        trigger.run()  # the next run: a new forwarder, whose acknowledgements alone run
        assert FailingRun.runs[0] is not FailingRun.runs[1]
        assert "forwarder" not in trigger.__dict__  # dropped at the end of every run
        assert not wait_until(lambda: 0 in FailingRun.acks, 1.0) and FailingRun.acks == [1]
        assert sorted(runtime.delivered()) == sorted(events(10, start=10))  # the failed run's batch: read again
    finally:
        trigger.stop()
        CollectorTrigger.fatal_error = None


async def tls_front(tmp_path, port):
    """A TLS front on loopback for the runtime stub, its certificate from a private CA (a TLS-inspecting proxy, a
    private intake): its URL, the CA file and the server."""
    context, ca_file = private_ca(tmp_path)

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def relay(reader, writer):
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)

    server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    return f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", ca_file, server


async def test_delivery_trusts_the_authorities_requests_trusted(runtime, tmp_path, monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    front, ca_file, server = await tls_front(tmp_path, runtime.info["port"])
    try:
        url = front + urlsplit(runtime.info["intake_url"]).path
        sink = IntakeSink(url, runtime.info["intake_key"], user_agent="tests")
        logs = []
        untrusted = forwarder(runtime, tmp_path, sink=sink, logs=logs)
        await untrusted.add(events(5))
        assert await eventually(lambda: untrusted.outage_seconds is not None, 10)  # verification stays on
        assert await untrusted.close(grace=0.5) is False
        assert runtime.delivered() == [] and any("Certificate" in message for _, message in logs)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))  # as requests honoured it
        fwd = forwarder(runtime, tmp_path, sink=sink)
        await fwd.add(events(5))
        assert await fwd.drain(timeout=30)
        await fwd.close()
        assert sorted(runtime.delivered()) == sorted(events(5))
    finally:
        server.close()
        await server.wait_closed()


async def test_close_delivers_what_a_producer_released_by_the_stop_adds(runtime, tmp_path):
    # A producer waiting for room is released by close's stop and adds the rest of its events, with its ack, after
    # the first cut: close sends them too before it says everything was confirmed.
    runtime.control(hang_seconds=1.0)  # each request: the producer is released while the first is on the wire
    recorder = Recorder(runtime)
    fwd = forwarder(runtime, tmp_path, max_events=30, in_flight=1, senders=1, max_age=60)
    producer = asyncio.create_task(fwd.add(events(95), ack=recorder.ack("all")))
    assert await eventually(lambda: runtime.stats()["hung"] >= 1, 10)
    assert not producer.done()  # waiting for room
    assert await fwd.close(grace=15.0) is True
    assert await producer == 95
    assert sorted(runtime.delivered()) == sorted(events(95))
    assert recorder.acks == [("all", 95)]


async def test_backpressure_bounds_the_batches_whatever_the_number_of_producers(runtime, tmp_path):
    # One producer per partition: 16 of them must not queue 16 batches when two may wait.
    runtime.control(hang_seconds=120)
    fwd = forwarder(runtime, tmp_path, max_events=10, in_flight=2, senders=1, max_age=60)
    producers = [asyncio.create_task(fwd.add(events(30, start=n * 30), origin=f"partition {n}")) for n in range(16)]
    assert await eventually(lambda: runtime.stats()["hung"] >= 1, 10)
    assert not await eventually(lambda: fwd.pending > 3, 2.0)  # the batch on the wire and two waiting, no more
    # Three batches of 10 cut: one producer may have cut all three of its own, the others all wait
    assert fwd.pending == 3 and sum(producer.done() for producer in producers) <= 1
    assert await fwd.close(grace=1.0) is False
    await asyncio.wait_for(asyncio.gather(*producers), 10)  # released by the stop


async def test_nothing_is_queued_once_closed(runtime, tmp_path):
    # A producer released by the stop adds after close's last cut: what it left is dropped with the rest, and a
    # flush after close queues nothing no sender would take.
    runtime.control(hang_seconds=120)
    recorder = Recorder()
    fwd = forwarder(runtime, tmp_path, max_events=10, in_flight=0, senders=1, max_age=60)
    producer = asyncio.create_task(fwd.add(events(25), ack=recorder.ack("never")))
    assert await eventually(lambda: runtime.stats()["hung"] >= 1, 10)
    assert await fwd.close(grace=1.0) is False
    await asyncio.wait_for(producer, 10)
    fwd.flush()
    assert fwd.pending == 0 and recorder.acks == []


class GatedStore(SetAsideStore):
    """A set-aside file whose writes wait for a gate (an fsync that takes long), counting writers at once."""

    def __init__(self, path):
        super().__init__(path)
        self.gate = threading.Event()
        self.writing = self.most = 0
        self.count = threading.Lock()

    def keep(self, kept):
        with self.count:
            self.writing += 1
            self.most = max(self.most, self.writing)
        try:
            self.gate.wait(30)
            return super().keep(kept)
        finally:
            with self.count:
                self.writing -= 1


async def test_a_cancelled_producer_holds_the_set_aside_file_until_its_write_returns(runtime, tmp_path):
    store = GatedStore(tmp_path)
    fwd = forwarder(runtime, tmp_path, store=store)
    big = orjson.dumps({"n": "big", "pad": "y" * 300_000})
    try:
        first = asyncio.create_task(fwd.add([big], origin="first"))
        assert await eventually(lambda: store.writing == 1, 10)
        first.cancel()  # its thread goes on writing
        second = asyncio.create_task(fwd.add([big], origin="second"))
        assert not await eventually(lambda: store.writing > 1, 1.0)  # the second waits for the first thread
        assert not first.done()  # the cancelled caller waits for its thread
    finally:
        store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 10) == 1
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert store.most == 1
    assert [entry["origin"] for entry in set_aside(tmp_path)] == ["first", "second"]


class BuggySink(IntakeSink):
    """An intake sink with a bug where it names the configuration error: the sender meeting it ends."""

    def configuration_error(self, refusal):
        raise KeyError("a bug")


async def test_a_sender_ending_on_a_bug_stops_delivery_and_tells_the_trigger(runtime, tmp_path):
    fatal, logs, recorder = [], [], Recorder()
    sink = BuggySink(runtime.info["intake_url"], "not-the-key", user_agent="tests")  # 401: the bug's path
    fwd = forwarder(runtime, tmp_path, sink=sink, fatal=fatal, logs=logs, max_events=10, in_flight=1)
    producer = asyncio.create_task(fwd.add(events(100), ack=recorder.ack("never")))
    assert await eventually(lambda: fatal, 10)  # told, not a silent stall
    [error] = fatal
    assert isinstance(error, DeliveryBroken) and "KeyError" in str(error) and error.field == "delivery"
    assert await asyncio.wait_for(producer, 10) < 100  # released: it took no more once delivery was broken
    assert await fwd.add(events(1)) == 0
    assert await fwd.close(grace=1.0) is False
    assert recorder.acks == [] and runtime.delivered() == []


class StuckWrite(CollectorTrigger):
    """A trigger whose run ends with a file write stuck in its thread (a disk not answering an fsync)."""

    io_shutdown_seconds = 0.5
    gate = threading.Event()
    writers: list = []

    def collect(self) -> None:
        self.run_async(self._collect)

    async def _collect(self, stopping) -> None:
        asyncio.get_running_loop().run_in_executor(None, self.fsync)
        assert await eventually(lambda: type(self).writers, 10)

    def fsync(self) -> None:
        type(self).writers.append(threading.current_thread())
        type(self).gate.wait(60)


def test_the_end_of_a_run_does_not_wait_for_a_stuck_write(runtime, monkeypatch):
    for key, value in runtime.env({}).items():
        monkeypatch.setenv(key, value)
    module = Module()
    module.register(StuckWrite, "stuck_write")
    trigger = StuckWrite(module)
    logs = []
    monkeypatch.setattr(trigger, "log", lambda message, level="info", *args, **kwargs: logs.append((level, message)))
    run = threading.Thread(target=trigger.collect)
    try:
        run.start()
        assert wait_until(lambda: not run.is_alive(), 15)  # its 0.5 s, not the write's end
        [writer] = StuckWrite.writers
        assert writer.is_alive() and writer.daemon  # left running: the process can end without it
        assert any(level == "error" and "StuckWrite.fsync" in message for level, message in logs)
    finally:
        StuckWrite.gate.set()
        run.join(30)
        trigger.stop()
