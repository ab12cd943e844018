"""The processing task: records forwarded once, blobs committed only after the runtime confirmed them."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from emulators import fixtures
from emulators.process import eventually
from office365.fetcher import Fetched
from office365.listing import ContentRef
from office365.processor import Processor
from office365.state import CollectorState

NOW = datetime.now(UTC)


class FakeForwarder:
    """Keeps what was added; ``confirm()`` plays the runtime confirming everything so far."""

    def __init__(self):
        self.events: list[bytes] = []
        self.acks: list = []

    async def add(self, events, ack=None, origin=""):
        self.events.extend(events)
        if ack is not None:
            self.acks.append(ack)
        return len(events)

    def flush(self):
        """The processor sends what is buffered when it has nothing more: here everything is kept anyway."""

    def confirm(self):
        acks, self.acks = self.acks, []
        for ack in acks:
            ack()


def ref(content_id: str, content_type: str = "Audit.Exchange") -> ContentRef:
    created = NOW - timedelta(hours=1)
    return ContentRef(
        content_type, content_id, "https://x", created.timestamp(), (created + timedelta(days=7)).timestamp()
    )


def body(*records: dict) -> bytes:
    return orjson.dumps(list(records))


async def run(tmp_path, items: list[Fetched]):
    state = CollectorState(tmp_path, ["Audit.Exchange"], initial_lookback=timedelta(hours=2), filter_capacity=100)
    for item in items:
        state.track(item.ref)
    forwarder, logs, done = FakeForwarder(), [], []
    processor = Processor(
        forwarder, state, lambda message, level: logs.append((level, message)), lambda item: done.append(1)
    )
    processing = asyncio.create_task(processor.run())
    for item in items:
        processor.put(item)
    assert await eventually(lambda: len(done) == len(items) and forwarder.acks, 5, interval=0.01)
    processor.stop()
    await asyncio.wait_for(processing, 5)
    return state, forwarder, logs


async def test_records_repeated_in_a_later_blob_are_forwarded_once_distinct_records_sharing_an_id_are_not(tmp_path):
    match = {"Id": "d5a0e7d9", "Operation": "DlpRuleMatch"}
    undo = {"Id": "d5a0e7d9", "Operation": "DlpRuleUndo"}  # same Id, different record
    other = {"Id": "1", "Operation": "Send"}
    items = [Fetched(ref("c$1"), body=body(match, other)), Fetched(ref("c$2"), body=body(other, undo, match))]
    state, forwarder, _ = await run(tmp_path, items)
    assert [orjson.loads(event) for event in forwarder.events] == [match, other, undo]


async def test_a_record_published_again_spelt_otherwise_is_forwarded_once(tmp_path):
    match = {"Id": "d5a0e7d9", "Operation": "DlpRuleMatch", "Parameters": [{"Name": "a", "Value": "b"}]}
    respelt = b'{ "Parameters": [ {"Value": "b", "Name": "a"} ],\n  "Operation": "DlpRuleMatch", "Id": "d5a0e7d9" }'
    changed = {**match, "Parameters": [{"Name": "a", "Value": "c"}]}  # the same Id, other content
    items = [Fetched(ref("c$1"), body=body(match)), Fetched(ref("c$2"), body=b"[" + respelt + b"," + body(changed)[1:])]
    _, forwarder, _ = await run(tmp_path, items)
    assert [orjson.loads(event) for event in forwarder.events] == [match, changed]


async def test_each_blob_is_acknowledged_with_its_own_records(tmp_path):
    """A confirmation commits the blobs it covers, not a group waiting for later ones: a crash then sends again
    only what was unconfirmed (and the write in flight)."""
    items = [Fetched(ref(f"c${index}"), body=body({"Id": str(index)})) for index in range(3)]
    state, forwarder, _ = await run(tmp_path, items)
    assert len(forwarder.acks) == 3
    forwarder.acks.pop(0)()  # the runtime confirmed the first blob's record only
    assert state.is_known("Audit.Exchange", "c$0") and state.pending("Audit.Exchange")[0] == 2


async def test_blobs_are_committed_only_once_the_runtime_confirmed_them(tmp_path):
    items = [Fetched(ref("c$1"), body=body({"Id": "1"})), Fetched(ref("c$2"), skipped="expired")]
    state, forwarder, logs = await run(tmp_path, items)
    assert state.pending("Audit.Exchange")[0] == 2  # handed over, not confirmed: nothing moves
    assert state.ledger_size == 0
    forwarder.confirm()
    assert state.pending("Audit.Exchange") == (0, None)
    assert state.is_known("Audit.Exchange", "c$1") and state.is_known("Audit.Exchange", "c$2")
    assert any("expired (AF20051)" in message and "c$2" in message for _, message in logs)


async def test_bad_content_is_logged_once_with_the_content_id_and_the_rest_goes_on(tmp_path):
    items = [
        Fetched(ref("c$bad"), body=b'[{"Id": "1"}, 42, {"Id": "2"}]'),
        Fetched(ref("c$broken"), body=b'[{"Id": "3"'),
        Fetched(ref("c$fine"), body=body({"Id": "4"})),
    ]
    state, forwarder, logs = await run(tmp_path, items)
    assert [orjson.loads(event)["Id"] for event in forwarder.events] == ["1", "2", "4"]
    warnings = [message for level, message in logs if level == "warning"]
    assert sum("c$bad" in message for message in warnings) == 1
    assert sum("c$broken" in message for message in warnings) == 1
    forwarder.confirm()
    assert state.pending("Audit.Exchange") == (0, None)  # bad blobs are done too: never fetched again


async def test_a_failing_blob_is_left_pending_and_the_others_go_on(tmp_path, monkeypatch):
    import office365.processor as module

    real = module.parse_blob

    def parse(data: bytes, exact: bool = True):
        if data == b"boom":
            raise RuntimeError("unexpected")
        return real(data, exact)

    monkeypatch.setattr(module, "parse_blob", parse)
    items = [Fetched(ref("c$1"), body=b"boom"), Fetched(ref("c$2"), body=body({"Id": "2"}))]
    state, forwarder, logs = await run(tmp_path, items)
    forwarder.confirm()
    assert state.pending("Audit.Exchange")[0] == 1  # c$1 waits for the next start
    assert state.ledger_size == 1  # c$2 delivered
    assert any(level == "error" and "c$1" in message for level, message in logs)


class LoopSteps:
    """The most CPU the loop's thread spent between two turns of the event loop (a callback rescheduled at each
    turn). The loop thread's CPU time, not wall time: a busy machine does not add to it, nor does a parsing thread
    working beside the loop (the process's CPU time counted both cores' work)."""

    def __init__(self):
        self.longest = 0.0
        self._last = time.thread_time()
        self._running = True
        asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        now = time.thread_time()
        self.longest = max(self.longest, now - self._last)
        self._last = now
        if self._running:
            asyncio.get_running_loop().call_soon(self._turn)

    def stop(self) -> None:
        self._running = False


def big_blob(size: int) -> tuple[bytes, int]:
    """A body of distinct records (fixture records, each its own Id) about ``size`` bytes long, with one byte that
    is not UTF-8 in a string."""
    lines = [orjson.dumps(orjson.loads(line)) for line in fixtures.o365_records()["Audit.Exchange"]]
    count = size // (sum(map(len, lines)) // len(lines))
    records = (lines[index % len(lines)].replace(b'"Id":"', b'"Id":"%d-' % index, 1) for index in range(count))
    body = b"[" + b",".join(records) + b"]"
    at = body.index(b'"Operation":"') + len(b'"Operation":"')
    return body[:at] + b"\xff" + body[at:], count


async def test_a_25_mb_blob_with_a_byte_that_is_not_utf8_never_holds_the_loop_100_ms(runtime, tmp_path):
    """Once all the exact path's work on the loop (0.74 s of CPU at once). Its records are all delivered."""
    from connectors.delivery import Forwarder
    from connectors.sinks import IntakeSink

    payload, count = big_blob(25_000_000)
    state = CollectorState(tmp_path / "state", ["Audit.Exchange"], initial_lookback=timedelta(hours=2),
                           filter_capacity=200_000)
    item = Fetched(ref("c$big"), body=payload)
    state.track(item.ref)
    forwarder = Forwarder(IntakeSink(runtime.info["intake_url"], runtime.info["intake_key"], user_agent="tests"),
                          trigger="tests", idle_flush=0.05)
    processor = Processor(forwarder, state, lambda message, level: None, lambda item: None)
    processing = asyncio.create_task(processor.run())
    steps = LoopSteps()
    try:
        processor.put(item)
        assert await eventually(lambda: state.is_known("Audit.Exchange", "c$big") and not state.pending(
            "Audit.Exchange")[0], 120, 0.05)
    finally:
        steps.stop()
        processor.stop()
        await asyncio.wait_for(processing, 30)
        await forwarder.close()
        state.close()
    assert runtime.counter()() == count  # delivered, the repaired record too
    assert steps.longest < 0.1, f"a loop step took {steps.longest:.3f} s of CPU"


