"""Run the emulator as a subprocess for tests and benchmarks.

with EmulatorProcess("--blobs", "100") as emu:
    info = emu.info                      # the READY keys
    with trust_emulator_ca(info["ca_file"]):
        ...                              # msal / azure-identity / requests trust the emulator's CA
    emu.control(fault_rate=0.1)
    assert emu.published()["count"] == ...
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

from emulators.process import ChildProcess, read_ready

REPO_ROOT = Path(__file__).resolve().parents[2]
CA_ENV_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


@contextlib.contextmanager
def trust_emulator_ca(ca_file: str):
    """Point SSL_CERT_FILE / REQUESTS_CA_BUNDLE at the emulator's CA for the block, then restore them."""
    saved = {name: os.environ.get(name) for name in CA_ENV_VARS}
    os.environ.update({name: str(ca_file) for name in CA_ENV_VARS})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class EmulatorProcess:
    def __init__(self, *args: str, python: str | None = None, env: dict | None = None, ready_timeout: float = 60.0):
        self.args = [str(a) for a in args]
        self.python = python or sys.executable
        self.env = env
        self.ready_timeout = ready_timeout
        self.info: dict = {}
        self.process: ChildProcess | None = None
        self._stderr = tempfile.NamedTemporaryFile(prefix="o365-emulator-", suffix=".log", delete=False)
        self._session = requests.Session()

    @property
    def log_path(self) -> str:
        return self._stderr.name

    def log(self) -> str:
        return Path(self._stderr.name).read_text(errors="replace")

    def start(self) -> dict:
        argv = [self.python, "-m", "emulators.office365", *self.args]
        if "--port" not in self.args:
            argv += ["--port", "0"]
        self.process = ChildProcess(
            argv, cwd=REPO_ROOT, name="emulators.office365", stdout=subprocess.PIPE, stderr=self._stderr, env=self.env,
            text=True,
        )
        self.info = read_ready(self.process, self.ready_timeout, self.log)
        return self.info

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        self.process.stop(timeout)
        if self.process.stdout:
            self.process.stdout.close()
        self._session.close()
        return self.process.returncode

    def __enter__(self) -> "EmulatorProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            os.unlink(self._stderr.name)

    # ------------------------------------------------------------------ /_emulator helpers
    def url(self, path: str) -> str:
        return self.info["management_url"] + path

    def _call(self, method: str, path: str, **kwargs):
        # verify= per call: a REQUESTS_CA_BUNDLE in the environment would override Session.verify.
        response = self._session.request(method, self.url(path), verify=self.info["ca_file"], **kwargs)
        response.raise_for_status()
        return response.json()

    def control(self, **changes) -> dict:
        return self._call("POST", "/_emulator/control", json=changes, timeout=30)

    def stats(self) -> dict:
        return self._call("GET", "/_emulator/stats", timeout=30)

    def published(self, **params) -> dict:
        return self._call("GET", "/_emulator/published", params=params, timeout=300)

    def blobs(self, content_type: str | None = None, ids: int = 0) -> list[dict]:
        params = {"contentType": content_type} if content_type else {}
        if ids:
            params["ids"] = "1"  # each blob's record Ids
        return self._call("GET", "/_emulator/blobs", params=params, timeout=60)
