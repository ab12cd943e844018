"""Run a trigger process the way production does and measure it from the outside.

Throughput is end to end: from the moment the trigger process is ready (its liveness endpoint answers, i.e. the
SDK finished starting and calls the trigger) to the runtime stub's confirmation of the last expected event; CPU per
record likewise leaves out the CPU the process spent before it was ready (sampled then). Start-up is reported
apart: ``ready_s`` (process start to liveness) and ``first_request_s``, from the moment just before the process is
started to the source emulator's first request or connection (its own clock, read from its stats: the trigger
reports nothing). ``seconds`` is the whole wall time from the process start. Peak RSS is the kernel's high-water
mark of the trigger process. ``steady_records_per_s`` is the rate once the first records were confirmed (what
came after them, over the time after them): with ``first_delivery_s``, it tells a slow start from slow streaming,
which the goal's rate from readiness mixes on a small workload.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import requests

from emulators.process import ChildProcess


@dataclass
class Run:
    records: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    ready_s: float | None = None  # process start until the liveness endpoint answered
    first_request_s: float | None = None  # process start until the source's first request (its emulator's clock)
    startup_cpu_s: float = 0.0  # CPU seconds spent by the process when it became ready
    ready_rss_mb: float = 0.0  # resident set when it became ready: the interpreter and its imports
    first_delivery_s: float | None = None  # process start (the bare client: its start) until records first arrived
    first_delivered: int = 0  # how many had arrived then
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, delivered)
    complete: bool = False
    exit_code: int | None = None

    @property
    def busy_seconds(self) -> float:
        """From readiness to the end: what rates, quota use and growth are measured on."""
        return self.seconds - (self.ready_s or 0.0)

    @property
    def records_per_s(self) -> float:
        busy = self.busy_seconds
        return self.records / busy if busy > 0 else 0.0

    @property
    def steady_records_per_s(self) -> float:
        if self.first_delivery_s is None:
            return 0.0
        after = self.seconds - self.first_delivery_s
        return (self.records - self.first_delivered) / after if after > 0 else 0.0

    @property
    def cpu_us_per_record(self) -> float:
        """After start-up: the CPU spent before readiness (imports, configuration) is not the records'."""
        return (self.cpu_seconds - self.startup_cpu_s) * 1e6 / self.records if self.records else 0.0

    def figures(self) -> dict:
        data = asdict(self)
        data.pop("timeline")
        data.update(records_per_s=round(self.records_per_s, 1), cpu_us_per_record=round(self.cpu_us_per_record, 2),
                    steady_records_per_s=round(self.steady_records_per_s, 1), busy_seconds=round(self.busy_seconds, 3),
                    seconds=round(self.seconds, 3), cpu_seconds=round(self.cpu_seconds, 3),
                    startup_cpu_s=round(self.startup_cpu_s, 3), ready_rss_mb=round(self.ready_rss_mb, 1),
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


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=0.5)
        return True
    except requests.RequestException:
        return False


# How a trigger is started (``benchmarks.profile`` puts it under its profiler, and has it signalled once ready).
TRIGGER_COMMAND = [sys.executable, "main.py"]
READY_SIGNAL: int | None = None


def run_trigger(parameter: str, env: dict[str, str], delivered, expected: int, timeout: float, log_path: Path,
                first_request=None, interval: float = 0.05) -> Run:
    """Start ``python main.py PARAMETER``; sample until ``delivered() >= expected``; stop it with SIGTERM.

    ``first_request()`` answers the epoch time of the source emulator's first request since the run began (None
    when there was none), or the epoch times of its latest connections (the first after the start is taken)."""
    run = Run()
    with open(log_path, "ab") as log:
        launched_at = time.time()
        started = time.monotonic()
        proc = ChildProcess([*TRIGGER_COMMAND, parameter], env={**os.environ, **env}, name=parameter,
                            stdout=log, stderr=log)
    with proc:  # ended even when sampling fails
        watched = psutil.Process(proc.pid)
        health = f"http://127.0.0.1:{env['LIVENESS_PORT']}/health" if env.get("LIVENESS_PORT") else None
        cpu = 0.0
        while True:
            now = time.monotonic() - started
            ready = run.ready_s is None and health is not None and _answers(health)
            if ready:
                run.ready_s = round(now, 3)
                if READY_SIGNAL is not None:
                    proc.send_signal(READY_SIGNAL)
            count = delivered()
            run.timeline.append((round(now, 3), count))
            try:
                times = watched.cpu_times()
                cpu = times.user + times.system
                run.peak_rss_mb = max(run.peak_rss_mb, watched.memory_info().rss / 1e6)
            except psutil.NoSuchProcess:
                pass
            if ready:
                run.startup_cpu_s, run.ready_rss_mb = cpu, run.peak_rss_mb
            if count and run.first_delivery_s is None:
                run.first_delivery_s, run.first_delivered = round(now, 3), count
            if count >= expected or proc.poll() is not None or now > timeout:
                break
            time.sleep(interval)
        run.seconds = time.monotonic() - started
        run.records = count
        run.cpu_seconds = cpu
        run.peak_rss_mb = max(run.peak_rss_mb, _high_water_mark_mb(proc.pid))
        run.complete = count >= expected
        run.exit_code = proc.stop(30)
    at = first_request() if first_request else None
    if isinstance(at, list):
        at = min((when for when in at if when >= launched_at), default=None)
    if at is not None and at >= launched_at:
        run.first_request_s = round(at - launched_at, 3)
    return run


def goal(metric: str, measured: float | None, op: str, target: float) -> dict:
    """One goal of issue 12's table, as the report prints and plots it (``met`` is None when nothing was measured)."""
    met = None if measured is None else measured >= target if op == ">=" else measured <= target
    return {"metric": metric, "measured": measured, "op": op, "target": target, "met": met}


STARTUP_GOAL_S = 1.2
PEAK_RSS_GOAL_MB = 150.0


def cost_goals(ours: dict) -> list[dict]:
    """What every scenario is held to: start-up (first request to the source) and peak RSS."""
    return [goal("start-up: first request (s)", ours.get("first_request_s"), "<=", STARTUP_GOAL_S),
            goal("peak RSS (MB)", ours.get("peak_rss_mb"), "<=", PEAK_RSS_GOAL_MB)]
