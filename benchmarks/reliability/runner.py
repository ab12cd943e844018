"""The catalogue of scenarios, and running a selection of them into the report document."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from benchmarks.reliability import bad_config, bad_input, delivery, faults, kills, rebalance, runtime_logs, secrets
from benchmarks.reliability import eventhub_hardening, eventhub_stalls, o365_hardening, o365_stall
from benchmarks.reliability.context import Context
from emulators.process import running_children

Scenario = Callable[[Context], dict]

# Kills and stops run alone (a backlog at full speed, stop times measured); the others, mostly waiting through a
# fault or a timeout, ``jobs`` at a time.
SOLO: dict[str, Scenario] = {
    "o365_kills": partial(kills.kills, trigger="o365"),
    "eventhub_kills": partial(kills.kills, trigger="eventhub"),
    "o365_graceful_stop": partial(kills.graceful_stop, trigger="o365"),
    "eventhub_graceful_stop": partial(kills.graceful_stop, trigger="eventhub"),
}
SHARED: dict[str, Scenario] = {
    **{name: partial(faults.run, name=name) for name in faults.FAULTS},
    "eventhub_rebalancing": rebalance.rebalancing,
    "o365_bad_input": bad_input.o365_bad_input,
    "eventhub_bad_input": bad_input.eventhub_bad_input,
    "eventhub_fuzz": bad_input.eventhub_fuzz,
    "o365_bad_config": bad_config.o365_bad_config,
    **o365_hardening.SCENARIOS,
    **o365_stall.SCENARIOS,
    **eventhub_hardening.SCENARIOS,
    **eventhub_stalls.SCENARIOS,
    "eventhub_bad_config": bad_config.eventhub_bad_config,
    **{f"{trigger}_{name}": partial(scenario, trigger=trigger) for trigger in ("o365", "eventhub")
       for name, scenario in (("refused_events", delivery.refused_events),
                              ("oversize_shortened", delivery.oversize_shortened),
                              ("wrong_intake", delivery.wrong_intake),
                              ("stop_runtime_hangs", delivery.stop_runtime_hangs))},
    "o365_runtime_logs_down": partial(runtime_logs.run, trigger="o365"),
    "eventhub_runtime_logs_down": partial(runtime_logs.run, trigger="eventhub"),
}
SCENARIOS: dict[str, Scenario] = {**SOLO, **SHARED, "secrets": secrets.scan}
# The fields the issue asks of every scenario, in its order.
REQUIRED = ("published", "delivered_unique", "lost", "duplicates", "kills", "recovery_s", "passed")


def run_one(ctx: Context, name: str, log: Callable[[str], None] = print) -> dict:
    log(f"== {name} ...")
    started = time.monotonic()
    before = running_children()
    try:
        result = SCENARIOS[name](ctx)
    except Exception as error:  # noqa: BLE001 - a broken scenario is a failed one, the others still run
        result = {"passed": False, "failures": [f"the scenario crashed: {error!r}"],
                  "traceback": traceback.format_exc()[-4000:]}
    left = [child for child in running_children() - before if child.thread == threading.get_ident()]
    if left:  # a scenario that leaves a server or a trigger running has a bug: end them, and say so
        for child in left:
            child.stop()
        result = {**result, "passed": False,
                  "failures": [*result.get("failures", []), f"left running: {sorted(c.name for c in left)}"]}
    ordered = {key: result.get(key, 0 if key not in ("recovery_s", "passed") else None) for key in REQUIRED}
    ordered["passed"] = bool(result.get("passed"))
    ordered.update((key, value) for key, value in result.items() if key not in ordered)
    ordered["seconds"] = round(time.monotonic() - started, 1)
    log(f"   {name}: {summary(ordered)}")
    return ordered


def summary(result: dict) -> str:
    text = (f"{'PASS' if result['passed'] else 'FAIL'} published {result['published']} lost {result['lost']} "
            f"duplicates {result['duplicates']} kills {result['kills']} recovery_s {result['recovery_s']} "
            f"({result['seconds']} s)")
    if result.get("failures"):
        text += "\n      " + "\n      ".join(result["failures"])
    return text


def run(ctx: Context, names: list[str], jobs: int = 1, log: Callable[[str], None] = print) -> dict:
    """Run ``names`` (the secrets scan last, over everything the others produced); the report's scenarios."""
    results: dict[str, dict] = {}
    for name in [name for name in names if name in SOLO]:
        results[name] = run_one(ctx, name, log)
    shared = [name for name in names if name in SHARED]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for name, result in zip(shared, pool.map(lambda name: run_one(ctx, name, log), shared)):
            results[name] = result
    if "secrets" in names:
        results["secrets"] = run_one(ctx, "secrets", log)
    return {name: results[name] for name in names}
