"""The local Event Hubs emulator, exercised only through the real azure-eventhub client."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import threading
import time

import pytest
from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient
from azure.eventhub.aio import EventHubConsumerClient as AioConsumer
from azure.eventhub.aio import EventHubProducerClient as AioProducer
from azure.eventhub.exceptions import AuthenticationError, EventDataSendError, EventHubError

from emulators import fixtures
from emulators.eventhub import EventHubEmulator
from emulators.eventhub.harness import EmulatorProcess
from emulators.eventhub.hashing import partition_for_key
from emulators.process import wait_until

HUBS = {"basic": 3, "aio": 4, "positions": 1, "props": 2, "epoch": 2, "limits": 1}
FAST_FAIL = {"retry_total": 0}


def envelopes() -> list[bytes]:
    """One real diagnostic-settings message per fixture file: {"records": [...all its lines...]}."""
    return [b'{"records":[' + b",".join(lines) + b"]}" for lines in fixtures.eventhub_records().values()]


@pytest.fixture(scope="module")
def emulator():
    emu = EventHubEmulator(HUBS, consumer_groups=["ops"])
    emu.start_in_thread()
    yield emu
    emu.stop_thread()


def conn_str(emu: EventHubEmulator, hub: str) -> str:
    return emu.connection_string(hub)


def sync_read(cs: str, count: int, timeout: float = 20, **receive_kwargs) -> list[EventData]:
    """Receive `count` events with the sync consumer (blocking receive on a thread)."""
    consumer = EventHubConsumerClient.from_connection_string(cs, consumer_group="$Default")
    events: list[EventData] = []
    done = threading.Event()

    def on_event(_context, event):
        if event is not None:
            events.append(event)
            if len(events) >= count:
                done.set()

    thread = threading.Thread(target=consumer.receive, kwargs={"on_event": on_event, **receive_kwargs}, daemon=True)
    thread.start()
    done.wait(timeout)
    consumer.close()
    thread.join(10)
    return events


async def aio_read(cs: str, count: int, timeout: float = 20, **receive_kwargs) -> list[EventData]:
    """Receive `count` events with the aio consumer (fewer if they do not come within `timeout`)."""
    consumer = AioConsumer.from_connection_string(cs, consumer_group="$Default")
    events: list[EventData] = []
    done = asyncio.Event()

    async def on_event_batch(_context, batch):
        events.extend(batch)
        if len(events) >= count:
            done.set()

    task = asyncio.create_task(consumer.receive_batch(on_event_batch=on_event_batch, **receive_kwargs))
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    await stop(consumer, task)
    return events


async def stop(consumer: AioConsumer, task: asyncio.Task) -> None:
    # close() stops the processor, but its load-balancing sleep would keep receive() alive
    await consumer.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def until(predicate, timeout: float = 10.0) -> bool:
    """``wait_until`` from a test on the event loop: polled on a thread, the loop (and the clients) run meanwhile."""
    return await asyncio.to_thread(wait_until, predicate, timeout, 0.05)


# ------------------------------------------------------------------------------------------------


def test_sync_producer_and_consumer_roundtrip(emulator):
    cs = conn_str(emulator, "basic")
    bodies = envelopes()
    with EventHubProducerClient.from_connection_string(cs) as producer:
        batch = producer.create_batch()
        for body in bodies:
            batch.add(EventData(body))
        producer.send_batch(batch)  # no key: one partition, chosen by the service
        keyed = producer.create_batch(partition_key="tenant-a")
        for i in range(5):
            keyed.add(EventData(f"keyed {i}"))
        producer.send_batch(keyed)
        producer.send_batch([EventData(f"pinned {i}") for i in range(3)], partition_id="2")
        single = EventData(b"single")
        single.properties = {"origin": "test", "n": 7}
        single.content_type = "application/octet-stream"
        producer.send_event(single, partition_key="tenant-b")

    expected = len(bodies) + 5 + 3 + 1
    events = sync_read(cs, expected, starting_position="-1")
    assert len(events) == expected

    received = {e.body_as_str(): e for e in events}
    for body in bodies:  # envelopes come back byte for byte
        assert json.loads(received[body.decode()].body_as_str())["records"]
    key_partition = str(partition_for_key("tenant-a", 3))
    keyed_events = [e for e in events if e.body_as_str().startswith("keyed")]
    assert {e.partition_key for e in keyed_events} == {b"tenant-a"}
    hub = emulator.broker.hub("basic")  # the key decides the partition, deterministically
    assert sum(b"keyed " in wire for wire in hub.partitions[int(key_partition)].wires) == 5
    single_back = received["single"]
    assert single_back.properties == {b"origin": b"test", b"n": 7}
    assert single_back.content_type == "application/octet-stream"
    assert single_back.partition_key == b"tenant-b"
    assert isinstance(single_back.enqueued_time, datetime.datetime)

    pinned = [e for e in events if e.body_as_str().startswith("pinned")]
    assert [e.sequence_number for e in pinned] == sorted(e.sequence_number for e in pinned)
    assert len(hub.partitions[2].wires) >= 3


async def test_aio_producer_and_consumer_roundtrip(emulator):
    cs = conn_str(emulator, "aio")
    bodies = envelopes()
    big_batch_bodies = [os.urandom(512).hex().encode() for _ in range(200)]  # ~200 KB: multi-frame transfer
    async with AioProducer.from_connection_string(cs) as producer:
        batch = await producer.create_batch(partition_id="1")
        for body in bodies:
            batch.add(EventData(body))
        await producer.send_batch(batch)
        keyed = await producer.create_batch(partition_key="device-42")
        for body in big_batch_bodies:
            keyed.add(EventData(body))
        await producer.send_batch(keyed)
        await producer.send_batch([EventData("list 1"), EventData("list 2")])
        await producer.send_event(EventData("aio single"))

    expected = len(bodies) + len(big_batch_bodies) + 3
    events = await aio_read(cs, expected, starting_position="-1")
    assert len(events) == expected
    # Each once, and nothing else in the hub to read.
    assert len({e.body_as_str() for e in events}) == expected
    assert sum(len(partition.wires) for partition in emulator.broker.hub("aio").partitions) == expected
    assert sorted(e.body_as_str().encode() for e in events if e.body_as_str().encode() in big_batch_bodies) == sorted(
        big_batch_bodies
    )
    hub = emulator.broker.hub("aio")
    assert len(hub.partitions[1].wires) >= len(bodies)
    assert len(hub.partitions[partition_for_key("device-42", 4)].wires) >= len(big_batch_bodies)
    keyed = [e for e in events if e.body_as_str().encode() in set(big_batch_bodies)]
    seqs = [e.sequence_number for e in keyed]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # a batch lands contiguously
    offsets = [int(e.offset) for e in keyed]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


async def test_start_positions(emulator):
    cs = conn_str(emulator, "positions")
    async with AioProducer.from_connection_string(cs) as producer:
        for i in range(10):
            await producer.send_event(EventData(f"e{i}"))
            await asyncio.sleep(0.003)  # distinct enqueued times (millisecond resolution)
    everything = await aio_read(cs, 10, starting_position="-1", partition_id="0")
    assert [e.body_as_str() for e in everything] == [f"e{i}" for i in range(10)]
    fifth = everything[5]
    after = [f"e{i}" for i in range(6, 10)]
    from_fifth = [f"e{i}" for i in range(5, 10)]

    async def bodies(expected: list[str], **kwargs) -> list[str]:
        # An event the filter should have left out comes first, within the `len(expected)` read.
        events = await aio_read(cs, len(expected), partition_id="0", **kwargs)
        return [e.body_as_str() for e in events]

    cases = [  # (start position, inclusive, expected): all read concurrently to keep the test short
        (fifth.offset, False, after),
        (fifth.offset, True, from_fifth),
        (fifth.sequence_number, False, after),
        (fifth.sequence_number, True, from_fifth),
        (fifth.enqueued_time, False, after),
        (fifth.enqueued_time, True, from_fifth),
    ]
    results = await asyncio.gather(
        *(
            bodies(expected, starting_position=start, starting_position_inclusive=inclusive)
            for start, inclusive, expected in cases
        )
    )
    for (start, inclusive, expected), got in zip(cases, results):
        assert got == expected, (start, inclusive)

    # the sync consumer honours the same filters
    sync_events = sync_read(cs, 4, starting_position=fifth.sequence_number, partition_id="0")
    assert [e.body_as_str() for e in sync_events] == after

    # @latest: only what is sent after the link is attached
    group = emulator.broker.hub("positions").consumer_groups["$default"]
    task = asyncio.create_task(aio_read(cs, 1, partition_id="0", starting_position="@latest"))
    assert await until(lambda: group.receivers.get("0"))
    async with AioProducer.from_connection_string(cs) as producer:
        await producer.send_event(EventData("late"))
    assert [e.body_as_str() for e in await task] == ["late"]


def test_management_properties(emulator):
    cs = conn_str(emulator, "props")
    with EventHubProducerClient.from_connection_string(cs) as producer:
        empty = producer.get_partition_properties("1")
        for i in range(4):
            producer.send_event(EventData(f"p{i}"), partition_id="0")
        hub_props = producer.get_eventhub_properties()
        part = producer.get_partition_properties("0")
    assert hub_props["eventhub_name"] == "props"
    assert hub_props["partition_ids"] == ["0", "1"]
    assert abs(hub_props["created_at"].timestamp() - time.time()) < 600
    assert empty["is_empty"] is True
    assert empty["last_enqueued_sequence_number"] == -1
    assert empty["beginning_sequence_number"] == 0
    assert empty["last_enqueued_offset"] == "-1"
    assert part["is_empty"] is False
    assert part["beginning_sequence_number"] == 0
    assert part["last_enqueued_sequence_number"] == 3
    assert abs(part["last_enqueued_time_utc"].timestamp() - time.time()) < 60
    last = sync_read(cs, 4, starting_position="-1", partition_id="0")[-1]
    assert part["last_enqueued_offset"] == last.offset
    assert last.sequence_number == 3


def test_wrong_key_fails_fast(emulator):
    """Refused at once, with the reason (a 401 naming the key), not left to the client's timeout."""
    good = conn_str(emulator, "basic")
    refused = emulator.stats()["tokens_refused"]
    bad_key = good.replace(f"SharedAccessKey={emulator.key}", "SharedAccessKey=not-the-key")
    with EventHubProducerClient.from_connection_string(bad_key, **FAST_FAIL) as producer:
        with pytest.raises(AuthenticationError, match="401"):
            producer.send_batch([EventData("x")])
    assert emulator.stats()["tokens_refused"] == refused + 1
    bad_name = good.replace(f"SharedAccessKeyName={emulator.key_name}", "SharedAccessKeyName=nobody")
    with EventHubProducerClient.from_connection_string(bad_name, **FAST_FAIL) as producer:
        with pytest.raises(AuthenticationError, match="nobody"):
            producer.get_eventhub_properties()
    assert emulator.stats()["tokens_refused"] == refused + 2


