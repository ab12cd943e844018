"""Office 365 failure classes of issue 10 (items 5-9) and late content (issue 12), each against the emulator:

- ``o365_slow_blobs``: every blob takes longer to arrive than ``request_timeout_seconds`` (bytes keep coming).
- ``o365_clock_skew``: the API's clock two hours ahead of the collector's (windows built on the local clock would
  start before the API's 7-day limit and be refused).
- ``o365_second_instance``: a second process on the same data path: exit 2, one critical line, no duplicate.
- ``o365_missing_dlp_permission``: the app lacks ActivityFeed.ReadDlp: the other types are collected, one warning
  names the permission and DLP.All, nothing critical.
- ``o365_restart_after_fault``: stopped while throttled before every first window was listed, then restarted:
  everything delivered, no "past the retention" alarm.
- ``o365_late_blobs``: blobs becoming listable 30 min and 20 h after their creation, while the trigger runs.

Each: 0 lost, no duplicate, and the log lines a person needs (and no others).
"""

from __future__ import annotations

import time
from collections import Counter

from benchmarks.reliability.context import Context
from benchmarks.reliability.processes import output_counts
from benchmarks.reliability.stacks import O365Stack, reconcile, wait_covered
from benchmarks.reliability.verdict import judge
from emulators.process import wait_until
from tests.o365_helpers import free_port

DELIVER_WITHIN_S = 120.0
GAP_WORDS = "past the API's 7-day retention"


def _messages(stack: O365Stack, level: str | None = None, words: str = "") -> list[str]:
    return [str(entry.get("message", "")) for entry in stack.runtime_logs()
            if (level is None or entry.get("level") == level) and words in str(entry.get("message", ""))]


def _finish(stack: O365Stack, expected: Counter, recovery: float | None, failures: list[str], **extra) -> dict:
    result = {**reconcile(expected, stack.reader.refresh().keys), "kills": 0, "recovery_s": recovery,
              **output_counts(stack.processes), **extra}
    if recovery is None:
        failures.append(f"not every record delivered within {DELIVER_WITHIN_S:.0f} s")
    return judge(result, failures, duplicates=True, tracebacks=True)


def _deliver(stack: O365Stack, config: dict, expected: Counter | None = None) -> tuple[Counter, float | None]:
    """Run one trigger until every expected record arrived; stopped with SIGTERM."""
    expected = expected if expected is not None else stack.expected()
    process = stack.spawn(config)
    recovery = wait_covered(stack, expected, DELIVER_WITHIN_S, processes=[process])
    process.terminate()
    return expected, recovery


