"""Partitions added to a running hub, and across a restart with `starting_position: latest` (emulator + Azurite):
what reached a partition while the trigger was stopped is read, whether the partition is new or quiet."""

from __future__ import annotations

import orjson
import pytest

from azure_eventhub import metrics
from azure_eventhub.consumer import Settings
from connectors.trigger import CollectorTrigger
from tests.eventhub_helpers import CONTAINER, EventHubStack, InProcessTrigger, compare, envelopes, ids_of, \
    records_with_ids, wait_until


pytestmark = pytest.mark.usefixtures("reset_fatal")


def start(stack: EventHubStack, config: dict, monkeypatch) -> InProcessTrigger:
    runner = InProcessTrigger(stack.env(config), monkeypatch)
    runner.trigger.settings = Settings(partition_check_interval=0.5, backlog_interval=0.5)
    return runner.start()


def first_start(stack: EventHubStack) -> dict:
    blobs = [blob["name"] for blob in stack.azurite.admin.list_blobs(CONTAINER)]
    [name] = [name for name in blobs if name.endswith("/partitions")]
    blob = stack.azurite.admin.service.get_blob_client(CONTAINER, name)
    return orjson.loads(blob.download_blob().readall())


def test_partitions_added_while_running_and_while_stopped_are_read_from_their_beginning(tmp_path, monkeypatch):
    with EventHubStack(tmp_path / "stack", partitions=2) as stack:
        config = stack.config(starting_position="latest", load_balancing_interval=1)
        runner = start(stack, config, monkeypatch)
        try:
            assert wait_until(lambda: metrics.owned_partitions._value.get() == 2, 60)
            assert metrics.partitions._value.get() == 2
            stack.emulator.control(partition_count=4)
            # Sent before the trigger noticed the new partitions: read anyway, `latest` notwithstanding.
            while_running = records_with_ids(200, "grown")
            for partition in ("2", "3"):
                stack.publish(envelopes(while_running[int(partition) % 2::2], 20), partition_id=partition)
            assert wait_until(lambda: set(ids_of(while_running)) <= set(stack.delivered_ids()), 60), \
                len(stack.delivered_ids())
            assert metrics.partitions._value.get() == 4 and metrics.owned_partitions._value.get() == 4
        finally:
            runner.stop()
        assert runner.error is None and CollectorTrigger.fatal_error is None
        recorded = first_start(stack)
        assert recorded["partition_ids"] == ["0", "1"] and recorded["started_at"]  # the first start's partitions
        assert any("now has 4 partitions (was 2)" in log["message"] for log in stack.logs())

        # Grown again while stopped: partitions 4 and 5 have no checkpoint and were not there at the first start.
        stack.emulator.control(partition_count=6)
        while_stopped = records_with_ids(300, "stopped")
        for partition in ("2", "3", "4", "5"):
            stack.publish(envelopes(while_stopped[int(partition) % 4::4], 20), partition_id=partition)
        # Partition 0 was there at the first start and, quiet, has no checkpoint: `latest` means "since the first
        # start", so what reached it while the trigger was stopped is read too (not skipped by a new `@latest`).
        quiet = records_with_ids(20, "quiet")
        stack.publish(envelopes(quiet, 20), partition_id="0")
        runner = start(stack, config, monkeypatch)
        try:
            assert wait_until(lambda: set(ids_of(while_stopped + quiet)) <= set(stack.delivered_ids()), 60)
            assert wait_until(lambda: metrics.owned_partitions._value.get() == 6, 30)
        finally:
            runner.stop()
        assert runner.error is None
        assert any("Partitions 2, 3, 4, 5 were added" in log["message"] for log in stack.logs())
        result = compare(ids_of(while_running + while_stopped + quiet), stack.delivered_ids())
        assert result["lost"] == 0 and result["duplicates"] == 0, result