async def test_unknown_hub_and_group(emulator):
    cs = emulator.connection_string("no-such-hub")
    async with AioProducer.from_connection_string(cs, **FAST_FAIL) as producer:
        with pytest.raises(EventHubError, match="404|could not be found"):
            await producer.get_eventhub_properties()
        with pytest.raises(EventHubError, match="404|not-found|could not be found"):
            await producer.send_batch([EventData("x")], partition_id="0")
    # strict mode: unknown consumer groups are refused, configured ones work
    strict = EventHubEmulator({"hub": 1}, consumer_groups=["known"], strict_consumer_groups=True)
    await strict.start()
    try:
        errors = []

        async def on_error(_context, error):
            errors.append(error)

        consumer = AioConsumer.from_connection_string(strict.connection_string(), consumer_group="unknown", **FAST_FAIL)
        task = asyncio.create_task(consumer.receive(on_event=lambda *a: None, on_error=on_error, partition_id="0"))
        await until(lambda: errors)
        await stop(consumer, task)
        assert errors and "could not be found" in str(errors[0])
    finally:
        await strict.stop()


async def test_epoch_stealing(emulator):
    cs = conn_str(emulator, "epoch")
    errors: dict[str, list[Exception]] = {"old": [], "new": [], "late": []}
    received: dict[str, list[str]] = {"old": [], "new": [], "late": []}

    def consumer(name: str, owner_level: int):
        client = AioConsumer.from_connection_string(cs, consumer_group="ops", **FAST_FAIL)

        async def on_event(_context, event):
            if event is not None:
                received[name].append(event.body_as_str())

        async def on_error(_context, error):
            errors[name].append(error)

        task = asyncio.create_task(
            client.receive(
                on_event=on_event,
                on_error=on_error,
                partition_id="0",
                owner_level=owner_level,
                starting_position="@latest",
            )
        )
        return client, task

    group = emulator.broker.hub("epoch").consumer_groups["ops"]
    old_client, old_task = consumer("old", 1)
    assert await until(lambda: any(c.epoch == 1 for c in group.receivers.get("0", ())))
    new_client, new_task = consumer("new", 2)
    assert await until(lambda: any(c.epoch == 2 for c in group.receivers.get("0", ())))
    await until(lambda: errors["old"])
    assert errors["old"], "the older epoch consumer was not told it lost the partition"
    assert "stolen" in str(errors["old"][0]) or "epoch" in str(errors["old"][0])
    async with AioProducer.from_connection_string(cs) as producer:
        await producer.send_event(EventData("after-steal"), partition_id="0")
    await until(lambda: received["new"])
    assert received["new"] == ["after-steal"]
    assert received["old"] == []
    assert not errors["new"]
    assert emulator.broker.stats.links_stolen >= 1
    # a lower epoch than the current owner is refused
    late_client, late_task = consumer("late", 1)
    assert await until(lambda: errors["late"])
    assert "higher epoch '2' already exists" in str(errors["late"][0])
    for client, task in ((old_client, old_task), (new_client, new_task), (late_client, late_task)):
        await stop(client, task)


