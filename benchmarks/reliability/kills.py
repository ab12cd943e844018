"""Kills and graceful stops on a backlog: SIGKILL (or SIGTERM) at random moments, restart, finish; then count.

The runtime stub answers slowly (``Scale.kill_latency_ms``) and batches are small (``BATCH``), so the backlog
takes a while and every kill lands while records are in flight. Random moments are of two kinds: a delay after
the process started (imports, token, probes, first listing) or a point of progress through the backlog.

Duplicates are bounded by what was in flight at each kill: records the runtime confirmed but the trigger had not
checkpointed yet (Office 365: the blob ledger; Event Hubs: the checkpoints in Azurite), read from outside once
the runtime stub answered every request it had received at the kill.

Each kill is also judged on its own (``KillCount``): the duplicates it caused (what the next runs delivered again)
are at most what was unconfirmed at the kill (requests on the wire, landed after it) plus what the runtime
confirmed in the last ``RECENT_S`` before it (checkpointing follows confirmation within that time), plus what an
earlier kill left to deliver again that the runs since had not delivered yet.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass

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
# A confirmed record is checkpointed within this long (issue 17): a kill re-sends at most what was unconfirmed plus
# what the runtime confirmed this long before the kill.
RECENT_S = 0.1
# The runtime stub writes a batch's events before its answer reaches the trigger's loop (loopback, a loaded loop):
# the window of "confirmed recently" opens this much earlier.
ANSWER_ALLOWANCE_S = 0.02
# Acknowledgements follow groups of records (Event Hubs: slices of at least ACK_RECORDS = 200 records, whole messages
# of 20 here; Office 365: a blob's records): of the group whose records straddle the last confirmed batch, the part
# that landed is not confirmed to the trigger until the rest is. One such group is allowed beyond the bound.
ACK_GROUP = {"eventhub": 220, "o365": RECORDS_PER_BLOB}
CHECKPOINT_SETTLE_S = 0.5  # for a checkpoint write sent before the kill to land in the store
RATE_WINDOW_S = 1.0  # the reading rate at a kill: records confirmed per second over this long before it


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


class Pace:
    """Records the runtime confirmed, sampled as a run is watched: the reading rate before a kill."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.samples: deque[tuple[float, int]] = deque()

    def sample(self) -> None:
        now = time.monotonic()
        self.samples.append((now, self.stack.reader.refresh().total))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()

    def rate(self) -> float:
        """Records per second over the last ``RATE_WINDOW_S`` (0 without two samples)."""
        (then, before), (now, after) = self.samples[0], self.samples[-1]
        return (after - before) / (now - then) if now > then else 0.0


@dataclass
class KillCount:
    """One kill, counted from outside (records)."""

    unconfirmed: int  # on the wire at the kill: landed after it, never confirmed to the trigger
    landed_not_checkpointed: int  # confirmed (or being answered) at the kill, not checkpointed
    confirmed_recently: int  # landed in the last RECENT_S (+ the answer's allowance) before the kill
    carried: int  # an earlier kill's to deliver again that the runs since had not delivered yet
    rate_per_s: float  # the reading rate before the kill
    ack_group: int  # records of one acknowledgement group, allowed beyond the bound
    duplicates: int | None = None  # delivered again by the runs after it (known once the next kill settled)

    @property
    def bound(self) -> int:
        return self.unconfirmed + self.confirmed_recently + self.carried

    @property
    def within_bound(self) -> bool:
        return self.duplicates is not None and self.duplicates <= self.bound + self.ack_group

    def report(self) -> dict:
        return {**asdict(self), "rate_per_s": round(self.rate_per_s, 1), "bound": self.bound,
                "recent_by_rate": round(self.rate_per_s * RECENT_S), "within_bound": self.within_bound,
                # Landed before the recent window and not checkpointed: what checkpointing lagged behind by.
                "late": max(0, self.landed_not_checkpointed - self.carried - self.confirmed_recently)}


def kill_recently_watched(process: TriggerProcess, stack: Stack, pace: Pace) -> int:
    """SIGKILL once the window of recent confirmations elapsed: the records confirmed by its start."""
    pace.sample()
    confirmed = stack.reader.total
    time.sleep(RECENT_S + ANSWER_ALLOWANCE_S)
    process.kill()
    return confirmed


