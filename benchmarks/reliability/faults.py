"""Faults while a steady stream flows: the trigger keeps up, a fault starts, lasts, ends.

- ``recovery_s``: from the end of the fault until every record published by then, and some published after it,
  was delivered and checkpointed (limit: ``RECOVERY_LIMIT_S``).
- Then the stream stops, the rest is delivered, the trigger is stopped with SIGTERM, and the keys are counted.
- Network faults between the trigger and the runtime (``proxied``: the intake is reached through a ``FaultProxy``):
  its keep-alive connections frozen (silent for good, as a NAT that forgot them) or every connection blackholed
  for the fault's time. ``since_fault_s``: from the start of the fault until recovered.
- "Logged once, not per event": the warning-and-above lines the runtime received and the process wrote stay
  under a budget a per-event log would blow by orders of magnitude (thousands of records flow during a fault).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from benchmarks.reliability.context import Context, Scale
from benchmarks.reliability.metrics import counters, has, total
from benchmarks.reliability.processes import output_counts, runtime_counts
from benchmarks.reliability.stacks import EventHubStack, O365Stack, Stack, reconcile, wait_covered
from benchmarks.reliability.verdict import finish
from emulators.netfault import FaultProxy
from emulators.process import wait_until

RECOVERY_LIMIT_S = 60.0
RECORDS_PER_BLOB = 20
RUNTIME_LOG_BUDGET = 12
OUTPUT_LOG_BUDGET = 25
FOREVER = 3600.0


@dataclass(frozen=True)
class Fault:
    trigger: str  # o365 | eventhub
    begin: Callable[[Stack, Scale], object]
    end: Callable[[Stack, Scale], object]
    outage: bool = True  # lasts Scale.fault_s (an outage of the issue) rather than Scale.short_fault_s
    # An outage this long stops the trigger's progress: the runtime must hear of it (short ones may be absorbed
    # by retries, and partial faults may be too).
    must_log_after_s: float | None = 20.0
    emulator_args: Callable[[Scale], tuple[str, ...]] = lambda scale: ()
    config: dict = field(default_factory=dict)
    proxied: bool = False  # the trigger reaches the intake through ``stack.proxy``, a FaultProxy (begin/end use it)

    def duration(self, scale: Scale) -> float:
        return scale.fault_s if self.outage else scale.short_fault_s


def _emulator(**knobs):
    return lambda stack, scale: stack.emulator.control(**knobs)


def _restart_hub_down(stack: EventHubStack, scale: Scale) -> None:
    stack.feed.pause()  # a send cut by the stop would leave its records unknown
    stack.emulator.stop()


def _restart_hub_up(stack: EventHubStack, scale: Scale) -> None:
    stack.emulator.restart()
    stack.feed.resume()


# Frozen connections never come back (no FIN, no RST): the trigger must give them up by itself, so the fault's end
# changes nothing. A blackhole holds every byte for the fault's time, then lets them flow.
RUNTIME_FROZEN = (lambda stack, scale: stack.proxy.freeze(), lambda stack, scale: None)
RUNTIME_BLACKHOLED = (lambda stack, scale: stack.proxy.blackhole(True), lambda stack, scale: stack.proxy.blackhole(False))

RUNTIME_DOWN = (lambda stack, scale: stack.runtime_control(down_for=FOREVER, down_status=0),
                lambda stack, scale: stack.runtime_control(down_for=0))
RUNTIME_5XX = (lambda stack, scale: stack.runtime_control(down_for=FOREVER, down_status=503),
               lambda stack, scale: stack.runtime_control(down_for=0, down_status=0))

FAULTS: dict[str, Fault] = {
    "o365_5xx_resets": Fault("o365", _emulator(fault_rate=0.1, fault_kinds=["5xx", "reset"]),
                             _emulator(fault_rate=0.0), outage=False, must_log_after_s=None),
    # Hung requests outlast the trigger's request timeout (5 s in the test configuration).
    "o365_timeouts": Fault("o365", _emulator(fault_rate=0.1, fault_kinds=["timeout"], hang_seconds=60),
                           _emulator(fault_rate=0.0), outage=False, must_log_after_s=None),
    "o365_throttle_storm": Fault("o365", _emulator(quota_per_minute=10, throttle_status=403),
                                 _emulator(quota_per_minute=0), outage=False, must_log_after_s=15.0),
    # Tokens living half the outage: the one in hand expires during it, and its renewal meets the outage.
    "o365_token_down": Fault("o365", _emulator(token_down="503"), _emulator(token_down=""),
                             emulator_args=lambda scale: ("--token-lifetime", str(max(10, int(scale.fault_s / 2))))),
    "o365_runtime_down": Fault("o365", *RUNTIME_DOWN),
    "o365_runtime_5xx": Fault("o365", *RUNTIME_5XX),
    "eventhub_emulator_restart": Fault("eventhub", _restart_hub_down, _restart_hub_up),
    "eventhub_azurite_down": Fault("eventhub", lambda stack, scale: stack.azurite.stop(),
                                   lambda stack, scale: stack.azurite.start()),
    "eventhub_runtime_down": Fault("eventhub", *RUNTIME_DOWN),
    "eventhub_runtime_5xx": Fault("eventhub", *RUNTIME_5XX),
    # Silent until the read inactivity bound (a minute): no warning is due within a shorter fault.
    "o365_runtime_frozen": Fault("o365", *RUNTIME_FROZEN, proxied=True, must_log_after_s=None),
    "o365_runtime_blackholed": Fault("o365", *RUNTIME_BLACKHOLED, proxied=True, must_log_after_s=None),
    "eventhub_runtime_frozen": Fault("eventhub", *RUNTIME_FROZEN, proxied=True, must_log_after_s=None),
    "eventhub_runtime_blackholed": Fault("eventhub", *RUNTIME_BLACKHOLED, proxied=True, must_log_after_s=None),
}


def _stack(ctx: Context, name: str, fault: Fault) -> Stack:
    if fault.trigger == "o365":
        return O365Stack(ctx, name, "--blobs", "4", "--records-per-blob", str(RECORDS_PER_BLOB),
                         *fault.emulator_args(ctx.scale))
    return EventHubStack(ctx, name)


@contextlib.contextmanager
def _proxy(stack: Stack, fault: Fault) -> Iterator[FaultProxy | None]:
    """For a network fault, a FaultProxy in front of the runtime stub, as ``stack.proxy``."""
    if not fault.proxied:
        yield None
        return
    with FaultProxy("127.0.0.1", stack.runtime_port()) as proxy:
        stack.proxy = proxy
        yield proxy


def _checkpointed(stack: Stack, records: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return stack.committed() >= records
        except Exception:  # noqa: BLE001 - the checkpoint store may still be coming back
            return False

    return check


def _gauges(page: str | None) -> dict:
    """The Office 365 trigger's own pace at the end (after a throttle storm: is it back to full speed?)."""
    values = counters(page)
    names = {"quota_pace_per_minute": "symphony_module_microsoft_o365_quota_pace_per_minute",
             "concurrency": "symphony_module_microsoft_o365_concurrency"}
    return {key: total(values, name) for key, name in names.items() if has(values, name)}


