"""Delivery to the runtime: one scenario per class of answer, both triggers as ``python main.py``.

- ``refused_events``: the runtime refuses for good (HTTP 400) every request holding one of a few records, amid a
  backlog. The rest must all arrive without a stall, the refused records must all be in the set-aside file
  (with their origin) and counted in one log line per refused request; the resume point must pass them.
- ``oversize_shortened``: records over the intake's 250,000-byte limit must arrive shortened (under the limit,
  marked ``sekoia_truncated``, naming the original by SHA-256), the originals kept whole locally, logged once each.
- ``wrong_intake``: a wrong ``intake_key`` (401), a refused one (403) and a wrong ``intake_server`` (404): one
  critical log naming the field, exit code 2, nothing acknowledged; then the right configuration loses nothing.
- ``stop_runtime_hangs``: SIGTERM while the runtime holds every delivery request for 65 s: the process must be
  gone within ``STOP_LIMIT_S``; a restart against a healthy runtime delivers everything.
"""

from __future__ import annotations

import math
import re
import uuid
from collections import Counter

import orjson

from benchmarks.reliability.bad_config import expect_configuration_error
from benchmarks.reliability.context import Context
from benchmarks.reliability.metrics import counters, total
from benchmarks.reliability.processes import TriggerProcess, output_counts, runtime_counts
from benchmarks.reliability.stacks import (EventHubStack, O365Stack, Stack, reconcile, set_aside_entries,
                                           wait_covered)
from benchmarks.reliability.verdict import finish
from emulators.process import wait_until
from tests.eventhub_helpers import ID_FIELD, records_with_ids

RECORDS = {"full": 20_000, "quick": 5_000, "smoke": 1_000}  # the backlog of each scenario
RECORDS_PER_BLOB = 50
BATCH = 200  # small batches: a backlog is many batches, and a refused record is one among them
REFUSED = 5
OVERSIZE_PER_CONTENT_TYPE = 1
DELIVER_WITHIN_S = 120.0
STOP_LIMIT_S = 20.0  # what an orchestrator waits after SIGTERM
HANG_S = 65.0  # the intake measured in the issue
EVENT_LIMIT = 250_000
PREFIX = "symphony_module_microsoft_"
WRONG_KEY = "Wrong-intake-key-" + uuid.uuid4().hex


def _stack(ctx: Context, trigger: str, name: str, *o365_args: str) -> Stack:
    records = RECORDS[ctx.scale.name]
    if trigger == "o365":
        blobs = math.ceil(records / (5 * RECORDS_PER_BLOB))
        return O365Stack(ctx, name, "--blobs", str(blobs), "--records-per-blob", str(RECORDS_PER_BLOB), *o365_args)
    stack = EventHubStack(ctx, name)
    stack.feed.send_records(records_with_ids(records, "d"))
    return stack


def _config(stack: Stack, **overrides) -> dict:
    extra = {"load_balancing_interval": 1} if isinstance(stack, EventHubStack) else {}
    return stack.config(batch_max_events=BATCH, **extra, **overrides)


def _checkpointed(stack: Stack, records: int):
    def check() -> bool:
        try:
            return stack.committed() >= records
        except Exception:  # noqa: BLE001 - the checkpoint store may be busy
            return False

    return check


def _end(stack: Stack, process: TriggerProcess, expected: Counter, failures: list[str]) -> dict:
    """Until everything expected arrived (or was set aside) and was checkpointed; then SIGTERM and count."""
    covered = wait_covered(stack, expected, DELIVER_WITHIN_S, also=_checkpointed(stack, sum(expected.values())),
                           processes=[process])
    if covered is None:
        failures.append(f"not everything was delivered or set aside and checkpointed within {DELIVER_WITHIN_S:.0f} s")
    page = process.scrape()
    code, stop_s = process.terminate()
    if code != 0:
        failures.append(f"exit code {code} after SIGTERM")
    result = reconcile(expected, stack.reader.refresh().keys, stack.optional(), stack.set_aside())
    result.update(kills=0, recovery_s=covered, exit_code=code, stop_s=stop_s, **output_counts(stack.processes),
                  **runtime_counts(stack.runtime_logs()))
    result["metrics"] = {name: total(counters(page), PREFIX + name + "_total")
                         for name in ("refused_events", "oversize_events", "delivered_events")}
    return result


_REFUSED_LINE = re.compile(r"The runtime refused (an event|\d+ events) \(")


