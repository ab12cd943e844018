"""The trigger against the Event Hubs emulator, Azurite and the runtime stub: in process and as `python main.py`."""

from __future__ import annotations

import asyncio
import threading

import orjson
import pytest
from sekoia_automation.constants import EVENT_BYTES_MAX_SIZE

from azure_eventhub import consumer as consumer_module
from azure_eventhub import metrics
from azure_eventhub.consumer import STOP_AFTER_GRACE, Settings
from azure_eventhub.records import RecordSplitter
from azure_eventhub.trigger import EventHubTrigger
from connectors.state import StateFile
from connectors.trigger import CollectorTrigger
from tests.eventhub_helpers import (
    EventHubStack,
    InProcessTrigger,
    canonical,
    compare,
    envelope,
    fixture_lines,
    ids_of,
    records_with_ids,
    terminate,
    wait_until,
)
from tests.storage_tap import StorageTap


@pytest.fixture
def stack(tmp_path):
    with EventHubStack(tmp_path / "stack", partitions=4) as stack:
        yield stack


pytestmark = pytest.mark.usefixtures("reset_fatal")


def fixture_envelopes() -> list[bytes]:
    """One envelope per fixture file, as diagnostic settings send them."""
    lines = fixture_lines()
    bodies, start = [], 0
    for size in (4, 5, 3, 1, 5, 2, 3, 1, 3, 1, 1):
        bodies.append(envelope(lines[start:start + size]))
        start += size
    assert start == len(lines)
    return bodies


def test_in_process_fixture_records_delivered_and_checkpointed_in_azurite(stack, monkeypatch):
    stack.publish(fixture_envelopes())
    expected = [canonical(orjson.loads(line)) for line in fixture_lines()]
    before = metrics.records_forwarded._value.get()
    runner = InProcessTrigger(stack.env(stack.config()), monkeypatch)
    runner.trigger.settings = Settings(backlog_interval=0.5)
    runner.start()
    try:
        assert wait_until(lambda: stack.delivered_count() >= 29, 60)
        # Checkpoints follow delivery: every partition's blob reaches its last event.
        assert wait_until(lambda: stack.checkpoints() == {"0": 2, "1": 2, "2": 2, "3": 1}, 20), stack.checkpoints()
        assert wait_until(lambda: metrics.backlog.labels("0")._value.get() == 0 and
                          metrics.owned_partitions._value.get() == 4, 10)
    finally:
        runner.stop()
    assert runner.error is None and CollectorTrigger.fatal_error is None
    assert compare(expected, [canonical(orjson.loads(r)) for r in stack.delivered()]) == {
        "expected": 29, "delivered": 29, "lost": 0, "duplicates": 0}
    assert metrics.records_forwarded._value.get() - before == 29
    assert metrics.owned_partitions._value.get() == 0


def test_a_checkpoint_writer_that_dies_fails_the_run_which_restarts_and_checkpoints(stack, monkeypatch):
    """The writer's task dying (a bug, here its first round) must not leave the run reading on without checkpoints
    while the monitor keeps beating: the run fails, says why, and the trigger's next run writes them."""
    from azure_eventhub.checkpoints import CheckpointWriter

    real_write, rounds = CheckpointWriter._write, []

    async def first_round_dies(self, batch):
        rounds.append(len(batch))
        if len(rounds) == 1:
            raise RuntimeError("a bug in the checkpoint writer")
        return await real_write(self, batch)

    monkeypatch.setattr(CheckpointWriter, "_write", first_round_dies)
    stack.publish(fixture_envelopes())
    runner = InProcessTrigger(stack.env(stack.config()), monkeypatch)
    runner.start()
    try:
        assert wait_until(lambda: stack.checkpoints() == {"0": 2, "1": 2, "2": 2, "3": 1}, 60), stack.checkpoints()
    finally:
        runner.stop()
    assert runner.error is None and CollectorTrigger.fatal_error is None
    messages = [log["message"] for log in stack.logs()]
    [died] = [m for m in messages if "checkpoint writer stopped" in m]
    assert "(RuntimeError)" in died and "this run ends" in died  # the trigger's line below has the traceback
    assert any("Collection failed (RuntimeError)" in m for m in messages)
    expected = [canonical(orjson.loads(line)) for line in fixture_lines()]
    assert compare(expected, [canonical(orjson.loads(r)) for r in stack.delivered()])["lost"] == 0


# Seconds an orchestrator waits after SIGTERM before it kills the container.
ORCHESTRATOR_WAIT_S = 20.0
# What a stop says when it could not deliver or checkpoint everything by its deadline.
STOP_WARNINGS = ("Stopped with undelivered events", "Stopping before the last checkpoints were saved")


