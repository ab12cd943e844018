"""Never silently stuck (issue 16, Office 365 side), each while a stream of new content flows, with the trigger's
default timeouts (request_timeout_seconds 30, stall_seconds 60):

- ``o365_frozen_api``: every connection open to the Management API goes silent for good (a NAT or firewall that
  dropped them: no byte, no reset; new connections pass).
- ``o365_frozen_entra``: the same for the keep-alive connection to Entra, with tokens that must be renewed meanwhile.
- ``o365_silent_stall``: blob transfers go silent while a read timeout of ten minutes allows it (large blobs on a
  slow link): only the progress watch can find it; records waiting at the stall must arrive within 2 minutes.
- ``o365_clock_ahead``: the API's clock 15 minutes ahead of the collector's, content up to the API's now: no window
  refused, nothing waits for the collector's clock.
- ``o365_future_resume``: the checkpoint says content up to two hours from now was listed: one warning with both
  times, and the content of the last hour arrives.

Judged on records lost, duplicates, and seconds from the fault to its detection and to recovery (every record
published by the fault's start, and some after, delivered).
"""

from __future__ import annotations

import time

import orjson

from benchmarks.reliability.context import Context
from benchmarks.reliability.processes import output_counts, runtime_counts
from benchmarks.reliability.stacks import O365Stack, reconcile, wait_covered
from benchmarks.reliability.verdict import judge
from emulators.netfault import FaultProxy
from emulators.process import wait_until
from office365.auth import TokenProvider

RECOVERY_LIMIT_S = 120.0  # records waiting at a stall arrive within 2 minutes
RECORDS_PER_BLOB = 20
STREAM_PER_S = 50


def _messages(stack: O365Stack, words: str) -> list[str]:
    return [str(entry.get("message", "")) for entry in stack.runtime_logs() if words in str(entry.get("message", ""))]


def _after(started: float, predicate, timeout: float) -> float | None:
    """Seconds from ``started`` until ``predicate`` held (None: not within ``timeout``)."""
    if not wait_until(predicate, timeout, 0.25):
        return None
    return round(time.monotonic() - started, 2)


def _settle(stack: O365Stack, process, failures: list[str], **extra) -> dict:
    """The stream stops, the rest is delivered, the trigger stopped with SIGTERM; records counted."""
    stack.stop_stream()
    final = stack.expected()
    if wait_covered(stack, final, 90, processes=[process]) is None:
        failures.append("not everything published was delivered after the fault")
    alive = process.alive
    code, stop_s = process.terminate()
    result = reconcile(final, stack.reader.refresh().keys)
    result.update(kills=0, exit_code=code, stop_s=stop_s, **extra, **output_counts(stack.processes),
                  **runtime_counts(stack.runtime_logs()))
    if not alive:
        failures.append("the trigger ended during the fault")
    return judge(result, failures, exit_codes=True, duplicates=True, tracebacks=True)


def _keeping_up(stack: O365Stack, process, failures: list[str]) -> None:
    if wait_covered(stack, stack.expected(), 90, processes=[process]) is None:
        failures.append("the trigger did not keep up with the stream before the fault")


def _recovered(stack: O365Stack, process, started: float, published: int) -> float | None:
    """Seconds from ``started`` until what was published by then, and more published after, was delivered."""
    if not wait_until(lambda: sum(stack.expected().values()) > published, 30, 0.1):
        return None
    snapshot = stack.expected()
    covered = wait_covered(stack, snapshot, RECOVERY_LIMIT_S + 30, processes=[process])
    return None if covered is None else round(time.monotonic() - started, 2)


def frozen_api(ctx: Context) -> dict:
    failures: list[str] = []
    with O365Stack(ctx, "o365_frozen_api", "--blobs", "4", "--records-per-blob", str(RECORDS_PER_BLOB)) as stack, \
            FaultProxy("127.0.0.1", stack.emulator.info["port"]) as api:
        stack.start_stream(STREAM_PER_S, RECORDS_PER_BLOB)
        process = stack.spawn(stack.config(management_url=f"https://{api.address}", request_timeout_seconds=30))
        _keeping_up(stack, process, failures)
        accepted = api.stats.accepted
        frozen = api.freeze()
        started = time.monotonic()
        published = sum(stack.expected().values())
        detect = _after(started, lambda: api.stats.accepted > accepted, RECOVERY_LIMIT_S)
        recovery = _recovered(stack, process, started, published)
        if recovery is None or recovery > RECOVERY_LIMIT_S:
            failures.append(f"no recovery within {RECOVERY_LIMIT_S:.0f} s of the freeze ({recovery})")
        return _settle(stack, process, failures, frozen_connections=frozen, detect_s=detect, recovery_s=recovery,
                       request_timeout_seconds=30)