def slow_blobs(ctx: Context) -> dict:
    records = 400 if ctx.scale.name != "smoke" else 200
    # ~1.4 KB a record: each body takes about three times the timeout, a tenth of a second's worth at a time.
    with O365Stack(ctx, "o365_slow_blobs", "--blobs", "2", "--records-per-blob", str(records),
                   "--subscribed", "all", "--blob-bytes-per-second", str(records * 1400 // 6)) as stack:
        expected, recovery = _deliver(stack, stack.config(request_timeout_seconds=2))
        failures = []
        return _finish(stack, expected, recovery, failures, request_timeout_seconds=2,
                       blob_seconds=round(records * 1400 / (records * 1400 // 6), 1))


def clock_skew(ctx: Context) -> dict:
    with O365Stack(ctx, "o365_clock_skew", "--blobs", "4", "--records-per-blob", "5",
                   "--clock-offset-seconds", "7200") as stack:
        expected, recovery = _deliver(stack, stack.config())
        refused = _messages(stack, words="refused")
        failures = [f"windows refused: {refused[:2]}"] if refused else []
        return _finish(stack, expected, recovery, failures, api_clock_ahead_s=7200, refusals_logged=len(refused))


def second_instance(ctx: Context) -> dict:
    with O365Stack(ctx, "o365_second_instance", "--blobs", "4", "--records-per-blob", "5",
                   "--continuous", "0.2") as stack:
        first = stack.spawn(stack.config(), name="first")
        expected = stack.expected()
        failures = []
        if wait_covered(stack, expected, DELIVER_WITHIN_S, processes=[first]) is None:
            failures.append("the first instance did not deliver the backlog")
        stack.rig.ports = (free_port(), free_port())  # its own monitoring ports: only the data path is shared
        second = stack.spawn(stack.config(), name="second")
        code = second.wait(60)
        critical = _messages(stack, "critical")
        if code != 2:
            failures.append(f"the second instance's exit code {code} (expected 2)")
        if len(critical) != 1 or "another instance" not in critical[0]:
            failures.append(f"expected one critical line about another instance, got {critical[:3]}")
        if not first.alive:
            failures.append("the first instance stopped")
        stack.stop_stream()
        expected = stack.expected()  # the stream's blobs too
        recovery = wait_covered(stack, expected, DELIVER_WITHIN_S, processes=[first])
        first.terminate()
        return _finish(stack, expected, recovery, failures, second_exit_code=code, critical=critical[:1])


def missing_dlp_permission(ctx: Context) -> dict:
    with O365Stack(ctx, "o365_missing_dlp_permission", "--blobs", "3", "--records-per-blob", "5",
                   "--no-dlp-permission") as stack:
        others = [ct for ct in stack.emulator.info["content_types"] if ct != "DLP.All"]
        process = stack.spawn(stack.config())
        # What the app may read: DLP.All content is never published to it (no subscription can start).
        expected = Counter(stack.emulator.published(all=1, contentType=",".join(others))["ids"])
        recovery = wait_covered(stack, expected, DELIVER_WITHIN_S, processes=[process])
        said = wait_until(lambda: _messages(stack, "warning", "ActivityFeed.ReadDlp"), 20)
        warnings = _messages(stack, "warning", "ActivityFeed.ReadDlp")
        failures = []
        if not said or len(warnings) != 1 or "DLP.All is not collected" not in warnings[0]:
            failures.append(f"expected one warning naming ActivityFeed.ReadDlp and DLP.All, got {warnings[:2]}")
        if _messages(stack, "critical"):
            failures.append(f"critical lines: {_messages(stack, 'critical')[:2]}")
        if not process.alive:
            failures.append("the trigger stopped")
        process.terminate()
        return _finish(stack, expected, recovery, failures, warning=warnings[:1])


def restart_after_fault(ctx: Context) -> dict:
    with O365Stack(ctx, "o365_restart_after_fault", "--blobs", "3", "--records-per-blob", "5",
                   "--subscribed", "all", "--quota-per-minute", "4") as stack:
        checkpoint = stack.data_path / "state" / stack.parameter / "office365-checkpoint.json"
        faulty = stack.spawn(stack.config(), name="during-fault")
        failures = []
        if not wait_until(lambda: checkpoint.exists() and b'"initial":["' in checkpoint.read_bytes(), 60):
            failures.append("no checkpoint written while throttled")
        faulty.terminate()
        stack.emulator.control(quota_per_minute=0)
        started = time.monotonic()
        expected, recovery = _deliver(stack, stack.config())
        gaps = _messages(stack, words=GAP_WORDS)
        if gaps:
            failures.append(f"false alarm: {gaps[:1]}")
        return _finish(stack, expected, recovery, failures, gap_alarms=len(gaps),
                       restart_to_done_s=round(time.monotonic() - started, 1))


def late_blobs(ctx: Context) -> dict:
    with O365Stack(ctx, "o365_late_blobs", "--blobs", "2", "--records-per-blob", "5") as stack:
        process = stack.spawn(stack.config(relist_interval_minutes=0.1))
        failures = []
        if wait_covered(stack, stack.expected(), DELIVER_WITHIN_S, processes=[process]) is None:
            failures.append("the backlog was not delivered")
        for seconds_late in (1800, 72000):
            stack.emulator.control(publish_late={"seconds_late": seconds_late})
        expected = stack.expected()
        recovery = wait_covered(stack, expected, DELIVER_WITHIN_S, processes=[process])
        process.terminate()
        return _finish(stack, expected, recovery, failures, late_blobs_per_type=2)


SCENARIOS = {
    "o365_slow_blobs": slow_blobs,
    "o365_clock_skew": clock_skew,
    "o365_second_instance": second_instance,
    "o365_missing_dlp_permission": missing_dlp_permission,
    "o365_restart_after_fault": restart_after_fault,
    "o365_late_blobs": late_blobs,
}