def redelivered(stack: Stack, since: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """Deliveries since the (total, unique) mark that repeated an earlier one, and the new mark."""
    reader = stack.reader.refresh()
    mark = (reader.total, reader.unique)
    return (mark[0] - since[0]) - (mark[1] - since[1]), mark


def in_flight(stack: Stack) -> tuple[int, int] | None:
    """Just after a kill, the bound of the next run's duplicates: records the runtime confirmed that the trigger will
    read again, and of those, how many had landed when the kill was seen (the rest were requests on the wire, not
    confirmed to the trigger yet: what was landed and not checkpointed is what checkpointing sooner can save).
    None when the runtime stub was still handling requests received before the kill after ``LANDED_LIMIT_S``."""
    landed_unique = stack.reader.refresh().unique
    # The killed run's requests already in the stub still land (once its latency passed, their events are written):
    # read once every delivery request received by now was answered. A request the killed run wrote but the stub has
    # not taken up yet was in its socket before this first reading's connection: it is numbered before that reading.
    received = stack.runtime_stats()["deliveries"]
    if not wait_until(lambda: stack.runtime_stats()["oldest_active"] >= received, LANDED_LIMIT_S, 0.05):
        return None
    # Checkpoint writes the killed run had sent land too (they were checkpointed, only later): counted as such.
    time.sleep(CHECKPOINT_SETTLE_S)
    committed = stack.committed()
    return max(0, stack.reader.refresh().unique - committed), max(0, landed_unique - committed)


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
        counts: list[KillCount] = []
        pace = Pace(stack)
        mark, owed = redelivered(stack, (0, 0))[1], 0
        for index, kind in enumerate(plan):
            process = stack.spawn(config, name=f"run-{index:02d}")
            pace.samples.clear()
            if kind == "startup":  # a random moment before its first delivery
                deadline = time.monotonic() + rng.uniform(0.1, startup_window)
                start_total = stack.reader.refresh().total
                first = watch(process, stack, lambda: pace.sample() or time.monotonic() >= deadline
                              or stack.reader.total > start_total, 60)
            else:
                # Progress counts records delivered for the first time: a restarted run first delivers again what
                # was in flight at the last kill, and counting those would put every kill near the backlog's start.
                target = next(targets)
                start_unique = stack.reader.refresh().unique
                first = watch(process, stack,
                              lambda: pace.sample() or stack.reader.unique >= max(target, start_unique + 1), 120)
            if not process.alive:
                failures.append(f"run {index} ended by itself (exit code {process.poll()})")
            if rng.random() < 0.3:
                process.scrape()
            confirmed_before = kill_recently_watched(process, stack, pace)
            # Delivered again by this run before its kill: what it left of the previous kill's is carried.
            again_before_kill, _ = redelivered(stack, mark)
            mid_backlog = stack.reader.unique < total
            confirmed_at_kill = stack.reader.total
            counted = in_flight(stack)
            if counted is None:
                failures.append(f"run {index}: the runtime still handled requests received before the kill "
                                f"{LANDED_LIMIT_S:.0f} s after it")
                counted = (0, 0)
            pending, landed = counted
            # The previous kill's duplicates: what this run delivered again (all of it, unless killed first).
            again, mark = redelivered(stack, mark)
            carried = 0
            if counts:
                counts[-1].duplicates = again
                carried = max(0, owed - again_before_kill)  # left over from the previous kill: sent again later
            counts.append(KillCount(unconfirmed=max(0, pending - landed), landed_not_checkpointed=landed,
                                    confirmed_recently=confirmed_at_kill - confirmed_before, carried=carried,
                                    rate_per_s=pace.rate(), ack_group=ACK_GROUP[trigger]))
            owed = pending  # what the next runs deliver again
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
        if counts:
            counts[-1].duplicates = redelivered(stack, mark)[0]
        for run, count in zip(runs, counts):
            run.update(count.report())
        result = reconcile(expected, stack.reader.refresh().keys, stack.optional(), stack.set_aside())
        kills_mid = sum(run["mid_backlog"] for run in runs)
        over = [(index, count) for index, count in enumerate(counts) if not count.within_bound]
        result.update(
            kills=len(runs), kills_mid_backlog=kills_mid, in_flight_at_kills=bound,
            in_flight_batches_at_kills=bound_batches, batch_max_events=BATCH,
            landed_not_checkpointed_at_kills=sum(not_checkpointed),
            landed_not_checkpointed_max=max(not_checkpointed, default=0),
            recent_window_s=RECENT_S + ANSWER_ALLOWANCE_S, kills_within_bound=len(counts) - len(over),
            duplicates_over_bound=sum(count.duplicates - count.bound for _, count in over),
            recovery_s=max(resumed, default=None), final_run_s=finished, exit_code=code, runs=runs,
            **output_counts(stack.processes), **runtime_counts(stack.runtime_logs()),
        )
        for index, count in over if ctx.scale.kills_time_bound else ():
            failures.append(f"kill {index}: {count.duplicates} duplicates, more than its {count.unconfirmed} "
                            f"unconfirmed + {count.confirmed_recently} confirmed in the last "
                            f"{RECENT_S * 1000:.0f} ms + {count.carried} carried + {count.ack_group} of an "
                            "acknowledgement group")
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
