"""``make bench`` (``python -m benchmarks [--quick] [--only NAME ...]``): every scenario and its baseline in one run.

Writes ``reports/bench.json`` and ``reports/bench.png`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

from benchmarks import report, scenarios
from emulators.process import ROOT

ORDER = ["o365_latency", "o365_cpu", "o365_quota", "o365_freshness", "o365_state_scale", "eventhub_1kb",
         "eventhub_envelopes", "growth", "o365_soak", "eventhub_soak"]


def machine() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller workloads; figures marked indicative")
    parser.add_argument("--only", nargs="*", choices=ORDER, help="run these scenarios only")
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data paths)")
    args = parser.parse_args(argv)
    selected = args.only or ORDER
    work = Path(tempfile.mkdtemp(prefix="sekoia-m365-bench-"))
    ws = scenarios.Workspace(work)
    results: dict = {}
    started = time.monotonic()
    try:
        for name in selected:
            print(f"== {name} ...", flush=True)
            t0 = time.monotonic()
            if name == "growth":
                o365_1x = results.get("o365_cpu") or scenarios.o365_cpu(ws, args.quick)
                eventhub_1x = results.get("eventhub_1kb") or scenarios.eventhub_1kb(ws, args.quick)
                results[name] = scenarios.growth(ws, args.quick, o365_1x, eventhub_1x)
            else:
                results[name] = getattr(scenarios, name)(ws, args.quick)
            results[name]["wall_seconds"] = round(time.monotonic() - t0, 1)
            print(report.line(name, results[name]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    document = {"machine": machine(), "quick": args.quick, "total_seconds": round(time.monotonic() - started, 1),
                "scenarios": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    report.plot(document, args.out / "bench.png")
    print()
    print(report.table(document))
    print(f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