def test_message_size_limit_and_large_frames(emulator):
    cs = conn_str(emulator, "limits")
    with EventHubProducerClient.from_connection_string(cs, **FAST_FAIL) as producer:
        with pytest.raises(EventDataSendError, match="exceeds the limit"):
            producer.send_event(EventData(b"x" * (1536 * 1024)))  # 1.5 MiB
        assert emulator.broker.stats.publish_rejected >= 1  # send_event itself retries once
        with pytest.raises(ValueError):  # the client learnt the 1 MiB link limit from the attach
            producer.create_batch().add(EventData(b"x" * (1536 * 1024)))
        # just under 1 MiB in: accepted; once annotated it exceeds the client's 1 MiB frame size,
        # so it goes back out as a multi-frame transfer
        near_limit = b"y" * (1024 * 1024 - 64)
        frames_in = emulator.broker.stats.multi_frame_in
        producer.send_event(EventData(near_limit))
        assert emulator.broker.stats.multi_frame_in == frames_in + 1  # our frames are 64 KB
    events = sync_read(cs, 1, starting_position="-1", partition_id="0")
    assert len(events) == 1 and events[0].body_as_str().encode() == near_limit
    assert emulator.broker.stats.multi_frame_out >= 1


def test_cli_ready_line_and_persistence_across_restart(tmp_path):
    with EmulatorProcess(
        hubs={"persisted": 2, "other": 1}, persist_dir=tmp_path / "data", key="s3cret", consumer_groups=["ops"]
    ) as process:
        info = process.info
        assert set(info) >= {
            "host",
            "port",
            "connection_string",
            "namespace_connection_string",
            "hubs",
            "key_name",
            "key",
        }
        assert info["hubs"] == {"persisted": 2, "other": 1}
        assert info["key"] == "s3cret"
        assert "EntityPath=persisted" in info["connection_string"]
        assert "EntityPath" not in info["namespace_connection_string"]
        cs = info["connection_string"]
        with EventHubProducerClient.from_connection_string(cs) as producer:
            producer.send_batch([EventData(f"kept {i}") for i in range(5)], partition_id="1")
        before = sync_read(cs, 5, starting_position="-1", partition_id="1")
        process.restart()
        assert process.info["port"] == info["port"]
        with EventHubProducerClient.from_connection_string(cs) as producer:
            props = producer.get_partition_properties("1")
            producer.send_event(EventData("after restart"), partition_id="1")
        after = sync_read(cs, 6, starting_position="-1", partition_id="1")
        returncode = process.stop()
    assert props["last_enqueued_sequence_number"] == 4
    assert [(e.body_as_str(), e.sequence_number, e.offset) for e in after[:5]] == [
        (e.body_as_str(), e.sequence_number, e.offset) for e in before
    ]
    assert after[5].body_as_str() == "after restart" and after[5].sequence_number == 5
    assert returncode == 0


