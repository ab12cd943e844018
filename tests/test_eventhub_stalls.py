"""Never silently stuck (issue 16, Event Hubs): connections that go silent without closing, a checkpoint past the
end of its partition, a reading that stops progressing. The real clients against the emulator and Azurite, with a
fault proxy (``emulators.netfault``) between the trigger and a server."""

from __future__ import annotations

import time

import pytest

from emulators.netfault import FaultProxy
from tests.eventhub_helpers import EventHubStack, compare, ids_of, records_with_ids, terminate, wait_until


@pytest.fixture
def stack(tmp_path):
    with EventHubStack(tmp_path / "stack", partitions=4) as stack:
        yield stack


def through(proxy: FaultProxy, connection_string: str, port: int) -> str:
    """The connection string with its endpoint's port replaced by the proxy's."""
    assert f":{port};" in connection_string or f":{port}/" in connection_string
    return connection_string.replace(f":{port};", f":{proxy.port};").replace(f":{port}/", f":{proxy.port}/")


def all_delivered(stack: EventHubStack, records: list[bytes], proc) -> bool:
    wanted = set(ids_of(records))
    return wanted <= set(stack.delivered_ids()) or proc.poll() is not None


def test_frozen_hub_connections_are_dropped_and_reopened_within_a_minute(stack):
    """Every open AMQP connection goes silent for good (no byte, no FIN, no RST: a NAT that dropped its state):
    the client's idle timeout closes them, the partitions are read again on new connections, nothing is lost."""
    port = stack.emulator.info["port"]
    with FaultProxy("127.0.0.1", port) as proxy:
        config = stack.config(hub_connection_string=through(proxy, stack.connection_string, port))
        proc = stack.start_process(config)
        before = records_with_ids(400, "before")
        stack.publish_envelopes(before, per_envelope=10)
        assert wait_until(lambda: all_delivered(stack, before, proc), 60, 0.2)
        assert proc.poll() is None
        frozen = proxy.freeze()
        assert frozen >= 4  # the four partitions' connections at least
        frozen_at = time.monotonic()
        after = records_with_ids(400, "after")
        stack.publish_envelopes(after, per_envelope=10)  # straight to the hub, not through the proxy
        assert wait_until(lambda: all_delivered(stack, after, proc), 90, 0.2), \
            f"{len(set(ids_of(after)) - set(stack.delivered_ids()))} records not delivered after the freeze"
        recovered_s = time.monotonic() - frozen_at
        assert terminate(proc) == 0
    result = compare(ids_of(before + after), stack.delivered_ids())
    assert result["lost"] == 0, result
    assert recovered_s < 60, recovered_s
    print(f"frozen connections: recovered in {recovered_s:.1f} s, {result}")


def warnings_with(stack: EventHubStack, words: str) -> list[str]:
    return [log["message"] for log in stack.logs() if log["level"] == "warning" and words in log["message"]]


def test_a_hub_recreated_under_a_running_trigger_is_read_from_its_beginning(stack):
    """The hub is deleted and created again under the same name: its sequence numbers start over, below every
    checkpoint. The trigger says so once per partition and reads the new hub from its beginning."""
    proc = stack.start_process(stack.config(load_balancing_interval=2))
    old = records_with_ids(400, "old")
    stack.publish_envelopes(old, per_envelope=5)  # 20 events per partition
    assert wait_until(lambda: all_delivered(stack, old, proc), 60, 0.2)
    assert wait_until(lambda: min(stack.checkpoints().values(), default=0) >= 19, 30, 0.2)
    stack.emulator.control(recreate=True)
    new = records_with_ids(80, "new")
    stack.publish_envelopes(new, per_envelope=10)  # 2 events per partition: far below the checkpoints
    assert wait_until(lambda: all_delivered(stack, new, proc), 90, 0.2), \
        f"{len(set(ids_of(new)) - set(stack.delivered_ids()))} records of the new hub not delivered"
    assert wait_until(lambda: stack.checkpoints() == {str(p): 1 for p in range(4)}, 30, 0.2), stack.checkpoints()
    assert terminate(proc) == 0
    told = warnings_with(stack, "past the end of the partition")
    assert sorted(told) == sorted(set(told)) and len(told) == 4, told  # once per partition
    assert all("positioned at offset" in line or "positioned at sequence number" in line for line in told), told
    result = compare(ids_of(old + new), stack.delivered_ids())
    assert result["lost"] == 0, result


