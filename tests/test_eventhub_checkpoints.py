"""The local checkpoint store and the writer that follows confirmed delivery (no network)."""

import asyncio
from datetime import UTC, datetime

import pytest

from azure_eventhub import metrics
from azure_eventhub.checkpoints import CheckpointWriter, FirstStart, LocalCheckpointStore
from connectors.errors import ConfigurationError, CorruptStateError
from connectors.state import StateFile
from emulators.process import eventually
from tests.support.held_calls import FirstCallHeld


def total(counter) -> float:
    """A Prometheus counter's value, as an exporter reads it."""
    return next(sample.value for sample in counter.collect()[0].samples if sample.name.endswith("_total"))

NS, HUB, GROUP = "ns.servicebus.windows.net", "logs", "$Default"


def checkpoint(partition: str, sequence: int) -> dict:
    return {"fully_qualified_namespace": NS, "eventhub_name": HUB, "consumer_group": GROUP,
            "partition_id": partition, "offset": str(sequence * 100), "sequence_number": sequence}


async def test_local_store_survives_a_restart(tmp_path):
    path = tmp_path / "state" / "eventhub-checkpoints.json"
    store = LocalCheckpointStore(path)
    await store.update_checkpoint(checkpoint("0", 41))
    await store.update_checkpoint(checkpoint("1", 7))
    await store.update_checkpoint(checkpoint("0", 42))
    await store.close()
    reopened = LocalCheckpointStore(path)
    listed = sorted(await reopened.list_checkpoints(NS, HUB, GROUP), key=lambda c: c["partition_id"])
    assert [(c["partition_id"], c["sequence_number"], c["offset"]) for c in listed] == [("0", 42, "4200"),
                                                                                      ("1", 7, "700")]
    assert await reopened.list_checkpoints(NS, "other-hub", GROUP) == []
    await reopened.close()


async def test_local_store_grants_ownership_to_its_single_consumer(tmp_path):
    store = LocalCheckpointStore(tmp_path / "c.json")
    wanted = [{"fully_qualified_namespace": NS, "eventhub_name": HUB, "consumer_group": GROUP,
               "partition_id": str(p), "owner_id": "me"} for p in range(4)]
    claimed = await store.claim_ownership(wanted)
    assert [o["partition_id"] for o in claimed] == ["0", "1", "2", "3"] and all(o["etag"] for o in claimed)
    assert len(await store.list_ownership(NS, HUB, GROUP)) == 4
    await store.close()


async def test_a_second_instance_on_the_same_local_store_is_refused(tmp_path):
    first = LocalCheckpointStore(tmp_path / "c.json")
    with pytest.raises(ConfigurationError) as raised:
        LocalCheckpointStore(tmp_path / "c.json")
    assert raised.value.field == "storage_connection_string"
    await first.close()
    await LocalCheckpointStore(tmp_path / "c.json").close()  # released on close


async def test_a_corrupt_local_store_is_not_silently_reset(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b"{not json")
    with pytest.raises(CorruptStateError):
        LocalCheckpointStore(path)


class RecordingStore:
    def __init__(self, fail_times: int = 0, delay: float = 0.0):
        self.writes: list[tuple[str, int]] = []
        self.fail_times = fail_times
        self.delay = delay
        self.writing = asyncio.Event()  # set once a write began

    async def update_checkpoint(self, checkpoint, **kwargs):
        self.writing.set()
        await asyncio.sleep(self.delay)
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("store down")
        self.writes.append((checkpoint["partition_id"], checkpoint["sequence_number"]))


def writer_for(store, logs=None, **options):
    logs = logs if logs is not None else []
    options.setdefault("retry_base", 0.05)
    return CheckpointWriter(store, NS, HUB, GROUP, lambda message, level: logs.append((level, message)), **options)


async def test_acks_during_writes_are_coalesced_and_never_go_back():
    store = RecordingStore(delay=0.05)
    writer = writer_for(store)
    task = asyncio.create_task(writer.run())
    for sequence in range(1, 201):  # acks keep coming (on the loop, as the forwarder calls them) while writes last
        writer.confirmed(str(sequence % 2), str(sequence), sequence)
        if sequence % 20 == 0:
            await asyncio.sleep(0.01)
    writer.confirmed("0", "1", 1)  # an older position arriving late changes nothing
    assert await writer.flush(5)
    task.cancel()
    per_partition = {p: [s for q, s in store.writes if q == p] for p in ("0", "1")}
    assert per_partition["0"][-1] == 200 and per_partition["1"][-1] == 199
    assert all(values == sorted(values) for values in per_partition.values())
    assert len(store.writes) < 200  # far fewer writes than acks


