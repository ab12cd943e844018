"""Azurite, the Blob Storage emulator, on a loopback port: start, stop, restart on the same port, manage containers.

``python -m emulators.azurite [--port 0] [--location DIR] [--container NAME ...]`` prints ``READY {json}`` with
``connection_string``, ``account_url``, ``port`` and ``pid``, then runs until SIGTERM.

Containers and blob listings go through ``azure-storage-blob`` (a development dependency: the module itself only
uses the checkpoint store's vendored copy), signed with the emulator's well-known account key.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from emulators.process import ChildProcess

ROOT = Path(__file__).resolve().parent.parent
MAIN_JS = ROOT / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"

# The well-known development account of every Azure Storage emulator (public, not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def connection_string(host: str, port: int, key: str = ACCOUNT_KEY, scheme: str = "http") -> str:
    return (
        f"DefaultEndpointsProtocol={scheme};AccountName={ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={scheme}://{host}:{port}/{ACCOUNT};"
    )


class Azurite:
    """One Azurite blob server. ``location=None`` keeps data in memory (lost on stop/restart).

    ``certificate`` (PEM, key and certificate in one file) serves HTTPS, trusted through ``ca_file``; ``oauth``
    then accepts Entra ID tokens too (Azurite's basic level: audience https://storage.azure.com, an Entra issuer
    and the lifetime are checked, not the signature nor roles)."""

    def __init__(self, location: Path | None = None, port: int = 0, host: str = "127.0.0.1",
                 log_path: Path | None = None, certificate: Path | None = None, ca_file: Path | None = None,
                 oauth: bool = False):
        if not MAIN_JS.exists():
            raise RuntimeError(f"{MAIN_JS} is missing: run `npm ci` (the Makefile does) to install Azurite")
        self.location = Path(location) if location else None
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.certificate, self.ca_file, self.oauth = certificate, ca_file, oauth
        if oauth and not certificate:
            raise ValueError("Azurite accepts Entra ID tokens over HTTPS only: give a certificate")
        self.proc: ChildProcess | None = None

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
        if self.certificate:
            args += ["--cert", str(self.certificate), "--key", str(self.certificate)]
        if self.oauth:
            args += ["--oauth", "basic"]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = ChildProcess(args, name="azurite", stdout=log, stderr=log)
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
            # any HTTP answer (403 here) means ready
            requests.get(f"{self.account_url}?comp=list", timeout=1, verify=str(self.ca_file or True))
            return True
        except requests.RequestException:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        self.proc.stop(timeout)
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
        return f"{self.scheme}://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def scheme(self) -> str:
        return "https" if self.certificate else "http"

    @property
    def connection_string(self) -> str:
        return connection_string(self.host, self.port, scheme=self.scheme)

    def info(self) -> dict:
        return {"host": self.host, "port": self.port, "pid": self.pid, "account_url": self.account_url,
                "account_name": ACCOUNT, "connection_string": self.connection_string,
                "location": str(self.location) if self.location else None}

    # -- containers and blobs ----------------------------------------------------------------------------------

    @functools.cached_property
    def admin(self) -> "BlobAdmin":
        """One client for the server's life: the port stays the same across restarts."""
        return BlobAdmin(self.account_url, ca_file=self.ca_file)

    def create_container(self, name: str) -> None:
        self.admin.create_container(name)


class BlobAdmin:
    """Create containers and list blobs with their metadata, with azure-storage-blob's client (Shared Key).

    No retries: callers poll or expect an error at once when Azurite is down (``ServiceRequestError``).
    """

    def __init__(self, account_url: str, account: str = ACCOUNT, key: str = ACCOUNT_KEY, timeout: float = 10.0,
                 ca_file: Path | None = None):
        self.service = BlobServiceClient(
            account_url,
            credential={"account_name": account, "account_key": key},
            retry_total=0,
            connection_timeout=timeout,
            read_timeout=timeout,
            **({"connection_verify": str(ca_file)} if ca_file else {}),
        )

    def container_sas_url(self, container: str, hours: float = 1.0) -> str:
        """The account URL with a SAS token granting read, write, list and delete on ``container``."""
        from datetime import UTC, datetime, timedelta

        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        token = generate_container_sas(
            self.service.account_name, container, account_key=self.service.credential.account_key,
            permission=ContainerSasPermissions(read=True, write=True, list=True, delete=True),
            expiry=datetime.now(UTC) + timedelta(hours=hours))
        return f"{self.service.url.rstrip('/')}?{token}"

    def create_container(self, name: str, exist_ok: bool = True) -> None:
        try:
            self.service.create_container(name)
        except ResourceExistsError:
            if not exist_ok:
                raise

    def list_blobs(self, container: str, prefix: str = "") -> list[dict]:
        """``[{"name", "metadata": {...}}]`` for every blob under ``prefix``."""
        blobs = self.service.get_container_client(container).list_blobs(
            name_starts_with=prefix or None, include=["metadata"]
        )
        return [{"name": blob.name, "metadata": dict(blob.metadata or {})} for blob in blobs]


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
