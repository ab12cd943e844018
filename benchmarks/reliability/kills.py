"""Kills and graceful stops on a backlog: SIGKILL (or SIGTERM) at random moments, restart, finish; then count.

The runtime stub answers slowly (``Scale.kill_latency_ms``) and batches are small (``BATCH``), so the backlog
takes a while and every kill lands while records are in flight. Random moments are of two kinds: a delay after
the process started (imports, token, probes, first listing) or a point of progress through the backlog.

Duplicates are bounded by what was in flight at each kill: records the runtime confirmed but the trigger had not
checkpointed yet (Office 365: the blob ledger; Event Hubs: the checkpoints in Azurite), read from outside once
the runtime stub answered every request it had received at the kill.
"""

from __future__ import annotations

import math
import time

from benchmarks.reliability.context import Context
from benchmarks.reliability.processes import TriggerProcess, output_counts, runtime_counts
from benchmarks.reliability.stacks import EventHubStack, O365Stack, Stack, reconcile, wait_covered
from benchmarks.reliability.verdict import finish
from emulators.process import wait_until
from tests.eventhub_helpers import records_with_ids

BATCH = 500
RECORDS_PER_BLOB = 50
# A killed consumer keeps its partitions until their ownership expires (6 load-balancing rounds, 3 minutes by
# default): 1 s rounds let the restarted one take them over within seconds.
EVENTHUB_CONFIG = {"load_balancing_interval": 1}
STARTUP_KILLS = 0.25  # share of kills aimed at start-up rather than at a point of progress
PROGRESS_SPAN = 0.5  # share of the backlog the points of progress are spread over
STOP_LIMIT_S = 10.0
LANDED_LIMIT_S = 20.0  # for the requests of a killed run to be answered by the runtime stub


def backlog_stack(ctx: Context, trigger: str, name: str) -> Stack:
    records = ctx.scale.kill_records
    if trigger == "o365":
        blobs = math.ceil(records / (5 * RECORDS_PER_BLOB))
        stack: Stack = O365Stack(ctx, name, "--blobs", str(blobs), "--records-per-blob", str(RECORDS_PER_BLOB))
    else:
        stack = EventHubStack(ctx, name)
    try:
        if isinstance(stack, EventHubStack):
            stack.feed.send_records(records_with_ids(records, "k"))
        stack.runtime_control(latency_ms=ctx.scale.kill_latency_ms)
    except BaseException:
        stack.close()  # the scenario's `with` has not started yet
        raise
    return stack


def watch(process: TriggerProcess, stack: Stack, until, timeout: float) -> float | None:
    """Poll until ``until()`` or the process ends; seconds from the start to its first new delivery, if any."""
    before = stack.reader.refresh().total
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.alive:
        if first is None and stack.reader.refresh().total > before:
            first = round(time.monotonic() - process.started, 2)
        if until():
            break
        time.sleep(0.05)
    return first


def kill_config(stack: Stack) -> dict:
    extra = EVENTHUB_CONFIG if isinstance(stack, EventHubStack) else {}
    return stack.config(batch_max_events=BATCH, **extra)


def unconfirmed(stack: Stack) -> int:
    """Records the runtime confirmed that the trigger has not checkpointed: it reads them again."""
    return max(0, stack.reader.refresh().unique - stack.committed())


def in_flight(stack: Stack) -> tuple[int, int] | None:
    """Just after a kill, the bound of the next run's duplicates: records the runtime confirmed that the trigger will
    read again, and of those, how many had landed when the kill was seen (the rest were requests on the wire, not
    confirmed to the trigger yet: what was landed and not checkpointed is what checkpointing sooner can save).
    None when the runtime stub was still handling requests received before the kill after ``LANDED_LIMIT_S``."""
    landed = unconfirmed(stack)
    # The killed run's requests already in the stub still land (once its latency passed, their events are written):
    # read once every delivery request received by now was answered. A request the killed run wrote but the stub has
    # not taken up yet was in its socket before this first reading's connection: it is numbered before that reading.
    # A checkpoint write landing after the reading only lowers the duplicates.
    received = stack.runtime_stats()["deliveries"]
    if not wait_until(lambda: stack.runtime_stats()["oldest_active"] >= received, LANDED_LIMIT_S, 0.05):
        return None
    return unconfirmed(stack), landed