class GatedStore(RecordingStore):
    """Each write waits for the test to open its gate: a round in flight for as long as the test wants."""

    def __init__(self):
        super().__init__()
        self.gates: list[asyncio.Event] = []

    async def update_checkpoint(self, checkpoint, **kwargs):
        gate = asyncio.Event()
        self.gates.append(gate)
        self.writing.set()
        await gate.wait()
        self.writes.append((checkpoint["partition_id"], checkpoint["sequence_number"]))


async def test_a_write_starts_at_the_first_ack_and_the_acks_of_its_flight_make_the_next_round():
    """A store slower than the gap sets the pace: an ack with no write in flight is written at once; those arriving
    while a round is in flight are coalesced into one more round, started as soon as that one returns (no further
    wait: a crash re-reads what was confirmed since the last round started, not a second of delivery)."""
    store = GatedStore()
    writer = writer_for(store, gap=0.05)
    task = asyncio.create_task(writer.run())
    writer.confirmed("0", "100", 1)
    await asyncio.wait_for(store.writing.wait(), 5)  # the first round starts at once
    for sequence in range(2, 50):  # confirmed while it is in flight: one write of the latest of each partition
        writer.confirmed("0", str(sequence * 100), sequence)
        writer.confirmed("1", str(sequence * 100), sequence)
        await asyncio.sleep(0)
    assert len(store.gates) == 1 and store.writes == []  # one round in flight at a time
    await asyncio.sleep(0.06)  # a store answering in 60 ms: its latency, not the writer, sets the pace
    store.gates[0].set()
    for _ in range(20):  # loop turns only, no time: the next round begins as the first returns
        await asyncio.sleep(0)
    assert len(store.gates) == 3
    for gate in store.gates:
        gate.set()
    assert await writer.flush(5)
    task.cancel()
    assert sorted(store.writes) == [("0", 1), ("0", 49), ("1", 49)]


async def test_rounds_start_a_gap_apart_and_a_flush_does_not_wait_for_the_next():
    store = RecordingStore()
    writer = writer_for(store, gap=3600)
    task = asyncio.create_task(writer.run())
    writer.confirmed("0", "100", 1)
    await asyncio.wait_for(store.writing.wait(), 5)
    for sequence in range(2, 50):
        writer.confirmed("0", str(sequence * 100), sequence)
        writer.confirmed("1", str(sequence * 100), sequence)
        await asyncio.sleep(0)
    for _ in range(20):  # loop turns enough for an unpaced writer to write them (each write takes one)
        await asyncio.sleep(0)
    assert store.writes == [("0", 1)]  # the next round waits for the gap
    assert await writer.flush(5)  # stopping: written now, not an hour later
    task.cancel()
    assert sorted(store.writes) == [("0", 1), ("0", 49), ("1", 49)]


async def test_the_next_round_waits_a_spacing_per_write_of_the_last_one():
    """Many partitions moving at once: after a round of writes the next waits the spacing per write of that round
    (the writes' CPU bounded whatever the number of partitions), even with no gap; without a spacing it starts
    within loop turns; a flush does not wait."""
    for spacing, paced in ((0.0, False), (3600.0, True)):
        store = RecordingStore()
        writer = writer_for(store, gap=0.0, spacing=spacing)
        task = asyncio.create_task(writer.run())
        for partition in ("0", "1", "2"):
            writer.confirmed(partition, "100", 1)
        await asyncio.wait_for(store.writing.wait(), 5)
        for _ in range(20):
            await asyncio.sleep(0)
        assert sorted(store.writes) == [("0", 1), ("1", 1), ("2", 1)]
        writer.confirmed("0", "200", 2)
        writer.confirmed("1", "100", 1)  # did not move: nothing to write
        for _ in range(20):  # loop turns enough for an unpaced writer to write it
            await asyncio.sleep(0)
        assert (("0", 2) not in store.writes) is paced
        assert await writer.flush(5)
        task.cancel()
        assert sorted(store.writes) == [("0", 1), ("0", 2), ("1", 1), ("2", 1)]