def test_a_trigger_restarted_after_the_hub_was_recreated_reads_it_from_its_beginning(stack):
    config = stack.config()
    proc = stack.start_process(config)
    old = records_with_ids(400, "old")
    stack.publish_envelopes(old, per_envelope=5)
    assert wait_until(lambda: all_delivered(stack, old, proc), 60, 0.2)
    assert wait_until(lambda: min(stack.checkpoints().values(), default=0) >= 19, 30, 0.2)
    assert terminate(proc) == 0
    stack.emulator.control(recreate=True)
    new = records_with_ids(80, "new")
    stack.publish_envelopes(new, per_envelope=10)
    restarted_at = time.monotonic()
    proc = stack.start_process(config)
    assert wait_until(lambda: all_delivered(stack, new, proc), 60, 0.2), \
        f"{len(set(ids_of(new)) - set(stack.delivered_ids()))} records of the new hub not delivered"
    read_s = time.monotonic() - restarted_at
    assert wait_until(lambda: stack.checkpoints() == {str(p): 1 for p in range(4)}, 30, 0.2), stack.checkpoints()
    assert terminate(proc) == 0
    told = warnings_with(stack, "past the end of the partition")
    assert len(told) == 4 and all("at sequence number 19" in line and "last sequence number is 1" in line
                                  for line in told), told
    result = compare(ids_of(old + new), stack.delivered_ids())
    assert result["lost"] == 0 and result["duplicates"] == 0, result
    print(f"restarted after a recreated hub: new records read in {read_s:.1f} s")


def test_a_partition_that_stops_progressing_is_told_and_its_receiver_reopened(stack):
    """The receivers stop delivering while their connections stay healthy (heartbeats flow: the idle timeout
    sees nothing wrong). The stall watch sees the hub hold more than was read, warns once per partition after
    ``stall_seconds`` and reopens the receivers, which read on from their checkpoints."""
    proc = stack.start_process(stack.config(load_balancing_interval=2, stall_seconds=6))
    before = records_with_ids(200, "before")
    stack.publish_envelopes(before, per_envelope=5)
    assert wait_until(lambda: all_delivered(stack, before, proc), 60, 0.2)
    assert stack.emulator.control(stall_receivers=True)["stalled"] == 4
    stalled_at = time.monotonic()
    after = records_with_ids(200, "after")
    stack.publish_envelopes(after, per_envelope=5)
    assert wait_until(lambda: all_delivered(stack, after, proc), 60, 0.2), \
        f"{len(set(ids_of(after)) - set(stack.delivered_ids()))} records not delivered after the stall"
    recovered_s = time.monotonic() - stalled_at
    assert terminate(proc) == 0
    stalled = warnings_with(stack, "has made no progress for")
    assert len(stalled) == 4 and all("reopening its receiver" in line for line in stalled), stalled
    again = [log["message"] for log in stack.logs()
             if "progresses again after reopening its receiver" in log["message"]]
    assert len(again) == 4, again
    result = compare(ids_of(before + after), stack.delivered_ids())
    assert result["lost"] == 0 and result["duplicates"] == 0, result
    print(f"stalled receivers: recovered in {recovered_s:.1f} s")


def test_frozen_storage_connections_are_given_up_and_checkpoints_saved_again(stack):
    """The checkpoint store's connections go silent for good: its requests time out (read timeout), are tried
    again on new connections, and the checkpoints of what was delivered meanwhile are saved within a minute."""
    port = stack.azurite.port
    with FaultProxy("127.0.0.1", port) as proxy:
        storage = through(proxy, stack.azurite.connection_string, port)
        proc = stack.start_process(stack.config(storage_connection_string=storage))
        before = records_with_ids(200, "before")
        stack.publish_envelopes(before, per_envelope=5)
        assert wait_until(lambda: all_delivered(stack, before, proc), 60, 0.2)
        assert wait_until(lambda: stack.checkpoints() == {str(p): 9 for p in range(4)}, 30, 0.2)
        assert proxy.freeze() >= 1
        frozen_at = time.monotonic()
        after = records_with_ids(200, "after")
        stack.publish_envelopes(after, per_envelope=5)
        assert wait_until(lambda: all_delivered(stack, after, proc), 30, 0.2)  # delivery does not wait for the store
        assert wait_until(lambda: stack.checkpoints() == {str(p): 19 for p in range(4)}, 90, 0.5), stack.checkpoints()
        saved_s = time.monotonic() - frozen_at
        assert terminate(proc) == 0
    result = compare(ids_of(before + after), stack.delivered_ids())
    assert result["lost"] == 0 and result["duplicates"] == 0, result
    assert saved_s < 60, saved_s
    print(f"frozen storage connections: checkpoints saved again in {saved_s:.1f} s")