# -- warnings of the pipeline: content already past the retention ----------------------------------------------


def pipeline(tmp_path, logs: list, lookback: timedelta = timedelta(hours=1), **overrides):
    from office365.config import Office365Configuration
    from office365.pipeline import Pipeline

    config = Office365Configuration(
        tenant_id="4f6e2a1c-8d3b-4e5f-9a7c-2b1d0e3f4a5b", client_id="9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", **overrides
    )
    state = CollectorState(tmp_path, config.content_types, initial_lookback=lookback, filter_capacity=10)
    return Pipeline(config, None, None, state, None, lambda message, level: logs.append((level, message))).lister


def test_content_past_the_retention_is_reported_after_a_long_stop_not_at_first_start(tmp_path):
    logs: list = []
    first = pipeline(tmp_path, logs)
    earliest = NOW - timedelta(days=7)
    first._report_gap("Audit.Exchange", earliest - timedelta(days=1), earliest)  # no checkpoint: a first start
    assert logs == []
    first.state.listed("Audit.Exchange", earliest - timedelta(days=2))
    first.state.close()
    again = pipeline(tmp_path, logs)
    again._report_gap("Audit.Exchange", earliest - timedelta(days=2), earliest)
    again._report_gap("Audit.Exchange", earliest - timedelta(days=2), earliest)
    assert len(logs) == 1 and logs[0][0] == "error" and "was not collected" in logs[0][1]