async def test_failed_writes_are_retried_and_logged_once():
    store = RecordingStore(fail_times=3)
    logs = []
    writer = writer_for(store, logs)
    failures_before = total(metrics.checkpoint_failures)
    writer_task = asyncio.create_task(writer.run())
    writer.confirmed("3", "300", 3)
    assert await writer.flush(30)
    writer_task.cancel()
    assert store.writes == [("3", 3)] and total(metrics.checkpoint_failures) - failures_before == 3
    assert [level for level, _ in logs] == ["error", "info"]
    assert "partition 3" in logs[0][1] and "reachable again" in logs[1][1]


async def test_a_flush_cuts_short_the_wait_after_a_failed_write():
    """A storage hiccup just before the stop: the retry is not left waiting out its backoff (here 15-30 s) while
    the process exits, the last checkpoints are written within the flush."""
    store = RecordingStore(fail_times=1)
    writer = writer_for(store, retry_base=30.0)
    failures_before = total(metrics.checkpoint_failures)
    task = asyncio.create_task(writer.run())
    writer.confirmed("0", "700", 7)
    # now waiting for its retry
    assert await eventually(lambda: total(metrics.checkpoint_failures) - failures_before == 1, 10, 0.01)
    assert await writer.flush(10)
    task.cancel()
    assert store.writes == [("0", 7)]


async def test_flush_reports_what_could_not_be_written():
    writer = writer_for(RecordingStore(fail_times=1000))
    task = asyncio.create_task(writer.run())
    writer.confirmed("0", "1", 1)
    assert not await writer.flush(0.5)
    task.cancel()


async def test_acks_of_a_partition_no_longer_read_here_are_dropped():
    store = RecordingStore(delay=0.05)
    writer = writer_for(store)
    dropped_before = total(metrics.checkpoints_dropped)
    task = asyncio.create_task(writer.run())
    first = writer.claimed("0")
    writer.confirmed("0", "100", 1, owner=first)
    assert await writer.flush(5) and store.writes == [("0", 1)]
    writer.confirmed("0", "200", 2, owner=first)  # pending when the partition moves to another instance
    writer.forget("0")
    writer.confirmed("0", "300", 3, owner=first)  # delivered after the handover
    second = writer.claimed("0")  # read here again later: the old reading's acks still do not count
    writer.confirmed("0", "400", 4, owner=first)
    writer.confirmed("0", "500", 5, owner=second)
    assert await writer.flush(5)
    task.cancel()
    assert store.writes == [("0", 1), ("0", 5)]
    assert total(metrics.checkpoints_dropped) - dropped_before == 3


async def test_a_position_waiting_for_its_write_is_dropped_when_the_partition_closes():
    store = RecordingStore(delay=0.3)
    writer = writer_for(store)
    dropped_before = total(metrics.checkpoints_dropped)
    task = asyncio.create_task(writer.run())
    reading = writer.claimed("1")
    writer.confirmed("1", "100", 1, owner=reading)
    await asyncio.wait_for(store.writing.wait(), 5)  # that write is under way (it lasts 0.3 s)
    writer.confirmed("1", "200", 2, owner=reading)  # waits for it
    writer.forget("1")
    assert await writer.flush(5)
    task.cancel()
    assert store.writes == [("1", 1)] and total(metrics.checkpoints_dropped) - dropped_before == 1


async def test_local_store_keeps_the_first_start(tmp_path):
    path = tmp_path / "state" / "eventhub-checkpoints.json"
    store = LocalCheckpointStore(path)
    first = FirstStart(["0", "1"], datetime(2026, 1, 31, 8, tzinfo=UTC))
    assert await store.load_first_start(NS, HUB, GROUP) is None
    assert await store.record_first_start(NS, HUB, GROUP, first) == first
    later = FirstStart(["0", "1", "2"], datetime(2026, 2, 1, tzinfo=UTC))
    assert await store.record_first_start(NS, HUB, GROUP, later) == first  # the first one stays
    await store.close()
    reopened = LocalCheckpointStore(path)
    assert await reopened.load_first_start(NS, HUB, GROUP) == first
    assert await reopened.load_first_start(NS, "other-hub", GROUP) is None
    assert await reopened.list_checkpoints(NS, HUB, GROUP) == []  # not mixed with the checkpoints
    await reopened.close()


