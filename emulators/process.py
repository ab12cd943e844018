"""Start a loopback server as a subprocess and wait for its ``READY {json}`` line (shared by tests, demo, benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """A running ``python -m <module>`` that printed ``READY {json}``; ``info`` holds that JSON."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None, log_path: Path | None = None,
                 timeout: float = 60.0):
        self.module = module
        self.args = list(args)
        self._log_handle = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=self._log_handle,
        )
        self.info = self._wait_ready(timeout)
        # Keep reading stdout so a chatty server never blocks on a full pipe.
        threading.Thread(target=self._drain_stdout, daemon=True).start()

    def _wait_ready(self, timeout: float) -> dict:
        result: dict = {}

        def read() -> None:
            for raw in self.proc.stdout:  # type: ignore[union-attr]
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith("READY "):
                    result.update(json.loads(line[len("READY "):]))
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not result:
            self.stop()
            raise RuntimeError(f"{self.module} did not print READY within {timeout}s (exit code {self.proc.poll()})")
        return result

    def _drain_stdout(self) -> None:
        for _ in self.proc.stdout:  # type: ignore[union-attr]
            pass

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if hasattr(self._log_handle, "close"):
            self._log_handle.close()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