def kills(ctx: Context, trigger: str) -> dict:
    name = f"{trigger}_kills"
    rng = ctx.rng(name)
    stack = backlog_stack(ctx, trigger, name)
    failures: list[str] = []
    with stack:
        expected = stack.expected()
        total = sum(expected.values())
        config = kill_config(stack)
        plan = ["startup" if rng.random() < STARTUP_KILLS else "progress" for _ in range(ctx.scale.kills)]
        startup_window = 2.5 if trigger == "o365" else 4.5
        # Points of progress spread over the first half (one at random in each stratum): a backlog remains after
        # the last kill, whatever the draw. Half, not more: a run is killed only once its point is seen reached,
        # with more batches landing meanwhile, and a startup kill after it may deliver a batch or two; on a fast
        # machine a smoke run past three quarters of its 5,000 records sometimes left nothing for the next kill.
        count = plan.count("progress")
        targets = iter(total * PROGRESS_SPAN * (slot + rng.random()) / count for slot in range(count))
        runs, bound, bound_batches, resumed, not_checkpointed = [], 0, 0, [], []
        for index, kind in enumerate(plan):
            process = stack.spawn(config, name=f"run-{index:02d}")
            if kind == "startup":  # a random moment before its first delivery
                deadline = time.monotonic() + rng.uniform(0.1, startup_window)
                start_total = stack.reader.refresh().total
                first = watch(process, stack, lambda: time.monotonic() >= deadline
                              or stack.reader.refresh().total > start_total, 60)
            else:
                # Progress counts records delivered for the first time: a restarted run first delivers again what
                # was in flight at the last kill, and counting those would put every kill near the backlog's start.
                target = next(targets)
                start_unique = stack.reader.refresh().unique
                first = watch(process, stack,
                              lambda: stack.reader.refresh().unique >= max(target, start_unique + 1), 120)
            if not process.alive:
                failures.append(f"run {index} ended by itself (exit code {process.poll()})")
            if rng.random() < 0.3:
                process.scrape()
            process.kill()
            mid_backlog = stack.reader.refresh().unique < total
            counted = in_flight(stack)
            if counted is None:
                failures.append(f"run {index}: the runtime still handled requests received before the kill "
                                f"{LANDED_LIMIT_S:.0f} s after it")
                counted = (0, 0)
            pending, landed = counted
            bound += pending
            not_checkpointed.append(landed)
            bound_batches += math.ceil(pending / BATCH)
            runs.append({"kind": kind, "at_s": round(time.monotonic() - process.started, 2),
                         "delivered_unique": stack.reader.unique, "in_flight": pending, "landed_not_checkpointed": landed,
                         "mid_backlog": mid_backlog})
            if first is not None:
                resumed.append(first)
        final = stack.spawn(config, name="final")
        finished = wait_covered(stack, expected, 300, processes=[final])
        if finished is None:
            failures.append("the last run did not deliver the whole backlog within 300 s")
        final.scrape()
        code, stop_s = final.terminate()
        result = reconcile(expected, stack.reader.refresh().keys, stack.optional(), stack.set_aside())
        kills_mid = sum(run["mid_backlog"] for run in runs)
        result.update(
            kills=len(runs), kills_mid_backlog=kills_mid, in_flight_at_kills=bound,
            in_flight_batches_at_kills=bound_batches, batch_max_events=BATCH,
            landed_not_checkpointed_at_kills=sum(not_checkpointed),
            landed_not_checkpointed_max=max(not_checkpointed, default=0),
            recovery_s=max(resumed, default=None), final_run_s=finished, exit_code=code, runs=runs,
            **output_counts(stack.processes), **runtime_counts(stack.runtime_logs()),
        )
    if kills_mid < ctx.scale.kills:
        failures.append(f"only {kills_mid} kills landed before the backlog was delivered")
    if result["duplicates"] > bound:
        failures.append(f"{result['duplicates']} duplicates, more than the {bound} records in flight at the kills")
    if code != 0:
        failures.append(f"the last run exited with {code}")
    return finish(result, failures)


def graceful_stop(ctx: Context, trigger: str) -> dict:
    name = f"{trigger}_graceful_stop"
    rng = ctx.rng(name)
    stack = backlog_stack(ctx, trigger, name)
    failures: list[str] = []
    with stack:
        expected = stack.expected()
        total = sum(expected.values())
        config = kill_config(stack)
        stops, resumed = [], []
        fractions = sorted(rng.uniform(0.1, 0.8) for _ in range(ctx.scale.stops))
        for index, fraction in enumerate(fractions):
            process = stack.spawn(config, name=f"run-{index:02d}")
            start_total = stack.reader.refresh().total
            first = watch(process, stack,
                          lambda: stack.reader.refresh().total >= max(fraction * total, start_total + 1), 120)
            if first is not None:
                resumed.append(first)
            process.scrape()
            code, seconds = process.terminate()
            unacknowledged = unconfirmed(stack)
            stops.append({"stop_s": seconds, "exit_code": code, "delivered_unique": stack.reader.unique,
                          "delivered_not_checkpointed": unacknowledged})
            if seconds > STOP_LIMIT_S or code != 0:
                failures.append(f"stop {index}: exit code {code} after {seconds} s (limit {STOP_LIMIT_S} s)")
            if unacknowledged:
                failures.append(f"stop {index}: {unacknowledged} delivered records were not checkpointed")
        final = stack.spawn(config, name="final")
        finished = wait_covered(stack, expected, 300, processes=[final])
        if finished is None:
            failures.append("the last run did not deliver the whole backlog within 300 s")
        code, _ = final.terminate()
        result = reconcile(expected, stack.reader.refresh().keys, stack.optional(), stack.set_aside())
        result.update(kills=0, stops=stops, recovery_s=max(resumed, default=None), final_run_s=finished,
                      max_stop_s=max(stop["stop_s"] for stop in stops),
                      **output_counts(stack.processes), **runtime_counts(stack.runtime_logs()))
    if result["duplicates"]:
        failures.append(f"{result['duplicates']} duplicates after graceful stops (expected 0)")
    return finish(result, failures)
