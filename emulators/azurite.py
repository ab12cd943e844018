"""Azurite, the Blob Storage emulator, on a loopback port: start, stop, restart on the same port, manage containers.

``python -m emulators.azurite [--port 0] [--location DIR] [--container NAME ...]`` prints ``READY {json}`` with
``connection_string``, ``account_url``, ``port`` and ``pid``, then runs until SIGTERM.

Containers are managed with a few signed HTTP calls (Shared Key) rather than ``azure-storage-blob``: the module
does not depend on that package (only the checkpoint store's vendored copy), and the helper stays independent.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ElementTree
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
MAIN_JS = ROOT / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"

# The well-known development account of every Azure Storage emulator (public, not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
API_VERSION = "2021-08-06"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def connection_string(host: str, port: int, key: str = ACCOUNT_KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
        f"BlobEndpoint=http://{host}:{port}/{ACCOUNT};"
    )


class Azurite:
    """One Azurite blob server. ``location=None`` keeps data in memory (lost on stop/restart)."""

    def __init__(self, location: Path | None = None, port: int = 0, host: str = "127.0.0.1",
                 log_path: Path | None = None):
        if not MAIN_JS.exists():
            raise RuntimeError(f"{MAIN_JS} is missing: run `npm ci` (the Makefile does) to install Azurite")
        self.location = Path(location) if location else None
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "Azurite":
        if self.running:
            return self
        args = ["node", str(MAIN_JS), "--blobHost", self.host, "--blobPort", str(self.port), "--silent",
                "--disableTelemetry", "--skipApiVersionCheck"]
        if self.location:
            self.location.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(self.location)]
        else:
            args.append("--inMemoryPersistence")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Azurite exited with code {self.proc.returncode} (port {self.port} taken?)")
            if self._answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Azurite did not answer on port {self.port} within {timeout}s")

    def _answers(self) -> bool:
        try:
            requests.get(f"{self.account_url}?comp=list", timeout=1)  # any HTTP answer (403 here) means ready
            return True
        except requests.RequestException:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down ``down_for`` seconds, start again on the same port (data kept when on disk)."""
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> "Azurite":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------------------

    @property
    def account_url(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.host, self.port)

    def info(self) -> dict:
        return {"host": self.host, "port": self.port, "pid": self.pid, "account_url": self.account_url,
                "account_name": ACCOUNT, "connection_string": self.connection_string,
                "location": str(self.location) if self.location else None}

    # -- containers and blobs ----------------------------------------------------------------------------------

    @property
    def admin(self) -> "BlobAdmin":
        return BlobAdmin(self.account_url)

    def create_container(self, name: str) -> None:
        self.admin.create_container(name)


class BlobAdmin:
    """Minimal Shared Key client: create / delete containers and list blobs with their metadata."""

    def __init__(self, account_url: str, account: str = ACCOUNT, key: str = ACCOUNT_KEY, timeout: float = 10.0):
        self.account_url = account_url.rstrip("/")
        self.account = account
        self._key = base64.b64decode(key)
        self.timeout = timeout

    def _request(self, method: str, path: str, params: dict[str, str]) -> requests.Response:
        url = f"{self.account_url}/{quote(path)}" if path else self.account_url
        headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": API_VERSION}
        request = requests.Request(method, url, params=params, headers=headers).prepare()
        request.headers["Authorization"] = f"SharedKey {self.account}:{self._sign(request)}"
        return requests.Session().send(request, timeout=self.timeout)

    def _sign(self, request: requests.PreparedRequest) -> str:
        parts = urlsplit(request.url)
        ms_headers = sorted((k.lower(), v.strip()) for k, v in request.headers.items() if k.lower().startswith("x-ms-"))
        query = sorted(parse_qsl(parts.query, keep_blank_values=True))
        length = request.headers.get("Content-Length", "")
        to_sign = "\n".join(
            [request.method or "", "", "", "" if length == "0" else length, "", request.headers.get("Content-Type", ""),
             "", "", "", "", "", ""]
            + [f"{k}:{v}" for k, v in ms_headers]
            + [f"/{self.account}{parts.path}" + "".join(f"\n{k.lower()}:{v}" for k, v in query)]
        )
        digest = hmac.new(self._key, to_sign.encode("utf-8"), hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    def create_container(self, name: str, exist_ok: bool = True) -> None:
        response = self._request("PUT", name, {"restype": "container"})
        if response.status_code == 409 and exist_ok:
            return
        response.raise_for_status()

    def delete_container(self, name: str) -> None:
        response = self._request("DELETE", name, {"restype": "container"})
        if response.status_code != 404:
            response.raise_for_status()

    def list_blobs(self, container: str, prefix: str = "") -> list[dict]:
        """``[{"name", "metadata": {...}}]`` for every blob under ``prefix``."""
        blobs, marker = [], ""
        while True:
            params = {"restype": "container", "comp": "list", "include": "metadata", "prefix": prefix}
            if marker:
                params["marker"] = marker
            response = self._request("GET", container, params)
            response.raise_for_status()
            tree = ElementTree.fromstring(response.content)
            for blob in tree.iter("Blob"):
                found = blob.find("Metadata")
                metadata = {item.tag: item.text or "" for item in found} if found is not None else {}
                blobs.append({"name": blob.findtext("Name"), "metadata": metadata})
            marker = tree.findtext("NextMarker") or ""
            if not marker:
                return blobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emulators.azurite", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--location", type=Path, help="keep data in this directory (default: in memory)")
    parser.add_argument("--container", action="append", default=[], help="create this container at start")
    args = parser.parse_args(argv)
    azurite = Azurite(args.location, args.port, args.host).start()
    stopped = False

    def stop(*_):
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for name in args.container:
            azurite.create_container(name)
        print("READY " + json.dumps(azurite.info()), flush=True)
        while not stopped and azurite.running:
            time.sleep(0.2)
    finally:
        azurite.stop()


if __name__ == "__main__":
    main()
