"""The runtime's log endpoint hangs, then fails, while records flow (issue 10, items 4 and 13).

The SDK sends log lines synchronously, with retries; a trigger logging from its event loop froze every fetcher
while the runtime was away. Here the runtime stub holds every ``/logs`` request (then answers 503) while its
delivery endpoints work, the trigger logs a status line every ``STATUS_S`` seconds, and:

- records published during the hang are delivered during the hang (``delivered_during_fault_s``): the hang lasts
  ``fault_s``, longer if need be, until they are (a machine's speed does not decide), at most ``COVERED_LIMIT_S``;
- the lines queued meanwhile reach the runtime once it answers, with one line saying the log endpoint failed and
  one saying it is back (with the duration and what was dropped, if anything);
- status lines arrive, with the figures of the trigger (lag per content type or partition);
- SIGTERM while the log endpoint hangs again still ends the process within the stop budget;
- every file the trigger wrote under ``state/`` is 0600 and every directory 0700, and so were the records files
  of playbook events (the Office 365 trigger runs in playbook mode here, the Event Hubs one with an intake key).
"""

from __future__ import annotations

import stat
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.reliability.context import Context
from benchmarks.reliability.faults import RECORDS_PER_BLOB, _checkpointed
from benchmarks.reliability.processes import output_counts, runtime_counts
from benchmarks.reliability.stacks import EventHubStack, O365Stack, Stack, reconcile, wait_covered
from benchmarks.reliability.verdict import judge
from emulators.process import wait_until

STATUS_S = 2.0
STOP_BUDGET_S = 20.0
HANG = 3600.0
COVERED_LIMIT_S = 60.0  # for records published during the hang to arrive while it lasts
FIGURES = {"o365": ": lag ", "eventhub": "partitions owned"}


def _stack(ctx: Context, trigger: str, name: str) -> Stack:
    if trigger == "o365":
        return O365Stack(ctx, name, "--blobs", "4", "--records-per-blob", str(RECORDS_PER_BLOB))
    return EventHubStack(ctx, name)


def _wide_modes(root: Path) -> list[str]:
    """Files not 0600 and directories not 0700 under ``root`` (the trigger's state)."""
    wide = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            wide.append(f"{path.relative_to(root.parent)} {mode:o}")
    return wide