def _refusals_logged(stack: Stack, origin_word: str) -> tuple[int, int]:
    """Refusal lines (one per request) naming an origin, and the events they count."""
    lines = [str(entry.get("message", "")) for entry in stack.runtime_logs()]
    counts = [match.group(1) for line in lines if origin_word in line
              for match in [_REFUSED_LINE.search(line)] if match is not None]
    return len(counts), sum(1 if count == "an event" else int(count.split()[0]) for count in counts)


# -- refused for good ---------------------------------------------------------------------------------------------


def refused_events(ctx: Context, trigger: str) -> dict:
    name = f"{trigger}_refused_events"
    rng = ctx.rng(name)
    failures: list[str] = []
    with _stack(ctx, trigger, name) as stack:
        if isinstance(stack, EventHubStack):
            # Markers end with "-end": no marker is a prefix of another.
            shapes = records_with_ids(REFUSED, "x")
            refused = [orjson.dumps({**orjson.loads(shape), ID_FIELD: f"refuse-{i}-end"}) for i, shape in enumerate(shapes)]
            stack.feed.send_records(refused + records_with_ids(RECORDS[ctx.scale.name] // 4, "after"), per_envelope=20)
            markers = [f"refuse-{i}-end" for i in range(REFUSED)]
        else:
            markers = rng.sample(sorted(stack.expected()), REFUSED)  # record Ids: unique strings
        stack.runtime_control(refuse_markers=markers, refuse_status=400)
        expected = stack.expected()
        process = stack.spawn(_config(stack))
        result = _end(stack, process, expected, failures)
        entries = set_aside_entries(stack.data_path)
        lines, logged = _refusals_logged(stack, _origin_word(trigger))
        refused_requests = stack.runtime_stats()["refused"]
    kept = [entry for entry in entries if entry["reason"].startswith("refused")]
    kept_markers = sorted(marker for marker in markers for entry in kept if marker in entry["event"])
    result.update(refused=len(markers), refused_kept=len(kept), refused_requests=refused_requests)
    if kept_markers != sorted(markers) or len(kept) != len(markers):
        failures.append(f"{len(kept)} events set aside as refused, expected exactly the {len(markers)} refused records")
    if any(not entry.get("origin") for entry in kept):
        failures.append("a set-aside event has no origin")
    result.update(refusal_lines=lines)
    if logged != len(markers) or lines > len(markers):
        failures.append(f"{lines} refusal lines naming their origin count {logged} events, expected {len(markers)}")
    if result["metrics"]["refused_events"] != len(markers):
        failures.append(f"refused_events_total is {result['metrics']['refused_events']}, expected {len(markers)}")
    if result["metrics"]["delivered_events"] != result["published"] - len(markers):
        failures.append(f"delivered_events_total is {result['metrics']['delivered_events']}: refused events counted")
    if result["delivered_unique"] != result["published"] - len(markers):
        failures.append(f"{result['delivered_unique']} delivered of the {result['published'] - len(markers)} not refused")
    return finish(result, failures)


def _origin_word(trigger: str) -> str:
    return "blob" if trigger == "o365" else "partition"


def _safe(call):
    try:
        return call()
    except Exception:  # noqa: BLE001
        return None


# -- oversize ----------------------------------------------------------------------------------------------------


def oversize_shortened(ctx: Context, trigger: str) -> dict:
    name = f"{trigger}_oversize_shortened"
    failures: list[str] = []
    args = ("--oversize-records", str(OVERSIZE_PER_CONTENT_TYPE), "--oversize-kb", "400") if trigger == "o365" else ()
    with _stack(ctx, trigger, name, *args) as stack:
        if isinstance(stack, EventHubStack):
            big = [orjson.dumps({"category": "AuditLogs", ID_FIELD: f"big-{i}", "properties": {
                       "blob": "x" * (300_000 + i * 50_000), "keep": "short"}}) for i in range(3)]
            many = orjson.dumps({"category": "AuditLogs", ID_FIELD: "many", "values": list(range(80_000))})
            stack.feed.send_records(big + [many], per_envelope=1)
            stack.feed.send([b"a plain text line " * 20_000], [["text:" + "a plain text line " * 20_000]])
        expected = stack.expected()
        process = stack.spawn(_config(stack))
        result = _end(stack, process, expected, failures)
        entries = [entry for entry in set_aside_entries(stack.data_path) if entry["reason"] == "oversize"]
        shortened = [line for line in stack.reader.path.read_bytes().splitlines() if b"sekoia_truncated" in line]
        lines = [str(entry.get("message", "")) for entry in stack.runtime_logs()
                 if "sent shortened" in str(entry.get("message", ""))]
    originals = {entry["sha256"]: entry for entry in entries}
    oversize = len(originals)
    result.update(oversize=oversize, shortened_delivered=len(shortened),
                  largest_shortened_bytes=max(map(len, shortened), default=0), shortened_logs=len(lines))
    if not oversize:
        failures.append("no oversize event was published")
    if len(shortened) < oversize or result["lost"]:
        failures.append(f"{len(shortened)} shortened events arrived for {oversize} oversize ones")
    if any(len(line) > EVENT_LIMIT for line in shortened):
        failures.append(f"a shortened event is over {EVENT_LIMIT} bytes ({result['largest_shortened_bytes']})")
    named = sum(any(sha in line.decode("utf-8", "replace") for line in shortened) for sha in originals)
    if named != oversize:
        failures.append(f"{named} of {oversize} kept originals are named by a shortened event")
    if len(lines) != oversize or any(_origin_word(trigger) not in line for line in lines):
        failures.append(f"{len(lines)} 'sent shortened' lines naming their origin for {oversize} oversize events")
    if result["metrics"]["oversize_events"] != oversize:
        failures.append(f"oversize_events_total is {result['metrics']['oversize_events']}, expected {oversize}")
    return finish(result, failures)


# -- configuration refused by the runtime -----------------------------------------------------------------------


def wrong_intake(ctx: Context, trigger: str) -> dict:
    name = f"{trigger}_wrong_intake"
    failures: list[str] = []
    ctx.artifacts.add_secrets(WRONG_KEY)
    with _stack(ctx, trigger, name) as stack:
        intake_url = stack.env(stack.config())["INTAKE_URL"]
        cases = {
            "wrong_key": ({"intake_key": WRONG_KEY}, {}, "intake_key"),
            "refused_key": ({}, {"deny_status": 403}, "intake_key"),
            "wrong_server": ({"intake_server": intake_url.rstrip("/") + "/no-intake-here"}, {}, "intake_server"),
        }
        results = {}
        for case, (overrides, knobs, field) in cases.items():
            stack.runtime_control(**knobs)
            results[case] = _refused_configuration(stack, case, _config(stack, **overrides), field)
            stack.runtime_control(deny_status=0)
            failures += [f"{case}: {problem}" for problem in results[case].pop("problems")]
        expected = stack.expected()
        process = stack.spawn(_config(stack), name="right")
        result = _end(stack, process, expected, failures)
    result["cases"] = results
    return finish(result, failures)


def _refused_configuration(stack: Stack, name: str, config: dict, field: str) -> dict:
    result = expect_configuration_error(stack, name, config, field, lambda: {
        "committed": _safe(stack.committed), "delivered": stack.reader.refresh().total})
    if result["committed"] or result["delivered"]:
        result["problems"].append(f"{result['committed']} records acknowledged and {result['delivered']} delivered "
                                  "with a refused configuration")
    return result


# -- stopping while the runtime hangs -------------------------------------------------------------------------


def stop_runtime_hangs(ctx: Context, trigger: str) -> dict:
    name = f"{trigger}_stop_runtime_hangs"
    failures: list[str] = []
    with _stack(ctx, trigger, name) as stack:
        stack.runtime_control(hang_seconds=HANG_S)
        expected = stack.expected()
        config = _config(stack)
        process = stack.spawn(config, name="hung")
        # Both senders stuck in an HTTP call and the producer held by backpressure: the worst moment to stop.
        if not wait_until(lambda: stack.runtime_stats()["hung"] >= 2 or not process.alive, 90, 0.1):
            failures.append("the delivery requests did not reach the hanging runtime")
        code, stop_s = process.terminate(timeout=HANG_S + 30)
        if stop_s > STOP_LIMIT_S or code != 0:
            failures.append(f"exit code {code} {stop_s} s after SIGTERM (limit {STOP_LIMIT_S:.0f} s)")
        committed_at_stop = _safe(stack.committed)
        if committed_at_stop:
            failures.append(f"{committed_at_stop} records acknowledged though the runtime confirmed none")
        stack.runtime_control(hang_seconds=0)
        final = stack.spawn(config, name="after")
        result = _end(stack, final, expected, failures)
    result.update(stop_s_while_hanging=stop_s, exit_code_while_hanging=code, committed_at_stop=committed_at_stop)
    return finish(result, failures)
