"""Run a trigger process the way production does and measure it from the outside.

Throughput is end to end: from the process start to the runtime stub's confirmation of the last expected event.
CPU seconds and peak RSS are read from the trigger process (psutil), sampled while it runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from emulators.process import ROOT


@dataclass
class Run:
    records: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    first_delivery_s: float | None = None
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, delivered)
    complete: bool = False
    exit_code: int | None = None

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_record(self) -> float:
        return self.cpu_seconds * 1e6 / self.records if self.records else 0.0

    def figures(self) -> dict:
        data = asdict(self)
        data.pop("timeline")
        data.update(records_per_s=round(self.records_per_s, 1), cpu_us_per_record=round(self.cpu_us_per_record, 2),
                    seconds=round(self.seconds, 3), cpu_seconds=round(self.cpu_seconds, 3),
                    peak_rss_mb=round(self.peak_rss_mb, 1))
        return data


def _high_water_mark_mb(pid: int) -> float:
    """The kernel's own peak resident set (VmHWM): exact, unlike sampling."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


def run_trigger(parameter: str, env: dict[str, str], delivered, expected: int, timeout: float, log_path: Path,
                interval: float = 0.1) -> Run:
    """Start ``python main.py PARAMETER``; sample until ``delivered() >= expected``; stop it with SIGTERM."""
    run = Run()
    with open(log_path, "ab") as log:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "main.py", parameter], cwd=ROOT, env={**os.environ, **env},
                                stdout=log, stderr=log)
        watched = psutil.Process(proc.pid)
        cpu = 0.0
        while True:
            now = time.monotonic() - started
            count = delivered()
            run.timeline.append((round(now, 3), count))
            try:
                times = watched.cpu_times()
                cpu = times.user + times.system
                run.peak_rss_mb = max(run.peak_rss_mb, watched.memory_info().rss / 1e6)
            except psutil.NoSuchProcess:
                pass
            if count and run.first_delivery_s is None:
                run.first_delivery_s = round(now, 3)
            if count >= expected or proc.poll() is not None or now > timeout:
                break
            time.sleep(interval)
        run.seconds = time.monotonic() - started
        run.records = count
        run.cpu_seconds = cpu
        run.peak_rss_mb = max(run.peak_rss_mb, _high_water_mark_mb(proc.pid))
        run.complete = count >= expected
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        run.exit_code = proc.returncode
    return run