async def test_a_blob_failing_every_time_is_fetched_again_a_few_times_then_skipped_by_name(tmp_path, monkeypatch):
    """Left pending, it would pin the resume point for the rest of the run: after its retries it is skipped,
    committed like an expired blob, with one error naming it."""
    import office365.processor as module

    def unreadable(data: bytes, exact: bool = True):
        raise RuntimeError("unreadable")

    monkeypatch.setattr(module, "parse_blob", unreadable)
    state = CollectorState(tmp_path, ["Audit.Exchange"], initial_lookback=timedelta(hours=2), filter_capacity=100)
    item = Fetched(ref("c$bad"), body=b"[]")
    state.track(item.ref)
    forwarder, logs, delays = FakeForwarder(), [], []
    processor = Processor(
        forwarder, state, lambda message, level: logs.append((level, message)), lambda item: None,
        lambda again, delay: (delays.append(delay), processor.put(Fetched(again, body=b"[]"))),
    )
    processing = asyncio.create_task(processor.run())
    processor.put(item)
    assert await eventually(lambda: forwarder.acks, 5, interval=0.01)
    processor.stop()
    await asyncio.wait_for(processing, 5)
    assert len(delays) == module.BLOB_ATTEMPTS - 1 and delays == sorted(delays)  # growing steps
    forwarder.confirm()
    assert state.pending("Audit.Exchange") == (0, None)
    skipped = [message for level, message in logs if level == "error" and "skipped" in message]
    assert len(skipped) == 1 and "c$bad" in skipped[0] and "Audit.Exchange" in skipped[0]