def stop_warnings(stack: EventHubStack) -> list[str]:
    return [log["message"] for log in stack.logs() if log["message"].startswith(STOP_WARNINGS)]


def test_main_with_local_store_restarts_where_it_stopped(stack, tmp_path):
    first, second = records_with_ids(3000, "a"), records_with_ids(1000, "b")
    stack.publish_envelopes(first, per_envelope=20)
    config = stack.config(storage=False)
    proc = stack.start_process(config)
    assert wait_until(lambda: stack.delivered_count() >= 3000 or proc.poll() is not None, 90)
    assert terminate(proc, timeout=ORCHESTRATOR_WAIT_S) == 0  # ended by itself, not killed
    assert not stop_warnings(stack), stop_warnings(stack)  # nothing left undelivered or unsaved
    # The local store holds the last event of each partition: 3000 records = 150 envelopes, 37-38 per partition.
    state = StateFile(stack.runtime.data_path / "state" / "consume_eventhub_messages" / "eventhub-checkpoints.json")
    partitions = next(iter(state.load().values()))
    assert {p: c["sequence_number"] for p, c in partitions.items()} == {"0": 37, "1": 37, "2": 36, "3": 36}

    stack.publish_envelopes(second, per_envelope=20)
    proc = stack.start_process(config)
    assert wait_until(lambda: stack.delivered_count() >= 4000 or proc.poll() is not None, 90)
    assert terminate(proc) == 0
    assert compare(ids_of(first + second), stack.delivered_ids()) == {
        "expected": 4000, "delivered": 4000, "lost": 0, "duplicates": 0}
    # Checkpointed up to the end (50 more envelopes, 12-13 per partition): a next start reads nothing again.
    partitions = next(iter(state.load().values()))
    assert {p: c["sequence_number"] for p, c in partitions.items()} == {"0": 50, "1": 50, "2": 48, "3": 48}


def test_main_handles_bad_and_oversize_bodies(stack):
    good = records_with_ids(40, "g")
    huge_record = orjson.dumps({"category": "AuditLogs", "sekoia_test_id": "huge", "blob": "x" * 300_000})
    bodies = [
        envelope(good[:20]),
        b"plain text line from some producer",
        b"caf\xe9 latin-1 \xff",
        b"",
        b'{"records": []}',
        envelope([huge_record, good[20]]),  # one record over the intake limit, one normal
        orjson.dumps({"sekoia_test_id": "object", "pad": "y" * 260_000}),  # a whole body over the limit
        b"[1, 2, 3]",
        envelope(good[21:]),
    ]
    stack.publish(bodies, partition_id="1")
    proc = stack.start_process(stack.config())
    expected = 20 + 2 + 1 + 1 + 19 + 2  # records + 2 text bodies + good[20] + the array + 2 oversize, shortened
    assert wait_until(lambda: stack.delivered_count() >= expected or proc.poll() is not None, 60)
    # Every body read (the checkpoint reached the last one): nothing more can arrive.
    assert wait_until(lambda: stack.checkpoints().get("1") == len(bodies) - 1 or proc.poll() is not None, 60)
    assert terminate(proc) == 0
    delivered = stack.delivered()
    assert len(delivered) == expected
    assert b"plain text line from some producer" in delivered and b"caf\\xe9 latin-1 \\xff" in delivered
    assert b"[1,2,3]" in delivered or b"[1, 2, 3]" in delivered
    shortened = [orjson.loads(line) for line in delivered if b'"sekoia_truncated"' in line]
    ids = [orjson.loads(line).get("sekoia_test_id") for line in delivered
           if line.startswith(b"{") and b'"sekoia_truncated"' not in line]
    assert compare(ids_of(good), ids) == {"expected": 40, "delivered": 40, "lost": 0, "duplicates": 0}
    # The two oversize events arrived shortened and were kept whole with a warning; the checkpoint passed them.
    assert sorted(event["sekoia_test_id"] for event in shortened) == ["huge", "object"]
    state = stack.runtime.data_path / "state" / "consume_eventhub_messages"
    kept = [orjson.loads(line) for path in state.glob("shortened-originals-*.jsonl")
            for line in path.read_bytes().splitlines()]
    assert sorted(entry["bytes"] > 250_000 for entry in kept) == [True, True]
    warnings = [log["message"] for log in stack.logs() if log["level"] == "warning"]
    assert sum("over the intake limit" in message for message in warnings) >= 1
    assert any("not JSON" in message and "forwarded as text" in message for message in warnings)
    assert stack.checkpoints()["1"] == len(bodies) - 1


