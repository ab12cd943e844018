"""Never silently stuck (issue 16, Event Hubs side): faults that leave no error to see, while a stream flows.

- ``eventhub_frozen_connections``: every AMQP connection between the trigger and the hub goes silent for good (a
  fault proxy: no byte, no FIN, no RST, as a NAT that dropped its state); new connections pass.
- ``eventhub_frozen_storage``: the same between the trigger and the checkpoint store (Azurite).
- ``eventhub_stalled_receivers``: the hub's receivers stop delivering while their connections stay healthy
  (heartbeats flow): only the stall watch sees it (``stall_seconds``: the default 60 in the full run, 10 in the
  quick one).
- ``eventhub_recreated_hub``: the hub is deleted and created again under its name (every checkpoint now lies past
  the end of its partition), once under the running trigger, once while it is stopped.

Each reports ``detect_s`` (from the fault to the first record published after it delivered), ``recovery_s`` (from
the fault until every record published in the second after it was delivered and checkpointed; limit
``RECOVERY_LIMIT_S``), then the usual keys: records lost, duplicates.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from functools import partial

from benchmarks.reliability.context import Context
from benchmarks.reliability.faults import _checkpointed
from benchmarks.reliability.processes import TriggerProcess, output_counts, runtime_counts
from benchmarks.reliability.stacks import EventHubStack, reconcile, wait_covered
from benchmarks.reliability.verdict import judge
from emulators.netfault import FaultProxy
from emulators.process import wait_until

RECOVERY_LIMIT_S = 120.0  # the issue: records waiting at the stall are delivered within 2 minutes
QUICK_STALL_SECONDS = 10


def _through(proxy: FaultProxy, text: str, port: int) -> str:
    return text.replace(f":{port};", f":{proxy.port};").replace(f":{port}/", f":{proxy.port}/")


def _caught_up(stack: EventHubStack, process: TriggerProcess, failures: list[str]) -> None:
    delivering = wait_until(lambda: stack.reader.refresh().total > 0 or not process.alive, 90, 0.2)
    if not delivering or wait_covered(stack, stack.expected(), 90, processes=[process]) is None:
        failures.append("the trigger did not keep up with the stream before the fault")


def _sent(stack: EventHubStack) -> int:
    """Records sent to the hub as it is now (since it was last created): what its checkpoints can count."""
    return sum(stack.feed.records_in(partition) for partition in stack.feed.partitions)


def _after_fault(stack: EventHubStack, process: TriggerProcess, fault_at: float, published: Counter,
                 failures: list[str], in_hub: Callable[[], int] | None = None) -> tuple[float | None, float | None]:
    """(detect_s, recovery_s) from ``fault_at``: the first record sent after the fault delivered; every record
    sent by a second after it delivered and checkpointed (``in_hub``: how many the checkpoints must cover)."""
    time.sleep(max(0.0, fault_at + 1 - time.monotonic()))
    snapshot = stack.expected()
    target = in_hub() if in_hub is not None else sum(snapshot.values())
    newer = snapshot - published
    detect = None
    if wait_until(lambda: bool(stack.reader.refresh().keys & newer) or not process.alive, RECOVERY_LIMIT_S, 0.1):
        detect = round(time.monotonic() - fault_at, 2)
    covered = wait_covered(stack, snapshot, RECOVERY_LIMIT_S, also=_checkpointed(stack, target), processes=[process])
    recovery = round(time.monotonic() - fault_at, 2) if covered is not None else None
    if recovery is None or recovery > RECOVERY_LIMIT_S:
        failures.append(f"no recovery within {RECOVERY_LIMIT_S:.0f} s of the fault ({recovery})")
    return detect, recovery


def _end(stack: EventHubStack, processes: list[TriggerProcess], failures: list[str],
         in_hub: Callable[[], int] | None = None, **result_keys) -> dict:
    stack.stop_stream()
    final = stack.expected()
    target = in_hub() if in_hub is not None else sum(final.values())
    if wait_covered(stack, final, 90, also=_checkpointed(stack, target), processes=processes) is None:
        failures.append("the records published after the fault were not all delivered and checkpointed")
    codes = [process.terminate()[0] for process in processes]
    result = reconcile(final, stack.reader.refresh().keys, stack.optional(), stack.set_aside())
    result.update(kills=0, exit_codes=codes, **result_keys, **output_counts(stack.processes),
                  **runtime_counts(stack.runtime_logs()))
    return judge(result, failures, exit_codes=True, tracebacks=True)


def _frozen(ctx: Context, name: str, server: str) -> dict:
    failures: list[str] = []
    with EventHubStack(ctx, name) as stack:
        if server == "hub":
            port = stack.emulator.info["port"]
            proxy = FaultProxy("127.0.0.1", port).start()
            overrides = {"hub_connection_string": _through(proxy, stack.stack.connection_string, port)}
        else:
            port = stack.azurite.port
            proxy = FaultProxy("127.0.0.1", port).start()
            overrides = {"storage_connection_string": _through(proxy, stack.azurite.connection_string, port)}
        try:
            stack.start_stream(ctx.scale.stream_per_s)
            process = stack.spawn(stack.config(**overrides))
            _caught_up(stack, process, failures)
            published = stack.expected()
            frozen = proxy.freeze()
            fault_at = time.monotonic()
            detect, recovery = _after_fault(stack, process, fault_at, published, failures)
            time.sleep(2)
            return _end(stack, [process], failures, frozen_connections=frozen, detect_s=detect, recovery_s=recovery)
        finally:
            proxy.stop()


def frozen_connections(ctx: Context) -> dict:
    return _frozen(ctx, "eventhub_frozen_connections", "hub")


def frozen_storage(ctx: Context) -> dict:
    return _frozen(ctx, "eventhub_frozen_storage", "storage")


def stalled_receivers(ctx: Context) -> dict:
    failures: list[str] = []
    with EventHubStack(ctx, "eventhub_stalled_receivers") as stack:
        stack.start_stream(ctx.scale.stream_per_s)
        stall = {} if ctx.scale.name == "full" else {"stall_seconds": QUICK_STALL_SECONDS}
        process = stack.spawn(stack.config(**stall))
        _caught_up(stack, process, failures)
        published = stack.expected()
        stalled = stack.emulator.control(stall_receivers=True)["stalled"]
        fault_at = time.monotonic()
        detect, recovery = _after_fault(stack, process, fault_at, published, failures)
        time.sleep(2)
        told = [log for log in stack.runtime_logs() if "has made no progress for" in str(log.get("message"))]
        if len(told) != stalled:
            failures.append(f"{len(told)} stall warnings for {stalled} stalled receivers")
        return _end(stack, [process], failures, stalled_receivers=stalled, stall_warnings=len(told),
                    detect_s=detect, recovery_s=recovery)


def _recreate(stack: EventHubStack) -> float:
    """Delete the hub and create it again once everything sent was delivered (what the hub still held when it was
    deleted is lost with it, not by the trigger)."""
    stack.feed.pause()
    stack.emulator.control(recreate=True)
    stack.feed.renumber()
    stack.feed.resume()
    return time.monotonic()


def recreated_hub(ctx: Context) -> dict:
    failures: list[str] = []
    with EventHubStack(ctx, "eventhub_recreated_hub") as stack:
        config = stack.config()
        stack.start_stream(ctx.scale.stream_per_s)
        process = stack.spawn(config)
        _caught_up(stack, process, failures)
        in_hub = partial(_sent, stack)
        stack.feed.pause()
        if wait_covered(stack, stack.expected(), 60, also=_checkpointed(stack, in_hub()), processes=[process]) is None:
            failures.append("the stream was not delivered and checkpointed before the hub was recreated")
        published = stack.expected()
        fault_at = _recreate(stack)
        detect, recovery = _after_fault(stack, process, fault_at, published, failures, in_hub)
        # Again while the trigger is stopped: the restarted trigger finds its checkpoints past the end.
        stack.feed.pause()
        if wait_covered(stack, stack.expected(), 60, also=_checkpointed(stack, in_hub()), processes=[process]) is None:
            failures.append("the stream was not delivered and checkpointed before the stop")
        code, _ = process.terminate()
        published = stack.expected()
        _recreate(stack)
        restarted = stack.spawn(config, name="trigger-restarted")
        restart_at = time.monotonic()
        restart_detect, restart_recovery = _after_fault(stack, restarted, restart_at, published, failures, in_hub)
        told = [log for log in stack.runtime_logs() if "past the end of the partition" in str(log.get("message"))]
        if len(told) != 2 * len(stack.feed.partitions):
            failures.append(f"{len(told)} past-the-end warnings, not one per partition and recreation")
        result = _end(stack, [restarted], failures, in_hub, detect_s=detect, recovery_s=recovery,
                      restart_detect_s=restart_detect, restart_recovery_s=restart_recovery,
                      past_the_end_warnings=len(told))
        result["exit_codes"].insert(0, code)
        if code != 0:
            result["failures"].append(f"exit code {code} after SIGTERM")
            result["passed"] = False
        return result


SCENARIOS = {
    "eventhub_frozen_connections": frozen_connections,
    "eventhub_frozen_storage": frozen_storage,
    "eventhub_stalled_receivers": stalled_receivers,
    "eventhub_recreated_hub": recreated_hub,
}
