"""Scale-out: two `python main.py` consumers share 4 partitions through Azurite; a killed one hands over, 0 lost."""

from __future__ import annotations

import threading
from collections import Counter

from tests.eventhub_helpers import EventHubStack, compare, ids_of, records_with_ids, terminate, wait_until


def split_evenly(owners: dict[str, str]) -> bool:
    counts = Counter(owner for owner in owners.values() if owner)
    return len(owners) == 4 and sorted(counts.values()) == [2, 2]


def test_two_consumers_split_partitions_and_a_killed_one_hands_over(tmp_path):
    with EventHubStack(tmp_path / "stack", partitions=4) as stack:
        config = stack.config(load_balancing_interval=1)  # ownership expires after 6 rounds: 6 s
        first, second = records_with_ids(2000, "a"), records_with_ids(2000, "b")
        stack.publish_envelopes(first, per_envelope=20)
        consumers = [stack.start_process(config, log_name="consumer") for _ in range(2)]
        split: dict[str, str] = {}  # the owners as seen when they were split evenly: both consumers' ids
        assert wait_until(lambda: split_evenly(split.update(stack.owners()) or split), 90, 0.5), split
        assert wait_until(lambda: stack.delivered_count() >= 2000, 60)

        # More events arrive while one consumer dies without a chance to checkpoint or release anything.
        publisher = threading.Thread(target=stack.publish_envelopes, args=(second, 10))
        publisher.start()
        victim, survivor = consumers
        victim.kill()
        publisher.join(60)
        assert wait_until(lambda: len(set(stack.delivered_ids())) >= 4000 or survivor.poll() is not None, 90, 0.5)
        # The survivor took the dead one's partitions once their ownership expired.
        assert wait_until(lambda: len(set(stack.owners().values())) == 1, 30, 0.5), stack.owners()
        assert set(stack.owners().values()) < set(split.values())
        assert terminate(survivor) == 0

        result = compare(ids_of(first + second), stack.delivered_ids())
        print("scale-out:", result)
        assert result["lost"] == 0, result
        # Only what a moved partition's former owner delivered past its last checkpoint (written at most a second
        # apart) may come twice: at the split, the two partitions taken over (500 records each of `first`, read
        # by whichever consumer claimed them first), and at the kill, the victim's two (1,000 of `first` and
        # 1,000 of `second`).
        assert result["duplicates"] <= 1000 + 2000, result
        logs = [(tmp_path / "stack" / f"consumer-{i}.log").read_text() for i in range(2)]
        assert all("Reading partition" in log for log in logs)
