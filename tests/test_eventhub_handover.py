"""A partition handed over under load: the instance that lost it writes no checkpoint for it afterwards.

Two `python main.py` consumers, each with its own data path and its own tap in front of Azurite (who claimed,
checkpointed and read the owner of which partition, in what order), and a runtime that holds its answers while the partitions move, so that
batches of a partition are still unconfirmed when it moves: their acks arrive after the new owner claimed it, every
time (a slow runtime alone left it to chance: the first consumer had sometimes confirmed them all already).
"""

from __future__ import annotations

from collections import Counter

from urllib.request import urlopen

from benchmarks.reliability.metrics import counters, total
from tests.eventhub_helpers import EventHubStack, compare, ids_of, records_with_ids, terminate, wait_until
from tests.storage_tap import StorageTap, handovers, late_checkpoints

DROPPED = "symphony_module_microsoft_eventhub_checkpoints_dropped_total"
# Each delivery request meanwhile is answered this long after it came (far below the forwarder's read timeout).
HOLD_SECONDS = 20


def split_evenly(owners: dict[str, str]) -> bool:
    counts = Counter(owner for owner in owners.values() if owner)
    return len(owners) == 4 and sorted(counts.values()) == [2, 2]


def remember_environments(stack: EventHubStack) -> list[dict[str, str]]:
    """The environment of each process the stack starts from now on (for its metrics port)."""
    environments: list[dict[str, str]] = []
    build = stack.env

    def env(*args, **kwargs) -> dict[str, str]:
        environments.append(build(*args, **kwargs))
        return environments[-1]

    stack.env = env  # type: ignore[method-assign]
    return environments


def dropped_checkpoints(environment: dict[str, str]) -> float:
    with urlopen(f"http://127.0.0.1:{environment['METRICS_PORT']}/metrics", timeout=5) as response:
        return total(counters(response.read().decode()), DROPPED)


def test_acks_arriving_after_a_handover_write_no_checkpoint_for_the_lost_partition(tmp_path):
    with EventHubStack(tmp_path / "stack", partitions=4) as stack:
        records = records_with_ids(12000, "h")
        stack.publish_envelopes(records, per_envelope=5)
        # Batches of records of every partition, two in flight: the acks of a partition come seconds after its read.
        stack.runtime.control(latency_ms=1500)
        taps = [StorageTap(stack.azurite.account_url).start() for _ in range(2)]
        try:
            configs = [stack.config(load_balancing_interval=1, batch_max_events=500,
                                    storage_connection_string=tap.connection_string(stack.azurite.connection_string))
                       for tap in taps]
            environments = remember_environments(stack)
            first = stack.start_process(configs[0], log_name="first", data_path=tmp_path / "first")
            assert wait_until(lambda: stack.delivered_count() >= 300 or first.poll() is not None, 60)
            # From now until the partitions moved, batches are confirmed HOLD_SECONDS after they were sent: the first
            # consumer always has some of every partition unconfirmed when the second one takes two of them.
            stack.runtime.control(hang_seconds=HOLD_SECONDS)
            second = stack.start_process(configs[1], log_name="second", data_path=tmp_path / "second")
            assert wait_until(lambda: split_evenly(stack.owners()), 60, 0.5), stack.owners()
            stack.runtime.control(hang_seconds=0)
            assert wait_until(lambda: len(set(stack.delivered_ids())) >= len(records), 120, 0.5)
            dropped = dropped_checkpoints(environments[0])
            assert terminate(second) == 0 and terminate(first) == 0
            moved = handovers(taps)  # after the stops: a partition claimed back meanwhile ends its handover
        finally:
            for tap in taps:
                tap.stop()
        # The second consumer took two partitions from the first one, while it was reading them...
        assert len([h for h in moved if h.loser is taps[0]]) >= 2, moved
        # ...which wrote no checkpoint of them afterwards, although batches of them were still being confirmed.
        # Judged by the order of its own requests: none after an ownership read that named the new owner.
        assert late_checkpoints(moved) == []
        assert dropped > 0  # acks of the lost partitions did arrive after the handover: the case was exercised
        result = compare(ids_of(records), stack.delivered_ids())
        assert result["lost"] == 0, result