def frozen_entra(ctx: Context) -> dict:
    failures: list[str] = []
    # Tokens of 90 s are renewed about every 71 s: one renewal meets the frozen connection.
    with O365Stack(ctx, "o365_frozen_entra", "--blobs", "4", "--records-per-blob", str(RECORDS_PER_BLOB),
                   "--token-lifetime", "90") as stack, \
            FaultProxy("127.0.0.1", stack.emulator.info["port"]) as entra:
        stack.start_stream(STREAM_PER_S, RECORDS_PER_BLOB)
        process = stack.spawn(stack.config(login_url=f"https://{entra.address}", request_timeout_seconds=30))
        _keeping_up(stack, process, failures)
        # Frozen right after a renewal: the next one is due renewal_delay later, on the silent connection.
        issued = stack.emulator.stats()["tokens_issued"]
        if not wait_until(lambda: stack.emulator.stats()["tokens_issued"] > issued, 120, 0.05):
            failures.append("no token renewal before the freeze")
        issued, accepted = stack.emulator.stats()["tokens_issued"], entra.stats.accepted
        frozen = entra.freeze()
        started = time.monotonic()
        due = round(TokenProvider.renewal_delay(90), 2)
        detect = _after(started, lambda: entra.stats.accepted > accepted, 150)
        renewed = _after(started, lambda: stack.emulator.stats()["tokens_issued"] > issued, 150)
        if renewed is None:
            failures.append("no token renewed after the freeze")
        published = sum(stack.expected().values())
        recovery = _recovered(stack, process, time.monotonic(), published)
        if recovery is None:
            failures.append("records published after the renewal were not delivered")
        auth_failures = sum(stack.emulator.stats()["auth_failures"].values())
        if auth_failures:
            failures.append(f"{auth_failures} requests went out with an expired token")
        # detect_s and token_renewed_s count from the freeze, the renewal going out renewal_due_s after it.
        return _settle(stack, process, failures, frozen_connections=frozen, renewal_due_s=due, detect_s=detect,
                       token_renewed_s=renewed, recovery_s=recovery, auth_failures=auth_failures,
                       silence_cost_s=None if renewed is None else round(renewed - due, 2))


def silent_stall(ctx: Context) -> dict:
    failures: list[str] = []
    records = 200
    with O365Stack(ctx, "o365_silent_stall", "--blobs", "3", "--records-per-blob", str(records),
                   "--subscribed", "all") as stack, FaultProxy("127.0.0.1", stack.emulator.info["port"]) as api:
        stack.emulator.control(blob_bytes_per_second=records * 1400 / 20)  # twenty seconds a blob
        process = stack.spawn(stack.config(management_url=f"https://{api.address}", request_timeout_seconds=600))
        if not wait_until(lambda: api.stats.bytes_down > 200_000 or not process.alive, 90, 0.25):
            failures.append("the blob transfers did not start")
        published = stack.expected()
        frozen = api.freeze()
        started = time.monotonic()
        stack.emulator.control(blob_bytes_per_second=0)
        detect = _after(started, lambda: bool(_messages(stack, "has made no progress")), RECOVERY_LIMIT_S)
        covered = wait_covered(stack, published, RECOVERY_LIMIT_S + 30, processes=[process])
        recovery = None if covered is None else round(time.monotonic() - started, 2)
        if recovery is None or recovery > RECOVERY_LIMIT_S:
            failures.append(f"the records waiting at the stall were not delivered within {RECOVERY_LIMIT_S:.0f} s "
                            f"({recovery})")
        stalls = _messages(stack, "has made no progress")
        return _settle(stack, process, failures, frozen_connections=frozen, detect_s=detect, recovery_s=recovery,
                       stall_warnings=len(stalls), stall_warning=stalls[:1], request_timeout_seconds=600)


def clock_ahead(ctx: Context) -> dict:
    failures: list[str] = []
    # 1,000 records per content type over the API's last 20 minutes: a quarter of it in minutes the collector's own
    # clock has not reached.
    with O365Stack(ctx, "o365_clock_ahead", "--blobs", "50", "--records-per-blob", "20", "--spread-hours", "0.33",
                   "--clock-offset-seconds", "900") as stack:
        expected = stack.expected()
        process = stack.spawn(stack.config(poll_interval_seconds=30))
        started = time.monotonic()
        recovery = wait_covered(stack, expected, RECOVERY_LIMIT_S, processes=[process])
        if recovery is None:
            missing = sum((expected - stack.reader.refresh().keys).values())
            failures.append(f"{missing} of {sum(expected.values())} records not delivered within "
                            f"{RECOVERY_LIMIT_S:.0f} s")
        refused = stack.emulator.stats()["responses"].get("content_list 400", 0)
        if refused or _messages(stack, "refused"):
            failures.append(f"{refused} listings refused")
        return _settle(stack, process, failures, api_clock_ahead_s=900, recovery_s=recovery, refused_listings=refused,
                       all_delivered_s=round(time.monotonic() - started, 2))


def future_resume(ctx: Context) -> dict:
    failures: list[str] = []
    with O365Stack(ctx, "o365_future_resume", "--blobs", "10", "--records-per-blob", "20",
                   "--spread-hours", "0.5") as stack:
        content_types = stack.emulator.info["content_types"]
        state = stack.data_path / "state" / stack.parameter
        state.mkdir(parents=True)
        ahead = time.time() + 7200
        (state / "office365-checkpoint.json").write_bytes(
            orjson.dumps({"version": 1, "resume": {ct: ahead for ct in content_types}, "initial": []}))
        expected = stack.expected()
        process = stack.spawn(stack.config())
        started = time.monotonic()
        recovery = wait_covered(stack, expected, RECOVERY_LIMIT_S, processes=[process])
        if recovery is None:
            failures.append(f"the content of the last half hour was not delivered within {RECOVERY_LIMIT_S:.0f} s")
        warnings = _messages(stack, "ahead of the Management API's clock")
        if len(warnings) != 1:
            failures.append(f"expected one warning naming both times, got {len(warnings)}")
        return _settle(stack, process, failures, recovery_s=recovery, warning=warnings[:1],
                       all_delivered_s=round(time.monotonic() - started, 2), resume_ahead_s=7200)


SCENARIOS = {
    "o365_frozen_api": frozen_api,
    "o365_frozen_entra": frozen_entra,
    "o365_silent_stall": silent_stall,
    "o365_clock_ahead": clock_ahead,
    "o365_future_resume": future_resume,
}