async def test_retention_limit():
    emu = EventHubEmulator({"short": 1}, max_events=5)
    await emu.start()
    try:
        emu.broker.publish_bodies("short", [f"r{i}".encode() for i in range(12)], partition_id="0")
        async with AioProducer.from_connection_string(emu.connection_string()) as producer:
            props = await producer.get_partition_properties("0")
        assert (props["beginning_sequence_number"], props["last_enqueued_sequence_number"]) == (7, 11)
        events = await aio_read(emu.connection_string(), 5, starting_position="-1", partition_id="0")
        assert [e.sequence_number for e in events] == [7, 8, 9, 10, 11]
        assert emu.stats()["events_trimmed"] == 7
    finally:
        await emu.stop()


async def test_throughput_sanity():
    """Not an assertion on speed: prints what the real aio consumer reaches (see the report)."""
    count = 20_000
    with EmulatorProcess(hubs={"bench": 4}, extra_args=["--preload", str(count)]) as process:
        consumer = AioConsumer.from_connection_string(process.connection_string, consumer_group="$Default")
        received = 0
        first: tuple[float, int, float] | None = None
        done = asyncio.Event()

        async def on_event_batch(_context, batch):
            nonlocal received, first
            if first is None:
                first = (time.perf_counter(), len(batch), process.cpu_seconds())
            received += len(batch)
            if received >= count:
                done.set()

        started = time.perf_counter()
        task = asyncio.create_task(consumer.receive_batch(on_event_batch=on_event_batch, starting_position="-1"))
        await asyncio.wait_for(done.wait(), 60)
        ended, cpu_end = time.perf_counter(), process.cpu_seconds()
        await stop(consumer, task)
    assert received == count and first is not None
    steady_events = count - first[1]
    print(
        f"\naio consumer, 4 partitions, {count} x 1 KB: {steady_events / (ended - first[0]):,.0f} events/s once "
        f"flowing ({count / (ended - started):,.0f}/s including connect); "
        f"emulator CPU {(cpu_end - first[2]) * 1e6 / steady_events:.1f} us/event delivered"
    )


