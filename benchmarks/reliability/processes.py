"""The trigger as the container runs it (``python main.py PARAMETER``), watched from outside: its output, its
Prometheus port, how and when it ends; and the log lines a scenario counts."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import requests

from benchmarks.measure import _answers
from benchmarks.reliability.context import Artifacts
from emulators.process import python_child, wait_until
from tests.o365_helpers import bytecode_cache_env

# What the runtime gives the container: never inherited from the shell that runs the suite.
CONTAINER_VARIABLES = ("TRIGGER_CONFIGURATION", "MODULE_CONFIGURATION", "INTAKE_URL", "URL_CALLBACK", "TOKEN",
                       "SEKOIA_DATA_PATH", "LIVENESS_PORT", "METRICS_PORT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
# Lines of the root logger's format ("date - logger - LEVEL - message") at warning and above.
_LOUD = re.compile(rb" - (WARNING|ERROR|CRITICAL) - ")
_TRACEBACK = b"Traceback (most recent call last)"


class TriggerProcess:
    def __init__(self, parameter: str, env: dict[str, str], log_dir: Path, name: str, artifacts: Artifacts):
        base = {key: value for key, value in os.environ.items() if key not in CONTAINER_VARIABLES}
        self.name = name
        self.metrics_port = int(env["METRICS_PORT"])
        self.liveness_port = int(env["LIVENESS_PORT"])
        self.stdout_path = Path(log_dir) / f"{name}.stdout"
        self.stderr_path = Path(log_dir) / f"{name}.stderr"
        self._artifacts = artifacts
        artifacts.add_file(self.stdout_path)
        artifacts.add_file(self.stderr_path)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = python_child("main.py", parameter, env={**base, **env, **bytecode_cache_env()}, name=name,
                                     stdout=out, stderr=err)
        self.started = time.monotonic()
        self.ended: float | None = None

    @property
    def alive(self) -> bool:
        return self.poll() is None

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None and self.ended is None:
            self.ended = time.monotonic()
        return code

    def ready(self) -> bool:
        """The SDK is up (its liveness endpoint answers): past the imports, its SIGTERM handler installed."""
        return _answers(f"http://127.0.0.1:{self.liveness_port}/health")

    def scrape(self) -> str | None:
        """The Prometheus page (kept for the secrets scan); None while the exporter is not up."""
        try:
            text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        except requests.RequestException:
            return None
        self._artifacts.add_metrics(text)
        return text

    def kill(self) -> None:
        self.proc.kill()
        self.poll()

    def terminate(self, timeout: float = 60.0) -> tuple[int | None, float]:
        """SIGTERM once the SDK is up (before, the signal just ends the interpreter); (exit code, seconds it took
        to end). Killed after ``timeout`` (exit code then negative)."""
        wait_until(lambda: not self.alive or self.ready(), 30, 0.1)
        started = time.monotonic()
        self.proc.stop(timeout)
        self.poll()
        return self.proc.returncode, round(time.monotonic() - started, 2)

    def wait(self, timeout: float) -> int | None:
        self.proc.wait_for(timeout)
        return self.poll()

    def output(self) -> bytes:
        return b"".join(path.read_bytes() for path in (self.stdout_path, self.stderr_path) if path.exists())


def output_counts(processes: list[TriggerProcess]) -> dict[str, int]:
    """Warning-and-above lines and tracebacks the processes wrote (stdout and stderr: the container's output)."""
    loud = tracebacks = 0
    for process in processes:
        text = process.output()
        loud += len(_LOUD.findall(text))
        tracebacks += text.count(_TRACEBACK)
    return {"output_warnings": loud, "output_tracebacks": tracebacks}


def runtime_counts(logs: list[dict]) -> dict[str, int]:
    """Warning-and-above lines the runtime received, and critical ones."""
    levels = [str(entry.get("level", "")).lower() for entry in logs]
    return {"runtime_warnings": sum(level in ("warning", "error", "critical") for level in levels),
            "runtime_critical": levels.count("critical")}