def _now() -> str:
    """The trigger's date format for log entries (UTC, naive ISO), to compare with theirs."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat()


def _messages(stack: Stack) -> list[str]:
    return [str(entry.get("message", "")) for entry in stack.runtime_logs()]


def run(ctx: Context, trigger: str) -> dict:
    scale = ctx.scale
    failures: list[str] = []
    with _stack(ctx, trigger, f"{trigger}_runtime_logs_down") as stack:
        stack.start_stream(scale.stream_per_s, RECORDS_PER_BLOB)
        process = stack.spawn(stack.config(status_interval_seconds=STATUS_S), intake=trigger != "o365")
        delivering = wait_until(lambda: stack.reader.refresh().total > 0 or not process.alive, 90, 0.2)
        if not delivering or wait_covered(stack, stack.expected(), 90, processes=[process]) is None:
            failures.append("the trigger did not keep up with the stream before the fault")
        if not wait_until(lambda: any(m.startswith("Status:") for m in _messages(stack)), 30):
            failures.append("no status line before the fault")
        # The log endpoint hangs (requests held an hour), then refuses; delivery works all along.
        held = stack.runtime_stats()["logs_hung"]
        stack.runtime_control(logs_hang_seconds=HANG)
        hang_dates = [_now()]
        hang_started = time.monotonic()
        # Once the stub holds a log request of the trigger, records published from then on must arrive while it
        # still holds it: the hang lasts until they did (fault_s at least), so a slow machine only makes it longer.
        if not wait_until(lambda: stack.runtime_stats()["logs_hung"] > held or not process.alive, 30, 0.1):
            failures.append("no log request reached the hanging log endpoint")
        published = sum(stack.expected().values())
        if not wait_until(lambda: sum(stack.expected().values()) > published, 30, 0.1):
            failures.append("nothing was published during the hang")
        covered = wait_covered(stack, stack.expected(), COVERED_LIMIT_S, processes=[process])
        if covered is None:
            failures.append(f"records published during the hang were not delivered within {COVERED_LIMIT_S:.0f} s "
                            "of it: collection stalled")
        wait_until(lambda: time.monotonic() >= hang_started + scale.fault_s or not process.alive, scale.fault_s, 0.25)
        hang_s = round(time.monotonic() - hang_started, 2)
        hang_dates.append(_now())
        stack.runtime_control(logs_hang_seconds=0, logs_status=503)
        time.sleep(min(5.0, scale.fault_s / 2))
        stack.runtime_control(logs_status=0)
        ended = time.monotonic()
        back = wait_until(lambda: any("accepts logs again" in m for m in _messages(stack)), 60, 0.5)
        recovery = round(time.monotonic() - ended, 2) if back else None
        if not back:
            failures.append("the runtime never heard that its log endpoint is back")
        stack.stop_stream()
        final = stack.expected()
        if wait_covered(stack, final, 90, also=_checkpointed(stack, sum(final.values())), processes=[process]) is None:
            failures.append("the records published were not all delivered and checkpointed")
        # Stopping while the log endpoint hangs again: the queued lines get a bounded wait, not the SDK's minutes.
        stack.runtime_control(logs_hang_seconds=HANG)
        code, stop_s = process.terminate()
        stack.runtime_control(logs_hang_seconds=0)
        logs = stack.runtime_logs()
        runtime_stats = stack.runtime_stats()
        messages = [str(entry.get("message", "")) for entry in logs]
        result = reconcile(final, stack.reader.refresh().keys, stack.optional(), stack.set_aside())
        statuses = [m for m in messages if m.startswith("Status:")]
        # Said on time during the hang (they reached the runtime afterwards): the status clock never waits.
        on_time = sum(1 for entry in logs if str(entry.get("message", "")).startswith("Status:")
                      and hang_dates[0] <= str(entry.get("date", "")) <= hang_dates[1])
        result.update(
            kills=0, recovery_s=recovery, fault_s=scale.fault_s, hang_s=hang_s, exit_code=code, stop_s=stop_s,
            delivered_during_fault_s=covered, status_lines=len(statuses), status_lines_during_hang=on_time,
            status_sample=statuses[-1][:400] if statuses else None,
            log_failed_lines=sum("Sending logs to the runtime failed" in m for m in messages),
            log_back_lines=sum("accepts logs again" in m for m in messages),
            wide_state_modes=_wide_modes(stack.data_path / "state"),
            records_files=runtime_stats.get("records_files", 0),
            records_files_shared=runtime_stats.get("records_files_shared", 0),
            **output_counts(stack.processes), **runtime_counts(logs),
        )
    expected_on_time = int(hang_s / STATUS_S) - 1
    if on_time < expected_on_time or not any(FIGURES[trigger] in line for line in statuses):
        failures.append(f"{on_time} status lines dated during the {hang_s} s hang (at least "
                        f"{expected_on_time} expected), or none with the trigger's figures")
    if result["log_failed_lines"] != 1 or result["log_back_lines"] != 1:
        failures.append(f"the log endpoint's outage was said {result['log_failed_lines']} times, its end "
                        f"{result['log_back_lines']} times (once each expected)")
    if code != 0 or stop_s > STOP_BUDGET_S:
        failures.append(f"SIGTERM while the log endpoint hangs: exit code {code} after {stop_s} s "
                        f"(budget {STOP_BUDGET_S:.0f} s)")
    if result["wide_state_modes"]:
        failures.append(f"state readable by others: {result['wide_state_modes'][:5]}")
    if trigger == "o365" and (not result["records_files"] or result["records_files_shared"]):
        failures.append(f"{result['records_files_shared']} of {result['records_files']} playbook records files "
                        "readable by others")
    return judge(result, failures, tracebacks=True)
