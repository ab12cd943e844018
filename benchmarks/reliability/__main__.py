"""``make reliability`` (``python -m benchmarks.reliability [--quick] [--only NAME ...]``).

Writes ``reports/reliability.json`` (``{"quick": bool, "scenarios": {name: {...}}}``) and exits 1 when any
scenario failed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

from benchmarks.reliability import runner
from benchmarks.reliability.context import FULL, QUICK, Context
from emulators.process import ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller backlogs and shorter faults: under 5 minutes")
    parser.add_argument("--only", nargs="+", choices=list(runner.SCENARIOS), metavar="NAME",
                        help=f"run these scenarios only: {', '.join(runner.SCENARIOS)}")
    parser.add_argument("--jobs", type=int, default=2, help="fault scenarios run this many at a time")
    parser.add_argument("--seed", type=int, default=7, help="seed of the random moments and inputs")
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data paths)")
    args = parser.parse_args(argv)
    logging.getLogger("azure").setLevel(logging.ERROR)  # the test producer's reconnections are expected here
    names = args.only or list(runner.SCENARIOS)
    work = Path(tempfile.mkdtemp(prefix="sekoia-m365-reliability-"))
    ctx = Context(work, QUICK if args.quick else FULL, args.quick, seed=args.seed)
    started = time.monotonic()
    try:
        scenarios = runner.run(ctx, names, jobs=args.jobs)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    document = {"quick": args.quick, "scenarios": scenarios}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "reliability.json"
    # Log lines quoted in the report name the run's work directory: written as <work>, not as this machine's path.
    text = orjson.dumps(document, option=orjson.OPT_INDENT_2).replace(str(work).encode(), b"<work>")
    path.write_bytes(text + b"\n")
    failed = [name for name, result in scenarios.items() if not result["passed"]]
    print(f"\n{len(scenarios) - len(failed)}/{len(scenarios)} scenarios passed in {time.monotonic() - started:.0f} s; "
          f"wrote {path}")
    if failed:
        print("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