def test_the_heartbeat_beats_while_the_hub_hangs_and_the_monitor_says_so_once(stack, monkeypatch):
    """Every byte to and from the hub is held (a blackhole) for longer than a management request may wait: the
    heartbeat beats from its own task all along, the failing partition reads are said once and their end once."""
    from azure_eventhub.consumer import Settings
    from tests.eventhub_helpers import InProcessTrigger

    port = stack.emulator.info["port"]
    with FaultProxy("127.0.0.1", port) as proxy:
        config = stack.config(hub_connection_string=through(proxy, stack.connection_string, port))
        records = records_with_ids(40, "b")
        stack.publish_envelopes(records, per_envelope=10)
        runner = InProcessTrigger(stack.env(config), monkeypatch)
        runner.trigger.settings = Settings(backlog_interval=1, partition_check_interval=1)
        runner.start()
        try:
            assert wait_until(lambda: stack.delivered_count() >= 40, 60)
            proxy.blackhole(True)
            beats, longest_gap, last = set(), 0.0, time.monotonic()

            def failing_said() -> bool:
                nonlocal longest_gap, last
                beat = runner.trigger._last_heartbeat
                if beat not in beats:
                    beats.add(beat)
                    now = time.monotonic()
                    longest_gap, last = max(longest_gap, now - last), now
                return any("properties failed" in log["message"] for log in stack.logs())

            # A request waits 15 s before it fails: the beats go on meanwhile, and after.
            assert wait_until(failing_said, 60, 0.1)
            until = time.monotonic() + 5
            wait_until(lambda: failing_said() and time.monotonic() > until, 10, 0.1)
            proxy.blackhole(False)
            assert wait_until(lambda: any("properties are read again" in log["message"] for log in stack.logs()), 60)
        finally:
            runner.stop()
    assert runner.error is None
    assert longest_gap < 8, longest_gap  # a shared beat would have waited the 15 s of a hanging request
    said = [log["message"] for log in stack.logs() if "properties failed" in log["message"]]
    assert len(said) == 1, said


def test_events_that_leave_the_hub_before_they_are_read_are_told_as_lost(tmp_path):
    """The trigger stopped for longer than the hub keeps events: at its restart it says how many of each
    partition left unread (and counts them), once, then reads what is left."""
    with EventHubStack(tmp_path / "stack", partitions=2, emulator_args={"max_events": 10}) as stack:
        config = stack.config()
        proc = stack.start_process(config)
        first = records_with_ids(20, "first")
        stack.publish_envelopes(first, per_envelope=1)  # 10 events per partition: all kept
        assert wait_until(lambda: all_delivered(stack, first, proc), 60, 0.2)
        assert wait_until(lambda: stack.checkpoints() == {"0": 9, "1": 9}, 30, 0.2), stack.checkpoints()
        assert terminate(proc) == 0
        gone = records_with_ids(30, "gone")
        stack.publish_envelopes(gone, per_envelope=1)  # 15 more per partition: the hub keeps the last 10
        proc = stack.start_process(config)
        kept = gone[-20:]
        assert wait_until(lambda: all_delivered(stack, kept, proc), 60, 0.2)
        told = lambda: [log["message"] for log in stack.logs() if "before this trigger read them" in log["message"]]
        assert wait_until(lambda: len(told()) >= 2, 60, 0.2), told()
        assert terminate(proc) == 0
    assert sorted(told()) == sorted(f"Partition {p}: 5 events (sequence numbers 10 to 14) left the event hub (its "
                                    "retention) before this trigger read them: they are lost. Read faster (more "
                                    "instances sharing the storage container) or raise the event hub's retention"
                                    for p in ("0", "1"))


