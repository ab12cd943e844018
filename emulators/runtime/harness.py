"""The runtime stub as tests, the demo and benchmarks use it: start it, build the container's environment, read what arrived."""

from __future__ import annotations

import http.client
import json
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import requests

from emulators.process import ServerProcess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def complete_lines(path: Path) -> list[bytes]:
    """The whole lines of a file the stub may be appending to (a line being written is left for the next read)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [line for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]


class Runtime:
    """The runtime stub as a subprocess, and what it received."""

    def __init__(self, workdir: Path, *args: str):
        self.workdir = Path(workdir)
        self.data_path = self.workdir / "data"
        self.data_path.mkdir(parents=True, exist_ok=True)
        self.out = self.workdir / "delivered.jsonl"
        self.server = ServerProcess(
            "emulators.runtime", "--port", "0", "--out", str(self.out), "--data-path", str(self.data_path), *args
        )
        self.info = self.server.info

    def control(self, **knobs) -> dict:
        return requests.post(self.info["url"] + "/_runtime/control", json=knobs, timeout=5).json()

    def stats(self) -> dict:
        return requests.get(self.info["url"] + "/_runtime/stats", timeout=5).json()

    def counter(self) -> Callable[[], int]:
        """The count of confirmed events, for polling: one kept-alive connection and the standard library's client
        (a requests.get per sample cost 2 ms of CPU between the stub and the poller, on the trigger's cores)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.info["port"], timeout=5)

        def read() -> int:
            connection.request("GET", "/_runtime/stats")
            return orjson.loads(connection.getresponse().read())["events"]

        def events() -> int:
            try:
                return read()
            except (http.client.HTTPException, OSError):
                connection.close()  # closed by the stub: the next request opens another
                return read()

        return events

    def delivered(self) -> list[bytes]:
        return complete_lines(self.out)

    def delivered_records(self) -> list[dict]:
        return [orjson.loads(line) for line in self.delivered()]

    def logs(self) -> list[dict]:
        return [orjson.loads(line) for line in complete_lines(Path(self.info["logs_out"]))]

    def env(self, trigger_configuration: dict, intake: bool = True) -> dict[str, str]:
        """The variables the container gets, plus the data path and free monitoring ports."""
        configuration = dict(trigger_configuration)
        if intake:
            configuration.setdefault("intake_key", self.info["intake_key"])
        return {
            "MODULE_CONFIGURATION": "{}",
            "TRIGGER_CONFIGURATION": json.dumps(configuration),
            "TOKEN": self.info["token"],
            "URL_CALLBACK": self.info["callback_url"],
            "INTAKE_URL": self.info["intake_url"],
            "SEKOIA_DATA_PATH": str(self.data_path),
            "LIVENESS_PORT": str(free_port()),
            "METRICS_PORT": str(free_port()),
        }

    def stop(self) -> None:
        self.server.stop()


def compare(expected: list[str], delivered: list[str]) -> dict[str, int]:
    """Lost and duplicated items between two multisets of keys."""
    want, got = Counter(expected), Counter(delivered)
    return {
        "expected": sum(want.values()),
        "delivered": sum(got.values()),
        "lost": sum((want - got).values()),
        "duplicates": sum((got - want).values()),
    }