def test_playbook_mode_forwards_text_as_json_strings(stack, monkeypatch):
    stack.publish([envelope(records_with_ids(5, "p")), b"not json at all"], partition_id="0")
    runner = InProcessTrigger(stack.env(stack.config(), intake=False), monkeypatch).start()
    try:
        assert wait_until(lambda: stack.delivered_count() >= 6, 60)
    finally:
        runner.stop()
    delivered = [orjson.loads(line) for line in stack.delivered()]
    assert "not json at all" in delivered
    assert sorted(record["sekoia_test_id"] for record in delivered if isinstance(record, dict)) == [
        f"p-{i}" for i in range(5)]


def test_main_killed_then_restarted_resumes_at_once_without_loss(stack):
    records = records_with_ids(6000, "k")
    stack.publish_envelopes(records, per_envelope=20)
    config = stack.config()  # default load balancing: a dead owner's partitions expire only after 3 minutes
    proc = stack.start_process(config)
    assert wait_until(lambda: stack.delivered_count() >= 1000 or proc.poll() is not None, 90, 0.02)
    proc.kill()
    proc = stack.start_process(config)
    # The restarted run releases what the killed one still owned: it reads again at once, not after the 3 minutes
    # its ownership takes to expire (longer than this wait).
    assert wait_until(lambda: len(set(stack.delivered_ids())) >= 6000 or proc.poll() is not None, 60, 0.2)
    assert terminate(proc) == 0
    result = compare(ids_of(records), stack.delivered_ids())
    assert result["lost"] == 0, result
    assert any("still held by the previous run" in log["message"] for log in stack.logs())


def test_a_body_over_the_event_size_limit_is_delivered_and_split_on_the_trigger_loop(stack, monkeypatch):
    """No thread of the trigger's own: batches, large ones included, are split on the run's loop (the record to
    shorten is shortened by the forwarder, off the loop) and delivered with the rest."""
    big = orjson.dumps({"category": "AuditLogs", "sekoia_test_id": "big", "properties": {"text": "x" * 300_000}})
    small = records_with_ids(3, "small")
    stack.publish([envelope(small), envelope([big])], partition_id="0")
    threads: list[tuple[int, str]] = []
    split = RecordSplitter.split

    def recording_split(self, bodies, records, stats):
        threads.append((max(map(len, bodies)), threading.current_thread().name))
        return split(self, bodies, records, stats)

    monkeypatch.setattr(RecordSplitter, "split", recording_split)
    runner = InProcessTrigger(stack.env(stack.config()), monkeypatch).start()
    try:
        assert wait_until(lambda: stack.delivered_count() >= 4, 60)
    finally:
        runner.stop()
    assert runner.error is None
    assert set(stack.delivered_ids()) == {"big", *ids_of(small)}
    assert any(size > EVENT_BYTES_MAX_SIZE for size, _ in threads), threads
    assert {name for _, name in threads} == {runner.thread.name}, threads  # the thread running the loop


def test_the_stop_deadline_fits_in_the_orchestrators_wait():
    """Delivery's grace and the checkpoints and closing after it (``Consumer.stop_deadline``) end before the kill,
    with room left for the interpreter's exit."""
    assert EventHubTrigger.stop_grace_seconds + STOP_AFTER_GRACE <= ORCHESTRATOR_WAIT_S - 5


def test_main_stops_on_sigterm_while_the_storage_account_hangs(stack):
    """Checkpoints, the ownership release and the store's closing share one stop deadline: SIGTERM ends the
    process cleanly even when every storage request hangs, the last checkpoints given up at that deadline (its
    length is checked above; no clock here: a slow machine only takes longer to exit)."""
    records = records_with_ids(200, "s")
    stack.publish_envelopes(records, per_envelope=20)
    tap = StorageTap(stack.azurite.account_url).start()
    try:
        config = stack.config(storage_connection_string=tap.connection_string(stack.azurite.connection_string),
                              load_balancing_interval=1)
        proc = stack.start_process(config)
        assert wait_until(lambda: stack.delivered_count() >= 200 or proc.poll() is not None, 90)
        assert wait_until(lambda: any(w.kind == "checkpoint" for w in tap.writes) or proc.poll() is not None, 30)
        tap.hanging.set()
        more = records_with_ids(100, "t")
        stack.publish_envelopes(more, per_envelope=20)  # delivered, then their checkpoints hang
        assert wait_until(lambda: stack.delivered_count() >= 300 or proc.poll() is not None, 60)
        assert terminate(proc, timeout=60) == 0  # not killed: a stop waiting on the storage account never ends
    finally:
        tap.stop()
    # It gave up on the checkpoints (their writes hang) at its deadline, instead of waiting for them.
    assert stop_warnings(stack) == ["Stopping before the last checkpoints were saved: the last records delivered "
                                    "may be read and sent again at the next start"]
    assert compare(ids_of(records + more), stack.delivered_ids())["lost"] == 0


