"""Rebalancing: two Event Hubs consumers on one consumer group and one checkpoint container share the partitions;
one is killed (SIGKILL) while records flow, the other takes its partitions over, the killed one is restarted and
takes its share back. Nothing may be lost. Duplicates are counted, not bounded: besides what the killed one had
in flight, every partition that changes hands (the first split, the takeover, the share taken back) is read again
from its last checkpoint by its new owner.

``recovery_s``: from the kill until every record published before it was delivered and checkpointed.
"""

from __future__ import annotations

import time
from collections import Counter

from benchmarks.reliability.context import Context
from benchmarks.reliability.faults import RECOVERY_LIMIT_S, _checkpointed
from benchmarks.reliability.kills import BATCH, LANDED_LIMIT_S, in_flight
from benchmarks.reliability.processes import output_counts, runtime_counts
from benchmarks.reliability.stacks import EventHubStack, reconcile, wait_covered
from emulators.process import wait_until
from tests.eventhub_helpers import records_with_ids

LOAD_BALANCING_S = 2  # ownership then expires after 6 rounds: 12 s


def _owners(stack: EventHubStack) -> Counter:
    try:
        return Counter(owner for owner in stack.stack.owners().values() if owner)
    except Exception:  # noqa: BLE001 - listed again at the next poll
        return Counter()


def _split(stack: EventHubStack, owners: int) -> bool:
    counts = _owners(stack)
    return len(counts) == owners and sum(counts.values()) == stack.stack.partitions and (
        owners == 1 or max(counts.values()) - min(counts.values()) <= 1)


def rebalancing(ctx: Context) -> dict:
    rng = ctx.rng("eventhub_rebalancing")
    failures: list[str] = []
    with EventHubStack(ctx, "eventhub_rebalancing") as stack:
        stack.feed.send_records(records_with_ids(ctx.scale.rebalance_records, "r"))
        stack.runtime_control(latency_ms=ctx.scale.kill_latency_ms)
        config = stack.config(load_balancing_interval=LOAD_BALANCING_S, batch_max_events=BATCH)
        # Each instance its own data path, as the README asks; they share the container in Azurite.
        spawn = lambda name: stack.spawn(config, name=name, data_path=stack.work / name)  # noqa: E731
        consumers = {"a": spawn("consumer-a"), "b": spawn("consumer-b")}
        stack.start_stream(ctx.scale.stream_per_s)
        if not wait_until(lambda: _split(stack, 2), 90, 0.5):
            failures.append(f"the two consumers did not share the partitions: {dict(_owners(stack))}")
        time.sleep(rng.uniform(0.5, 4.0))
        victim = rng.choice(sorted(consumers))
        consumers[victim].scrape()
        consumers[victim].kill()
        killed_at = time.monotonic()
        counted = in_flight(stack)
        pending = counted[0] if counted is not None else None
        if pending is None:
            failures.append(f"the runtime still handled requests received before the kill {LANDED_LIMIT_S:.0f} s "
                            "after it")
        snapshot = stack.expected()
        survivor = consumers["b" if victim == "a" else "a"]
        takeover = wait_until(lambda: _split(stack, 1), 60, 0.5)
        takeover_s = round(time.monotonic() - killed_at, 1) if takeover else None
        if not takeover:
            failures.append(f"the survivor did not take every partition over: {dict(_owners(stack))}")
        recovered = wait_covered(stack, snapshot, RECOVERY_LIMIT_S, also=_checkpointed(stack, sum(snapshot.values())),
                                 processes=[survivor])
        recovery_s = round(time.monotonic() - killed_at, 2) if recovered is not None else None
        consumers[victim] = spawn(f"consumer-{victim}-restarted")
        restarted_at = time.monotonic()
        rebalanced = wait_until(lambda: _split(stack, 2), 90, 0.5)
        rebalanced_s = round(time.monotonic() - restarted_at, 1) if rebalanced else None
        if not rebalanced:
            failures.append(f"the restarted consumer did not take its share back: {dict(_owners(stack))}")
        stack.stop_stream()
        final = stack.expected()
        if wait_covered(stack, final, 90, also=_checkpointed(stack, sum(final.values())),
                        processes=list(consumers.values())) is None:
            failures.append("not everything was delivered and checkpointed at the end")
        codes = []
        for process in consumers.values():
            process.scrape()
            codes.append(process.terminate()[0])
        result = reconcile(final, stack.reader.refresh().keys, stack.optional(), stack.set_aside())
        result.update(kills=1, recovery_s=recovery_s, takeover_s=takeover_s, rebalanced_s=rebalanced_s,
                      in_flight_at_kills=pending, exit_codes=codes,
                      **output_counts(stack.processes), **runtime_counts(stack.runtime_logs()))
    if recovery_s is None or recovery_s > RECOVERY_LIMIT_S:
        failures.append(f"records published before the kill were not all delivered within {RECOVERY_LIMIT_S:.0f} s")
    return judge(result, failures, exit_codes=True)
