"""The benchmark report: a table for the terminal and a plot a person reads at a glance."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _headline(name: str, result: dict) -> str:
    ours = result.get("ours", {})
    if name == "o365_latency":
        return f"speedup {result.get('speedup')}x (goal >= 15)"
    if name == "o365_cpu":
        return f"{ours.get('records_per_s')} records/s (goal >= 25,000), {ours.get('cpu_us_per_record')} us/record"
    if name == "o365_quota":
        adaptive = result.get("adaptive") or {}
        return (f"quota_use {result.get('quota_use')} (goal >= 0.9), throttled_share {result.get('throttled_share')} "
                f"(<= 0.02); without the cap: {adaptive.get('quota_use')}, {adaptive.get('throttled_share')}")
    if name == "eventhub_1kb":
        return f"ratio {result.get('ratio')} of the client ceiling {result.get('client_ceiling_per_s')}/s (goal >= 0.8)"
    if name == "eventhub_envelopes":
        return (f"{ours.get('records_per_s')} records/s (goal >= 50,000); the bare client alone "
                f"{result.get('client_ceiling_records_per_s')} records/s")
    if name == "growth":
        parts = [f"{key}: time x{result[key]['time_growth']}, RSS x{result[key]['rss_growth']}"
                 for key in ("o365_cpu", "eventhub_1kb") if key in result]
        return "; ".join(parts) + " (goal time <= 5.5x, RSS <= 1.3x)"
    return ""


def line(name: str, result: dict) -> str:
    return f"   {name}: {_headline(name, result)}"


def table(document: dict) -> str:
    rows = [("scenario", "records", "seconds", "records/s", "CPU s", "us/rec", "peak RSS MB", "baseline rec/s")]
    for name, result in document["scenarios"].items():
        runs = [(name, result)] if "ours" in result else [(f"{name}.{k}", v) for k, v in result.items()
                                                            if isinstance(v, dict) and "ours" in v]
        for label, data in runs:
            ours, base = data["ours"], data.get("baseline", {})
            rows.append((label, ours["records"], ours["seconds"], ours["records_per_s"], ours["cpu_seconds"],
                         ours["cpu_us_per_record"], ours["peak_rss_mb"], base.get("records_per_s", "")))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    text = "\n".join("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)) for row in rows)
    headlines = "\n".join(f"{name}: {_headline(name, result)}" for name, result in document["scenarios"].items())
    return text + "\n\n" + headlines


def plot(document: dict, path: Path) -> None:
    scenarios = document["scenarios"]
    compared = [(name, r) for name, r in scenarios.items() if "ours" in r]
    timelines = [(name, r["timeline"]) for name, r in scenarios.items() if r.get("timeline")]
    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    left, right = axes
    labels, ours, base = [], [], []
    for name, result in compared:
        labels.append(name)
        ours.append(result["ours"]["records_per_s"])
        baseline = result.get("baseline", {})
        base.append(baseline.get("records_per_s", 0) if isinstance(baseline, dict) else 0)
    positions = range(len(labels))
    left.bar([p - 0.2 for p in positions], ours, width=0.4, label="ours", color="#0a84d0")
    left.bar([p + 0.2 for p in positions], base, width=0.4, label="baseline (same run)", color="#b0b0b0")
    left.set_xticks(list(positions), labels, rotation=20, ha="right")
    left.set_ylabel("records / s (end to end, confirmed by the runtime)")
    left.set_title("Throughput: ours vs baseline" + (" (quick)" if document.get("quick") else ""))
    left.legend()
    for p, value in zip(positions, ours):
        left.annotate(f"{value:,.0f}", (p - 0.2, value), ha="center", va="bottom", fontsize=8)
    for name, timeline in timelines:
        for who, points in timeline.items():
            if len(points) < 2:
                continue
            times, rates = _per_second(points)
            right.plot(times, rates, label=f"{name} ({who})", linewidth=1.2)
    right.set_yscale("symlog", linthresh=100)
    right.set_xlabel("seconds since the trigger started")
    right.set_ylabel("records / s delivered (1 s bins)")
    right.set_title("Throughput over time")
    right.legend(fontsize=7)
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
