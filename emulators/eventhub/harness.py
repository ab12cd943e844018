"""Run the emulator as a subprocess for tests and benchmarks.

with EmulatorProcess(hubs={"hub": 4}) as emu:
    emu.info["connection_string"]; emu.cpu_seconds(); emu.restart()
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from emulators.process import ChildProcess, read_ready

_REPO_ROOT = Path(__file__).resolve().parents[2]


class EmulatorProcess:
    def __init__(
        self,
        hubs: Mapping[str, int] | Iterable[str] | None = None,
        *,
        partitions: int | None = None,
        port: int = 0,
        key_name: str | None = None,
        key: str | None = None,
        consumer_groups: Iterable[str] = (),
        strict_consumer_groups: bool = False,
        persist_dir: str | Path | None = None,
        max_events: int | None = None,
        retention_seconds: float | None = None,
        extra_args: Iterable[str] = (),
        python: str = sys.executable,
        log_level: str = "WARNING",
        startup_timeout: float = 20.0,
    ) -> None:
        args = ["--port", str(port), "--log-level", log_level]
        if isinstance(hubs, Mapping):
            hub_specs = [f"{name}:{count}" for name, count in hubs.items()]
        elif isinstance(hubs, str):
            hub_specs = [hubs]
        else:
            hub_specs = list(hubs or [])
        for spec in hub_specs:
            args += ["--hub", spec]
        if partitions is not None:
            args += ["--partitions", str(partitions)]
        if key_name is not None:
            args += ["--key-name", key_name]
        if key is not None:
            args += ["--key", key]
        for group in consumer_groups:
            args += ["--consumer-group", group]
        if strict_consumer_groups:
            args.append("--strict-consumer-groups")
        if persist_dir is not None:
            args += ["--persist", str(persist_dir)]
        if max_events is not None:
            args += ["--max-events", str(max_events)]
        if retention_seconds is not None:
            args += ["--retention-seconds", str(retention_seconds)]
        args += list(extra_args)
        self.command = [python, "-m", "emulators.eventhub", *args]
        self.startup_timeout = startup_timeout
        self.process: ChildProcess | None = None
        self.info: dict[str, Any] = {}
        self.stderr_lines: list[str] = []

    def start(self) -> dict[str, Any]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
        self.process = ChildProcess(
            self.command, cwd=_REPO_ROOT, env=env, name="emulators.eventhub", stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        # drain stderr in the background so a chatty emulator never blocks on a full pipe
        threading.Thread(target=self._drain_stderr, args=(self.process,), daemon=True).start()
        self.info = read_ready(self.process, self.startup_timeout, lambda: "".join(self.stderr_lines[-20:]))
        return self.info

    def _drain_stderr(self, process: ChildProcess) -> None:
        for line in process.stderr:  # type: ignore[union-attr]
            self.stderr_lines.append(line)

    def stop(self, timeout: float = 10.0) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        return process.stop(timeout)

    def restart(self) -> dict[str, Any]:
        """Stop and start again on the same port (persistence makes the events survive)."""
        port = self.info.get("port")
        self.stop()
        if port:
            index = self.command.index("--port")
            self.command[index + 1] = str(port)
        deadline = time.monotonic() + 5
        while True:
            try:
                return self.start()
            except RuntimeError:
                if time.monotonic() > deadline:  # the port may linger briefly after the stop
                    raise
                time.sleep(0.2)

    def control(self, **changes: Any) -> dict[str, Any]:
        """POST /_emulator/control (e.g. ``hub=..., partition_count=6``); raises on a refused change."""
        return self._control("POST", changes)

    def control_state(self) -> dict[str, Any]:
        """GET /_emulator/control: hubs and their partition counts, stats, receivers stolen (when, where)."""
        return self._control("GET", None)

    def _control(self, method: str, body: dict[str, Any] | None) -> dict[str, Any]:
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.info["control_url"] + "/_emulator/control", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback test server
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ValueError(json.loads(error.read()).get("error", str(error))) from None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the emulator process so far (Linux /proc)."""
        if self.process is None:
            return 0.0
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    @property
    def connection_string(self) -> str:
        return self.info["connection_string"]

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_emulator(**kwargs: Any) -> EmulatorProcess:
    """Start a subprocess emulator and return it (call .stop() when done)."""
    emulator = EmulatorProcess(**kwargs)
    emulator.start()
    return emulator