def test_when_reopening_the_receivers_does_not_help_the_run_restarts_with_a_new_client(stack, monkeypatch):
    """The first step cannot act (as with a client whose internals moved): the second one restarts the run, whose
    new client reads on from the checkpoints."""
    from azure_eventhub import consumer as consumer_module
    from tests.eventhub_helpers import InProcessTrigger

    monkeypatch.setattr(consumer_module, "reopen_partition", lambda client, partition_id: False)
    runner = InProcessTrigger(stack.env(stack.config(load_balancing_interval=1, stall_seconds=5)), monkeypatch)
    runner.start()
    try:
        before = records_with_ids(80, "before")
        stack.publish_envelopes(before, per_envelope=5)
        assert wait_until(lambda: set(ids_of(before)) <= set(stack.delivered_ids()), 60, 0.2)
        assert stack.emulator.control(stall_receivers=True)["stalled"] == 4
        after = records_with_ids(80, "after")
        stack.publish_envelopes(after, per_envelope=5)
        assert wait_until(lambda: set(ids_of(after)) <= set(stack.delivered_ids()), 90, 0.2)
        assert runner.trigger.is_alive()
    finally:
        runner.stop()
    assert runner.error is None
    messages = [log["message"] for log in stack.logs()]
    assert any("Restarting the Event Hubs run with a new client" in message for message in messages), messages
    assert any("restarting the run with a new client" in message and "no progress" in message
               for message in messages), messages
    result = compare(ids_of(before + after), stack.delivered_ids())
    assert result["lost"] == 0 and result["duplicates"] == 0, result


def test_the_time_until_unread_events_leave_the_hub_is_told_while_it_trims(tmp_path, monkeypatch):
    """The reading is stuck while the hub keeps receiving and trimming (it keeps 200 events): the pace at which its
    first retained event closes in on the reading gives the time left, warned before the events are gone."""
    from azure_eventhub.consumer import Settings
    from connectors.metrics import gauge_values
    from connectors.progress import seconds_until_loss
    from tests.eventhub_helpers import InProcessTrigger

    with EventHubStack(tmp_path / "stack", partitions=1, emulator_args={"max_events": 200}) as stack:
        runner = InProcessTrigger(stack.env(stack.config(stall_seconds=3600)), monkeypatch)
        runner.trigger.settings = Settings(backlog_interval=1)
        runner.start()
        try:
            first = records_with_ids(50, "first")
            stack.publish_envelopes(first, per_envelope=1)
            assert wait_until(lambda: set(ids_of(first)) <= set(stack.delivered_ids()), 60, 0.2)
            assert stack.emulator.control(stall_receivers=True)["stalled"] == 1

            def told() -> list[str]:
                return [log["message"] for log in stack.logs() if "leaves the source in" in log["message"]]

            sent = 0
            deadline = time.monotonic() + 60
            while not told() and time.monotonic() < deadline:  # 40 events a second: trimming starts after ~4 s
                stack.publish_envelopes(records_with_ids(20, f"more{sent}"), per_envelope=1)
                sent += 1
                time.sleep(0.5)
            left = gauge_values(seconds_until_loss)
        finally:
            runner.stop()
    assert told(), "no warning of the coming loss"
    assert "Partition 0: the oldest record not delivered yet leaves the source in" in told()[0], told()
    assert len(told()) == 1, told()
    assert left and 0 <= min(left.values()) < 3600, left


def test_a_quiet_partition_started_after_its_last_event_is_not_taken_for_a_stalled_one(stack):
    """Started at a time after the events already in the hub (as `latest` does, a minute before the first start),
    with nothing new: what the partitions held is not owed, so no stall is said and nothing is reopened; events
    published after the start time are read."""
    from datetime import UTC, datetime, timedelta

    old = records_with_ids(80, "old")
    stack.publish_envelopes(old, per_envelope=10)
    start = datetime.now(UTC) + timedelta(seconds=3)
    proc = stack.start_process(stack.config(starting_position=start.isoformat(), stall_seconds=5,
                                            load_balancing_interval=2))
    assert wait_until(lambda: any("Reading partition" in log["message"] for log in stack.logs()), 60, 0.2)
    time.sleep(20)  # four stall periods: the monitor reads every partition's properties several times in each
    assert proc.poll() is None
    assert warnings_with(stack, "no progress") == []
    new = records_with_ids(80, "new")
    stack.publish_envelopes(new, per_envelope=10)
    assert wait_until(lambda: all_delivered(stack, new, proc), 60, 0.2)
    assert terminate(proc) == 0
    assert not set(ids_of(old)) & set(stack.delivered_ids())