def test_partitions_added_while_serving_as_the_service_answers_them(tmp_path):
    """Raising the partition count (an Azure Resource Manager operation on the service, the control endpoint here):
    the management READ answers the new ids at once, new partitions start empty and take events, the old ones keep
    theirs, the count never goes down, and a restart keeps the grown count."""
    with EmulatorProcess(hubs={"growing": 2}, persist_dir=tmp_path / "data") as process:
        cs = process.info["connection_string"]
        with EventHubProducerClient.from_connection_string(cs) as producer:
            producer.send_batch([EventData(f"old {i}") for i in range(3)], partition_id="1")
            assert producer.get_partition_ids() == ["0", "1"]
            assert process.control(hub="growing", partition_count=4) == {"hubs": {"growing": 4}, "added": ["2", "3"]}
            # Same client, no reconnection: the service answers the new count to the next READ.
            assert producer.get_partition_ids() == ["0", "1", "2", "3"]
            new = producer.get_partition_properties("3")
        # The producer client, like the consumer, caches the partition ids it first read: a new one sees "3".
        with EventHubProducerClient.from_connection_string(cs) as producer:
            producer.send_event(EventData("on a new partition"), partition_id="3")
        assert (new["is_empty"], new["beginning_sequence_number"], new["last_enqueued_sequence_number"]) == (
            True, 0, -1)
        assert [e.body_as_str() for e in sync_read(cs, 1, starting_position="-1", partition_id="3")] == [
            "on a new partition"]
        with pytest.raises(ValueError, match="cannot be decreased"):
            process.control(hub="growing", partition_count=3)
        with pytest.raises(ValueError, match="unknown event hub"):
            process.control(hub="nope", partition_count=8)
        assert process.control_state()["hubs"] == {"growing": 4}
        process.restart()  # the command line still says 2
        assert process.info["hubs"] == {"growing": 4}
        with EventHubProducerClient.from_connection_string(cs) as producer:
            assert producer.get_partition_ids() == ["0", "1", "2", "3"]
            assert producer.get_partition_properties("1")["last_enqueued_sequence_number"] == 2
            assert producer.get_partition_properties("3")["last_enqueued_sequence_number"] == 0