async def test_a_first_start_recorded_by_version_1_0_gets_a_time_and_keeps_its_partitions(tmp_path):
    path = tmp_path / "state" / "eventhub-checkpoints.json"
    StateFile(path.with_name("eventhub-partitions.json")).save({f"{NS}/{HUB}/{GROUP}".lower(): ["0", "1"]})
    store = LocalCheckpointStore(path)
    assert await store.load_first_start(NS, HUB, GROUP) == FirstStart(["0", "1"], None)
    upgrade = FirstStart(["0", "1", "2"], datetime(2026, 2, 1, tzinfo=UTC))
    assert await store.record_first_start(NS, HUB, GROUP, upgrade) == FirstStart(["0", "1"], upgrade.started_at)
    assert await store.load_first_start(NS, HUB, GROUP) == FirstStart(["0", "1"], upgrade.started_at)
    await store.close()


async def test_a_partition_claimed_by_another_instance_is_not_checkpointed_even_before_it_closes_here():
    store = RecordingStore()
    owners = {"2": "me"}

    async def owner_of(fully_qualified_namespace, eventhub_name, consumer_group, partition_id):
        return owners.get(partition_id)

    store.owner_of = owner_of  # what the Blob store reads from the ownership blob
    writer = writer_for(store)
    dropped_before = total(metrics.checkpoints_dropped)
    writer.owner_id = "me"
    task = asyncio.create_task(writer.run())
    reading = writer.claimed("2")
    writer.confirmed("2", "100", 1, owner=reading)
    assert await writer.flush(5)
    owners["2"] = "the new owner"  # its reader here is still held back: the client has not closed it yet
    writer.confirmed("2", "200", 2, owner=reading)
    assert await writer.flush(5)
    task.cancel()
    assert store.writes == [("2", 1)] and total(metrics.checkpoints_dropped) - dropped_before == 1


async def test_the_owner_is_read_once_per_max_age_not_before_every_write():
    store = RecordingStore()
    reads = []

    async def owner_of(fully_qualified_namespace, eventhub_name, consumer_group, partition_id):
        reads.append(partition_id)
        return "me"

    store.owner_of = owner_of
    writer = writer_for(store, owner_max_age=3600)
    writer.owner_id = "me"
    task = asyncio.create_task(writer.run())
    reading = writer.claimed("3")
    for sequence in range(1, 4):
        writer.confirmed("3", str(sequence * 100), sequence, owner=reading)
        assert await writer.flush(5)
    assert reads == ["3"] and store.writes == [("3", 1), ("3", 2), ("3", 3)]
    writer.forget("3")  # a new reading of the partition checks its owner again
    reading = writer.claimed("3")
    writer.confirmed("3", "400", 4, owner=reading)
    assert await writer.flush(5)
    task.cancel()
    assert reads == ["3", "3"] and store.writes[-1] == ("3", 4)


@pytest.mark.parametrize("interrupted", ["cancelled", "timed out"])
async def test_a_local_save_interrupted_midway_keeps_the_next_one_waiting_until_its_thread_returned(tmp_path,
                                                                                                  interrupted):
    """A cancel (the stop) or the writer's timeout cannot stop the save's thread: the next save waits for it, never
    two threads replacing the file at once, and a save that ended under the cancel counts."""
    store = LocalCheckpointStore(tmp_path / "c.json")
    store.file.save = savers = FirstCallHeld(store.file.save)
    update = store.update_checkpoint(checkpoint("0", 1))
    first = asyncio.create_task(asyncio.wait_for(update, 0.05) if interrupted == "timed out" else update)
    try:
        assert await eventually(lambda: savers.calls == 1, 10, 0.01)
        if interrupted == "cancelled":
            first.cancel()
        second = asyncio.create_task(store.update_checkpoint(checkpoint("1", 2)))
        # A second save would start as soon as the interrupted one let the lock go: give it every chance to.
        await eventually(lambda: savers.calls > 1, 1.0, 0.01)
        assert savers.calls == 1 and not first.done()  # the interrupted save still holds the lock
    finally:
        savers.release()
    with pytest.raises(asyncio.CancelledError if interrupted == "cancelled" else TimeoutError):
        await first  # raised once the thread returned
    await asyncio.wait_for(second, 10)
    assert (savers.running, savers.most, savers.calls) == (0, 1, 2)
    await store.close()
    reopened = LocalCheckpointStore(tmp_path / "c.json")
    listed = await reopened.list_checkpoints(NS, HUB, GROUP)
    assert sorted((c["partition_id"], c["sequence_number"]) for c in listed) == [("0", 1), ("1", 2)]
    await reopened.close()