class WindowGate:
    """Holds each fake window's first call until the test releases it: the order is set by the test, not by timers.
    ``release`` waits until every window's first call started (they run side by side), then lets them through one
    by one in the given order, each once the previous one went past its first call."""

    def __init__(self, count: int):
        self.count = count
        self.started: list[int] = []
        self._all_started = asyncio.Event()
        self._go = [asyncio.Event() for _ in range(count)]
        self._through = [asyncio.Event() for _ in range(count)]

    async def first_call(self, index: int) -> None:
        self.started.append(index)
        if len(self.started) == self.count:
            self._all_started.set()
        await self._go[index].wait()

    def went_through(self, index: int) -> None:
        self._through[index].set()

    async def release(self, order) -> None:
        await asyncio.wait_for(self._all_started.wait(), 10)  # never reached when windows are listed in series
        for index in order:
            self._go[index].set()
            await asyncio.wait_for(self._through[index].wait(), 10)


async def test_windows_listed_at_once_count_as_listed_only_with_every_older_window(tmp_path, monkeypatch):
    """Seven days of windows go out together; the newest answer first, the oldest but one fails: the resume point
    moves over the oldest window only, and the failure is the caller's to retry."""
    from office365.client import TransientError

    logs: list = []
    line = pipeline(tmp_path, logs, lookback=timedelta(days=7))
    start = (NOW - timedelta(days=6, hours=23)).replace(microsecond=0)
    finished: list[int] = []
    gate = WindowGate(7)

    async def list_window(content_type, client, queue, window_start, window_end, turn=None):
        index = round((window_start - start) / timedelta(hours=23, minutes=59))
        await gate.first_call(index)
        try:
            if index == 1:
                raise TransientError(503, "", "unavailable")
            finished.append(index)
        finally:
            gate.went_through(index)

    monkeypatch.setattr(line, "_list_window", list_window)
    releasing = asyncio.create_task(gate.release(reversed(range(7))))  # newest first
    with pytest.raises(TransientError):
        await asyncio.wait_for(line._list_range("Audit.Exchange", None, None, start, NOW, advance=True), 30)
    await releasing  # every window had started before any answered: listed side by side
    assert finished == [6, 5, 4, 3, 2, 0]
    assert line.state.listed_until("Audit.Exchange") == start + timedelta(hours=23, minutes=59)


async def test_a_backlog_is_listed_oldest_first_past_the_first_page_of_each_window(tmp_path, monkeypatch):
    """Content near its expiry comes first: every window's first page is asked for at once, but a window's next
    pages only once every older window was listed whole."""
    import office365.lister as module

    logs: list = []
    line = pipeline(tmp_path, logs, lookback=timedelta(days=7))
    start = (NOW - timedelta(days=6, hours=23)).replace(microsecond=0)
    pages: list[tuple[int, int]] = []
    gate = WindowGate(7)

    async def list_pages(client, get, content_type, window_start, window_end, known):
        index = round((window_start - start) / timedelta(hours=23, minutes=59))
        await gate.first_call(index)
        for page in range(3):
            pages.append((index, page))
            if page == 0:
                gate.went_through(index)
            yield [], 0

    monkeypatch.setattr(module, "list_pages", list_pages)
    releasing = asyncio.create_task(gate.release(reversed(range(7))))  # newer windows answer sooner
    await asyncio.wait_for(line._list_range("Audit.Exchange", None, None, start, NOW, advance=True), 30)
    await releasing  # every first page was asked for before any came back: all out together
    assert sorted({index for index, _ in pages}) == list(range(7)) and pages[0] == (6, 0)
    for index, page in pages:
        if page > 0:  # after every page of every older window
            older = [position for position, (other, _) in enumerate(pages) if other < index]
            assert pages.index((index, page)) > max(older, default=-1), pages
    assert line.state.listed_until("Audit.Exchange") == NOW.replace(microsecond=0)