def test_a_client_whose_owner_id_cannot_be_found_is_reported_once(stack, monkeypatch):
    """An azure-eventhub upgrade that moves the processor's id turns the ownership check off: said, not silent."""
    monkeypatch.setattr(consumer_module, "client_owner_id", lambda client: None)  # as such a client would
    monkeypatch.setattr(consumer_module, "OWNER_ID_DEADLINE", 0.5)
    records = records_with_ids(40, "o")
    stack.publish_envelopes(records, per_envelope=10)

    def told() -> int:
        return sum("owner id was not found" in log["message"] for log in stack.logs())

    runner = InProcessTrigger(stack.env(stack.config()), monkeypatch).start()
    try:
        assert wait_until(lambda: stack.delivered_count() >= 40 and told() >= 1, 60)
        # Still read and checkpointed, without the check.
        assert wait_until(lambda: stack.checkpoints() == {"0": 0, "1": 0, "2": 0, "3": 0}, 30), stack.checkpoints()
    finally:
        runner.stop()
    assert runner.error is None
    assert told() == 1


def test_a_failed_run_waits_for_delivery_once(stack, monkeypatch):
    """A run whose receiving fails leaves its forwarder to the trigger's one closing: a single wait for the
    runtime (bounded by the stop grace), not the consumer's drain and then the trigger's close."""
    from azure.eventhub.aio import EventHubConsumerClient

    from connectors.delivery import Forwarder

    received, real_receive = threading.Event(), EventHubConsumerClient.receive_batch

    async def receive_then_fail(self, on_event_batch, **kwargs):
        async def on_batch(context, events):
            await on_event_batch(context, events)
            if events:
                received.set()

        task = asyncio.create_task(real_receive(self, on_batch, **kwargs))
        while not received.is_set():
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise RuntimeError("the link broke")

    waits: dict[Forwarder, int] = {}  # per forwarder, in the order they first waited
    real_drain = Forwarder.drain

    async def counted_drain(self, timeout=None):
        waits[self] = waits.get(self, 0) + 1
        return await real_drain(self, timeout)

    monkeypatch.setattr(EventHubConsumerClient, "receive_batch", receive_then_fail)
    monkeypatch.setattr(Forwarder, "drain", counted_drain)
    stack.publish_envelopes(records_with_ids(40, "f"), per_envelope=10)
    runner = InProcessTrigger(stack.env(stack.config()), monkeypatch)
    runner.trigger.stop_grace_seconds = 2.0
    runner.start()
    try:
        assert wait_until(lambda: any("Collection failed (RuntimeError)" in log["message"] for log in stack.logs()), 60)
        # The trigger closed the failed run's forwarder (the first one to wait): every wait on it is counted.
        assert wait_until(lambda: waits and next(iter(waits)).control.closed, 30)
        failed_run = next(iter(waits))
    finally:
        runner.stop()
    assert runner.error is None
    assert waits[failed_run] == 1, waits


def test_a_stop_hands_over_only_the_slice_in_hand_of_each_batch_read(stack):
    """SIGTERM while whole batches of a partition (here 100 envelopes, 2,000 records) wait for the delivery's room:
    each stops at its slice in hand and the rest is read again at the next start. What reaches the runtime after
    the stop is what delivery held already, not every batch read: with a slow runtime those took the whole grace."""
    records = records_with_ids(20_000, "s")
    stack.publish_envelopes(records, per_envelope=20)
    stack.runtime.control(latency_ms=300)
    batch = 500
    config = stack.config(batch_max_events=batch, max_batch_size=100)
    proc = stack.start_process(config)
    assert wait_until(lambda: stack.delivered_count() >= 1000 or proc.poll() is not None, 60)
    at_stop = stack.delivered_count()
    assert terminate(proc, timeout=ORCHESTRATOR_WAIT_S) == 0
    after_stop = stack.delivered_count() - at_stop
    # Delivery holds its senders' batches, those queued behind them and its buffer (2 + 2 + 1); each of the 4
    # partitions adds at most its slice in hand (ACK_RECORDS, rounded up to a whole envelope).
    assert after_stop <= 5 * batch + 4 * (consumer_module.ACK_RECORDS + 20), after_stop
    assert not stop_warnings(stack), stop_warnings(stack)

    stack.runtime.control(latency_ms=0)
    proc = stack.start_process(config)
    assert wait_until(lambda: len(set(stack.delivered_ids())) >= 20_000 or proc.poll() is not None, 90)
    assert terminate(proc) == 0
    assert compare(ids_of(records), stack.delivered_ids()) == {
        "expected": 20_000, "delivered": 20_000, "lost": 0, "duplicates": 0}