def run(ctx: Context, name: str) -> dict:
    fault = FAULTS[name]
    scale = ctx.scale
    duration = fault.duration(scale) if name != "eventhub_emulator_restart" else scale.restart_down_s
    failures: list[str] = []
    with _stack(ctx, name, fault) as stack, _proxy(stack, fault) as proxy:
        config = dict(fault.config, **({"intake_server": f"http://{proxy.address}"} if proxy else {}))
        stack.start_stream(scale.stream_per_s, RECORDS_PER_BLOB)
        process = stack.spawn(stack.config(**config))
        # Running and caught up: records of the stream arrived, and all that was published by then.
        delivering = wait_until(lambda: stack.reader.refresh().total > 0 or not process.alive, 90, 0.2)
        if not delivering or wait_covered(stack, stack.expected(), 90, processes=[process]) is None:
            failures.append("the trigger did not keep up with the stream before the fault")
        fault.begin(stack, scale)
        began = time.monotonic()
        deadline = began + duration
        scraped = False
        while time.monotonic() < deadline and process.alive:
            if not scraped and time.monotonic() > deadline - duration / 2:
                scraped = process.scrape() is not None
            time.sleep(0.25)
        published = sum(stack.expected().values())
        fault.end(stack, scale)
        ended = time.monotonic()
        if not process.alive:
            failures.append(f"the trigger ended during the fault (exit code {process.poll()})")
        # The snapshot holds records published after the fault: reading really resumed.
        if not wait_until(lambda: sum(stack.expected().values()) > published, 30, 0.1):
            failures.append("nothing was published after the fault")
        snapshot = stack.expected()
        covered = wait_covered(stack, snapshot, RECOVERY_LIMIT_S + 10,
                               also=_checkpointed(stack, sum(snapshot.values())), processes=[process])
        recovery = round(time.monotonic() - ended, 2) if covered is not None else None
        since_fault = round(time.monotonic() - began, 2) if covered is not None else None
        stack.stop_stream()
        final = stack.expected()
        if wait_covered(stack, final, 90 if recovery is not None else 20,
                        also=_checkpointed(stack, sum(final.values())), processes=[process]) is None:
            failures.append("the records published after the fault were not all delivered and checkpointed")
        gauges = _gauges(process.scrape())
        code, stop_s = process.terminate()
        result = reconcile(final, stack.reader.refresh().keys, stack.optional(), stack.set_aside())
        result.update(kills=0, recovery_s=recovery, since_fault_s=since_fault, fault_s=duration, exit_code=code,
                      stop_s=stop_s, **gauges,
                      **output_counts(stack.processes), **runtime_counts(stack.runtime_logs()))
        if isinstance(stack, EventHubStack):
            result["producer_failed_sends"] = stack.feed.failed_sends
    if recovery is None or recovery > RECOVERY_LIMIT_S:
        failures.append(f"no recovery within {RECOVERY_LIMIT_S:.0f} s after the fault ended ({recovery})")
    if code != 0:
        failures.append(f"exit code {code} after SIGTERM")
    if result["runtime_warnings"] > RUNTIME_LOG_BUDGET or result["output_warnings"] > OUTPUT_LOG_BUDGET:
        failures.append(f"logged per event: {result['runtime_warnings']} warnings to the runtime, "
                        f"{result['output_warnings']} in the output (budgets {RUNTIME_LOG_BUDGET}, {OUTPUT_LOG_BUDGET})")
    if result["output_tracebacks"]:
        failures.append(f"{result['output_tracebacks']} tracebacks in the output")
    if fault.must_log_after_s is not None and duration >= fault.must_log_after_s and not result["runtime_warnings"]:
        failures.append(f"a {duration:.0f} s fault and not one warning logged to the runtime")
    return finish(result, failures)