async def refusal(cs: str, wait: float = 5, **receive_kwargs) -> str:
    """The error the real consumer reports for a start position (``""`` if none came within ``wait``: a refusal
    comes in the attach's answer, a few milliseconds here)."""
    errors: list[Exception] = []

    async def on_error(_context, error):
        errors.append(error)

    consumer = AioConsumer.from_connection_string(cs, consumer_group="$Default", **FAST_FAIL)
    task = asyncio.create_task(consumer.receive_batch(on_event_batch=lambda *a: asyncio.sleep(0), on_error=on_error,
                                                      partition_id="0", **receive_kwargs))
    await until(lambda: errors, wait)
    await stop(consumer, task)
    return str(errors[0]) if errors else ""


async def test_a_position_past_the_end_is_refused_and_a_recreated_hub_starts_over():
    emu = EventHubEmulator({"gone": 1})
    await emu.start()
    try:
        cs = emu.connection_string("gone")
        async with AioProducer.from_connection_string(cs) as producer:
            await producer.send_batch([EventData(f"e{i}") for i in range(5)])
        events = await aio_read(cs, 5, starting_position="-1", partition_id="0")
        last = events[-1]
        # At the end (a checkpoint of the last event, or the next sequence number): valid, the reader waits.
        valid = await asyncio.gather(
            refusal(cs, 2, starting_position=last.offset),
            refusal(cs, 2, starting_position=last.sequence_number),
            refusal(cs, 2, starting_position=last.sequence_number + 1, starting_position_inclusive=True))
        assert valid == ["", "", ""]
        # Past it: refused with the service's condition and words (azure-sdk-for-python#30931).
        text = await refusal(cs, starting_position=10)
        assert "The supplied sequence number '10' is invalid. The last sequence number in the system is '4'" in text
        text = await refusal(cs, starting_position=str(int(last.offset) + 1))
        assert f"The supplied offset '{int(last.offset) + 1}' is invalid. The last offset in the system is " \
               f"'{last.offset}'" in text

        before = emu.broker.hub("gone").created_at
        emu.recreate_hub("gone")
        async with AioConsumer.from_connection_string(cs, consumer_group="$Default") as consumer:
            partition = await consumer.get_partition_properties("0")
            hub = await consumer.get_eventhub_properties()
        assert partition["is_empty"] and partition["last_enqueued_sequence_number"] == -1
        assert hub["partition_ids"] == ["0"] and emu.broker.hub("gone").created_at > before
        # The old checkpoint now lies past the end; the new hub numbers its events from 0.
        text = await refusal(cs, starting_position=last.offset)
        assert f"The supplied offset '{last.offset}' is invalid. The last offset in the system is '-1'" in text
        async with AioProducer.from_connection_string(cs) as producer:
            await producer.send_batch([EventData("new")])
        events = await aio_read(cs, 1, starting_position="-1", partition_id="0")
        assert [(e.body_as_str(), e.sequence_number, e.offset) for e in events] == [("new", 0, "0")]
    finally:
        await emu.stop()


async def test_an_idle_timeout_of_its_own_spares_the_real_client_and_closes_a_silent_peer():
    from emulators.eventhub import frames
    from emulators.eventhub.codec import UInt

    emu = EventHubEmulator({"quiet": 1}, idle_timeout=1.0)
    await emu.start()
    try:
        cs = emu.connection_string("quiet")
        task = asyncio.create_task(aio_read(cs, 1, starting_position="@latest", partition_id="0"))
        group = emu.broker.hub("quiet").consumer_groups["$default"]
        assert await until(lambda: group.receivers.get("0"))
        connections = emu.broker.stats.connections_total
        await asyncio.sleep(4)  # a quiet partition for four idle timeouts: the client beats at half of it
        assert emu.broker.stats.connections_total == connections and group.receivers.get("0")
        async with AioProducer.from_connection_string(cs) as producer:
            await producer.send_event(EventData("late"))
        assert [e.body_as_str() for e in await task] == ["late"]
        # A peer that says nothing after its open is closed, with the service's words.
        reader, writer = await asyncio.open_connection(emu.host, emu.port)
        writer.write(frames.AMQP_HEADER + frames.frame(0, frames.OPEN, ["silent", None, UInt(65536)]))
        data = await asyncio.wait_for(reader.read(-1), 10)  # until the emulator closes the socket
        writer.close()
        assert b"was inactive for more than the allowed 1000 milliseconds" in data
    finally:
        await emu.stop()