async def test_a_body_is_let_go_once_cut_into_records_not_once_the_delivery_took_them(tmp_path):
    """The fetch room counts bodies not yet cut: a delivery without room holds the records, never the body too."""

    class FullForwarder(FakeForwarder):
        def __init__(self):
            super().__init__()
            self.room = asyncio.Event()

        async def add(self, events, ack=None, origin=""):
            await self.room.wait()
            return await super().add(events, ack, origin)

    state = CollectorState(tmp_path, ["Audit.Exchange"], initial_lookback=timedelta(hours=2), filter_capacity=100)
    items = [Fetched(ref(f"c${index}"), body=body({"Id": str(index)})) for index in range(2)]
    for item in items:
        state.track(item.ref)
    forwarder, let_go = FullForwarder(), []
    processor = Processor(forwarder, state, lambda message, level: None,
                          lambda item: let_go.append((item.ref.content_id, item.body is not None)))
    processing = asyncio.create_task(processor.run())
    for item in items:
        processor.put(item)
    assert await eventually(lambda: let_go, 5, interval=0.01)
    await asyncio.sleep(0.05)
    assert let_go == [("c$0", True)]  # released with its body, while its records wait for the delivery
    assert items[0].body is None and items[1].body is not None  # the second waits in the queue, uncut
    forwarder.room.set()
    assert await eventually(lambda: len(let_go) == 2 and len(forwarder.acks) == 2, 5, interval=0.01)
    assert [orjson.loads(event)["Id"] for event in forwarder.events] == ["0", "1"]
    processor.stop()
    await asyncio.wait_for(processing, 5)


async def test_a_body_only_the_exact_path_reads_is_cut_in_a_thread_a_clean_one_on_the_loop(tmp_path, monkeypatch):
    """The fast path is short on the loop; the exact path's work goes to a thread past a small size."""
    import threading

    import office365.processor as module

    monkeypatch.setattr(module, "EXACT_ON_LOOP_BYTES", 10)
    real, threads = module.parse_blob, []

    def parse(data: bytes, exact: bool = True):
        parsed = real(data, exact)
        threads.append((threading.current_thread() is threading.main_thread(), exact, parsed is not None))
        return parsed

    monkeypatch.setattr(module, "parse_blob", parse)
    items = [Fetched(ref("c$1"), body=body({"Id": "1"})), Fetched(ref("c$2"), body=b'[{"Id": "2", "a": "\\ud800"}]')]
    _, forwarder, _ = await run(tmp_path, items)
    assert threads == [(True, False, True), (True, False, False), (False, True, True)]
    assert forwarder.events == [b'{"Id":"1"}', b'{"Id": "2", "a": "\\ud800"}']


class FailingForwarder(FakeForwarder):
    """Refuses its first ``failures`` hand-overs, as a forwarder in trouble does."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures

    async def add(self, events, ack=None, origin=""):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("forwarder in trouble")
        return await super().add(events, ack, origin)


async def test_a_skipped_blobs_acknowledgement_is_handed_over_again_until_the_forwarder_takes_it(tmp_path,
                                                                                              monkeypatch):
    import office365.processor as module

    monkeypatch.setattr(module, "TROUBLE_PAUSE", 0.01)
    state = CollectorState(tmp_path, ["Audit.Exchange"], initial_lookback=timedelta(hours=2), filter_capacity=100)
    skipped = Fetched(ref("c$gone"), skipped="expired")
    state.track(skipped.ref)
    forwarder, logs = FailingForwarder(2), []
    processor = Processor(forwarder, state, lambda message, level: logs.append((level, message)), lambda item: None)
    processing = asyncio.create_task(processor.run())
    processor.put(skipped)
    assert await eventually(lambda: forwarder.acks, 5, interval=0.01)
    assert forwarder.failures == 0 and any("trying again" in message for _, message in logs)
    assert state.pending("Audit.Exchange")[0] == 1
    forwarder.confirm()
    assert state.pending("Audit.Exchange") == (0, None)
    processor.stop()
    await asyncio.wait_for(processing, 5)


async def test_a_stop_ends_the_hand_over_of_an_acknowledgement_without_it(tmp_path):
    state = CollectorState(tmp_path, ["Audit.Exchange"], initial_lookback=timedelta(hours=2), filter_capacity=100)
    skipped = Fetched(ref("c$gone"), skipped="expired")
    state.track(skipped.ref)
    forwarder = FailingForwarder(10**6)
    processor = Processor(forwarder, state, lambda message, level: None, lambda item: None)
    processing = asyncio.create_task(processor.run())
    processor.put(skipped)
    assert await eventually(lambda: forwarder.failures < 10**6, 5, interval=0.01)
    processor.stop()
    await asyncio.wait_for(processing, 5)  # within the one pause (TROUBLE_PAUSE) under way
    assert not forwarder.acks and state.pending("Audit.Exchange")[0] == 1  # fetched again at the next start
