"""The benchmark report: a table for the terminal and a plot a person reads at a glance.

Every scenario states its goals as ``{"metric", "measured", "op", "target", "met"}`` (``measure.goal``); a quick
run's figures are marked indicative: its workloads are a fifth of the full ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.measure import goal  # noqa: E402


def goals_of(result: dict) -> list[dict]:
    """A scenario's goals; ``o365_freshness`` states its own per lateness class (p99 against its goal)."""
    if "goals" in result:
        return result["goals"]
    found = []
    for name, value in result.items():
        if isinstance(value, dict) and "goal_p99_s" in value:
            found.append(goal(f"p99 s, {name}", value.get("p99_s"), "<=", value["goal_p99_s"]))
    if "relist_cost_at_10k_blobs_per_day" in result:
        share = result["relist_cost_at_10k_blobs_per_day"]["quota_share"]
        found.append(goal("re-list share of the quota", share, "<=", 0.03))
    return found


def _verdict(item: dict) -> str:
    return "not measured" if item["met"] is None else "met" if item["met"] else "SHORT"


def _goal_text(item: dict) -> str:
    return f"{item['metric']} {item['measured']} (goal {item['op']} {item['target']:,}) {_verdict(item)}"


def line(name: str, result: dict) -> str:
    return f"   {name}: " + "; ".join(_goal_text(item) for item in goals_of(result))


def table(document: dict) -> str:
    rows = [("scenario", "records", "ready s", "1st req s", "1st rec s", "records/s", "steady rec/s", "CPU s",
             "us/rec", "peak RSS MB", "baseline rec/s", "base steady")]
    for name, result in document["scenarios"].items():
        runs = [(name, result)] if "ours" in result else [(f"{name}.{k}", v) for k, v in result.items()
                                                            if isinstance(v, dict) and "ours" in v]
        for label, data in runs:
            ours, base = data["ours"], data.get("baseline", {})
            rows.append((label, ours["records"], ours.get("ready_s"), ours.get("first_request_s"),
                         ours.get("first_delivery_s"), ours["records_per_s"], ours.get("steady_records_per_s", ""),
                         ours["cpu_seconds"], ours["cpu_us_per_record"], ours["peak_rss_mb"],
                         base.get("records_per_s", ""), base.get("steady_records_per_s", "")))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    text = "\n".join("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)) for row in rows)
    marker = " (quick run: indicative)" if document.get("quick") else ""
    goals = "\n".join(f"{name}: {_goal_text(item)}" for name, result in document["scenarios"].items()
                      for item in goals_of(result))
    return f"{text}\n\nGoals{marker}:\n{goals}"


def plot(document: dict, path: Path) -> None:
    """One panel per goal metric: a bar per scenario measured, its goal drawn across the bar (green: met)."""
    panels: dict[str, list[tuple[str, dict]]] = {}
    for name, result in document["scenarios"].items():
        for item in goals_of(result):
            panels.setdefault(item["metric"], []).append((name, item))
    timelines = [(name, r["timeline"]) for name, r in document["scenarios"].items() if r.get("timeline")]
    soaks = [(name, r["samples"]) for name, r in document["scenarios"].items() if r.get("samples")]
    columns = 4
    rows = max(1, math.ceil(len(panels) / columns)) + 1 + bool(soaks)
    fig = plt.figure(figsize=(4.2 * columns, 3.2 * rows))
    grid = fig.add_gridspec(rows, columns)
    for index, (metric, items) in enumerate(panels.items()):
        axis = fig.add_subplot(grid[index // columns, index % columns])
        for position, (name, item) in enumerate(items):
            measured = item["measured"] or 0
            color = "#9a9a9a" if item["met"] is None else "#2e9e4f" if item["met"] else "#e07b00"
            axis.bar(position, measured, width=0.6, color=color)
            axis.hlines(item["target"], position - 0.4, position + 0.4, colors="#c00000", linestyles="--")
            axis.annotate(f"{measured:,.3g}" if measured < 1000 else f"{measured:,.0f}", (position, measured),
                          ha="center", va="bottom", fontsize=7)
        axis.set_xticks(range(len(items)), [name for name, _ in items], rotation=20, ha="right", fontsize=7)
        axis.set_title(f"{metric} (goal {items[0][1]['op']}, dashed)", fontsize=8)
        axis.tick_params(axis="y", labelsize=7)
    timeline_axis = fig.add_subplot(grid[rows - 1 - bool(soaks), :])
    for name, timeline in timelines:
        for who, points in timeline.items():
            if len(points) < 2:
                continue
            times, rates = _per_second(points)
            timeline_axis.plot(times, rates, label=f"{name} ({who})", linewidth=1.2)
    timeline_axis.set_yscale("symlog", linthresh=100)
    timeline_axis.set_xlabel("seconds since the trigger started")
    timeline_axis.set_ylabel("records / s (1 s bins)")
    timeline_axis.set_title("Throughput over time")
    if timelines:  # a soak-only run draws none
        timeline_axis.legend(fontsize=7)
    if soaks:
        _soak_panel(fig.add_subplot(grid[rows - 1, :]), soaks)
    quick = " — quick run: indicative figures" if document.get("quick") else ""
    fig.suptitle(f"make bench: measured (bars) against issue 12's goals (dashed){quick}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _per_second(points: list) -> tuple[list[float], list[float]]:
    """Cumulative (seconds, delivered) samples taken every 50 ms as a rate per whole second: readable, not spiky."""
    times, rates, previous = [], [], 0
    second = 1
    for t, delivered in points:
        while t >= second:
            times.append(second)
            rates.append(delivered - previous)
            previous, second = delivered, second + 1
    return times, rates


def _soak_panel(axis, soaks: list) -> None:
    """The soaks' RSS sampled every second against the share of their records confirmed (runs of different lengths
    on one axis); the goal compares the medians of the first and last thirds of the time."""
    for name, samples in soaks:
        total = samples[-1][1] or 1
        axis.plot([100 * records / total for _, records, _ in samples], [rss for *_, rss in samples],
                  label=name, linewidth=1.2)
    axis.set_xlabel("% of the soak's records confirmed")
    axis.set_ylabel("trigger RSS (MB)")
    axis.set_title("Soak: resident set while records flow (sampled every second)")
    axis.legend(fontsize=7)
