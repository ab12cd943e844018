"""Shared by the Office 365 tests and benchmarks: the emulator and runtime stub, the trigger's environment,
and the counts that say whether every published record arrived once.

    with O365Rig(tmp_path, "--blobs", "20") as rig:
        proc = rig.start_trigger()                 # python main.py office365_management_api
        assert rig.wait_complete(60)
        rig.stop_trigger(proc)
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import tempfile
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import orjson

from connectors.logs import Redactor
from emulators.office365.harness import EmulatorProcess, trust_emulator_ca
from emulators.process import ChildProcess, ServerProcess, python_child, wait_until
from emulators.runtime.harness import complete_lines
from office365.auth import TokenProvider
from office365.client import ManagementClient
from office365.config import Office365Configuration, resolve_credential, resolve_endpoints
from office365.listing import ContentRef, list_pages
from office365.pacing import ConcurrencyLimit, Gate, QuotaPacer

TRIGGER = "office365_management_api"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bytecode_cache_env() -> dict[str, str]:
    """Compiled bytecode cached outside the repository: a trigger subprocess then starts in about a second
    instead of compiling its imports every time (this environment sets PYTHONDONTWRITEBYTECODE)."""
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": os.path.join(tempfile.gettempdir(), "o365-pycache")}


class O365Rig:
    """An Office 365 emulator and a runtime stub on loopback, and everything needed to point the trigger at them."""

    def __init__(self, workdir: Path, *emulator_args: str, runtime_args: tuple[str, ...] = ()):
        self.workdir = Path(workdir)
        self.data_path = self.workdir / "data"
        self.data_path.mkdir(parents=True, exist_ok=True)
        self.out = self.workdir / "delivered.jsonl"
        self.emulator = EmulatorProcess(
            *emulator_args, "--workdir", str(self.workdir / "emulator"), env={**os.environ, **bytecode_cache_env()}
        )
        self.emulator_args = emulator_args
        self.runtime_args = runtime_args
        self.runtime: ServerProcess | None = None
        self.triggers: list[ChildProcess] = []
        self.ports = (free_port(), free_port())  # liveness, metrics: one trigger at a time per rig

    # -- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> O365Rig:
        self.emulator.start()
        try:
            self.runtime = ServerProcess(
                "emulators.runtime",
                "--port",
                "0",
                "--out",
                str(self.out),
                "--data-path",
                str(self.data_path),
                *self.runtime_args,
                env=bytecode_cache_env(),
                log_path=self.workdir / "runtime.log",
            )
        except BaseException:
            self.emulator.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.triggers:
            proc.stop()
        if self.runtime is not None:
            self.runtime.stop()
        self.emulator.__exit__(*exc)

    @property
    def info(self) -> dict:
        return self.emulator.info

    # -- trigger configuration ------------------------------------------------------------------------------

    def trigger_config(self, auth: str = "secret", **overrides) -> dict:
        info = self.info
        config = {
            "tenant_id": info["tenant_id"],
            "client_id": info["client_id"],
            "login_url": info["login_url"],
            "management_url": info["management_url"],
            "intake_key": self.runtime.info["intake_key"],
            "poll_interval_seconds": 1,
            "request_timeout_seconds": 5,
            "batch_max_age_seconds": 0.2,
        }
        if auth == "secret":
            config["client_secret"] = info["client_secret"]
        else:
            config["certificate"] = Path(info["certificate_file"]).read_text()
            config["private_key"] = Path(info["private_key_file"]).read_text()
        config.update(overrides)
        return config

    def env(self, config: dict) -> dict[str, str]:
        runtime = self.runtime.info
        return {
            "MODULE_CONFIGURATION": "{}",
            "TRIGGER_CONFIGURATION": json.dumps(config),
            "TOKEN": runtime["token"],
            "URL_CALLBACK": runtime["callback_url"],
            "INTAKE_URL": runtime["intake_url"],
            "SEKOIA_DATA_PATH": str(self.data_path),
            "SSL_CERT_FILE": self.info["ca_file"],
            "REQUESTS_CA_BUNDLE": self.info["ca_file"],
            "LIVENESS_PORT": str(self.ports[0]),
            "METRICS_PORT": str(self.ports[1]),
        }

    # -- the trigger as the container runs it ----------------------------------------------------------------

    def start_trigger(self, config: dict | None = None, log_name: str = "trigger.log") -> ChildProcess:
        """Ended with the rig (``__exit__``) if the test does not stop it."""
        env = {**os.environ, **self.env(config or self.trigger_config()), **bytecode_cache_env()}
        with open(self.workdir / log_name, "ab") as log:
            proc = python_child("main.py", TRIGGER, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.triggers.append(proc)
        return proc

    @staticmethod
    def stop_trigger(proc: ChildProcess, timeout: float = 30.0) -> int:
        return proc.stop(timeout)

    # -- what was published and what arrived ----------------------------------------------------------------

    def published(self) -> Counter:
        return Counter(self.emulator.published(all=1)["ids"])

    def delivered_records(self) -> list[dict]:
        return [orjson.loads(line) for line in complete_lines(self.out)]

    def delivered(self) -> Counter:
        """Record Ids as delivered (a record delivered twice counts twice)."""
        return Counter(orjson.loads(line).get("Id") for line in complete_lines(self.out))

    def delivered_count(self) -> int:
        return len(complete_lines(self.out))

    def comparison(self) -> dict:
        published, delivered = self.published(), self.delivered()
        lost = published - delivered
        extra = delivered - published
        return {
            "published": sum(published.values()),
            "delivered": sum(delivered.values()),
            "lost": sum(lost.values()),
            "duplicates": sum(extra.values()),
            "lost_ids": list(lost)[:10],
            "extra_ids": list(extra)[:10],
        }

    def wait_complete(self, timeout: float, expected: int | None = None) -> bool:
        """Until the delivered Ids cover the published ones (the expected count when given)."""

        def done() -> bool:
            target = expected if expected is not None else sum(self.published().values())
            if self.delivered_count() < target:
                return False
            return expected is not None or not (self.published() - self.delivered())

        return wait_until(done, timeout, interval=0.5)

    def listing_pages(self) -> int:
        """Listing pages the emulator answered: a re-list of every content type adds at least one each."""
        return self.emulator.stats()["responses"].get("content_list 200", 0)

    def logs(self) -> list[dict]:
        return [orjson.loads(line) for line in complete_lines(Path(self.runtime.info["logs_out"]))]


class InProcessTrigger:
    """The trigger inside the test process (as ``Module.run`` would build it), run on a thread."""

    def __init__(self, rig: O365Rig, config: dict, monkeypatch):
        for key, value in rig.env(config).items():
            monkeypatch.setenv(key, value)
        from connectors.trigger import CollectorTrigger
        from office365.trigger import Office365Trigger
        from sekoia_automation.module import Module

        CollectorTrigger.fatal_error = None
        module = Module()
        module.register(Office365Trigger, TRIGGER)
        self.trigger = Office365Trigger(module)
        self.thread = threading.Thread(target=self.trigger.execute, name="o365-trigger", daemon=True)

    def __enter__(self) -> InProcessTrigger:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 60.0) -> None:
        self.trigger.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the trigger did not stop"


# -- an in-process API client on the emulator, and a checkpoint of an earlier run ---------------------------------

GAP_WORDS = "past the API's 7-day retention"


def emulator_client(info: dict, timeout: float = 30.0, redactor: Redactor | None = None):
    config = Office365Configuration(
        tenant_id=info["tenant_id"], client_id=info["client_id"], client_secret=info["client_secret"],
        login_url=info["login_url"], management_url=info["management_url"],
    )
    endpoints = resolve_endpoints(config)
    tokens = TokenProvider(endpoints, config.client_id, resolve_credential(config), lambda *a: None,
                           timeout=timeout, redactor=redactor)
    gate = Gate(ConcurrencyLimit(4), QuotaPacer(None))
    return ManagementClient(endpoints.feed, endpoints.publisher_identifier, tokens, gate, timeout=timeout,
                            rewrite_origin=True)


def run_with_client(info: dict, body, **kwargs):
    async def main():
        async with emulator_client(info, **kwargs) as client:
            return await body(client)

    with trust_emulator_ca(info["ca_file"]):
        return asyncio.run(main())


async def first_blob(client: ManagementClient, content_type: str = "Audit.Exchange") -> ContentRef:
    now = client.now()
    get = lambda url: client.get(url, "list")  # noqa: E731
    async for refs, _ in list_pages(client, get, content_type, now - timedelta(hours=12), now):
        if refs:
            return refs[0]
    raise AssertionError("no blob listed")


def write_checkpoint(workdir, resume: dict[str, float]) -> None:
    """A checkpoint of an earlier run that listed content (``initial`` empty), in the rig's data path."""
    state_dir = workdir / "data" / "state" / "office365_management_api"
    state_dir.mkdir(parents=True)
    (state_dir / "office365-checkpoint.json").write_bytes(orjson.dumps({"version": 1, "resume": resume, "initial": []}))
