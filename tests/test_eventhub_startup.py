"""Start-up checks: each configuration mistake is one critical log naming the field, then exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from emulators.process import ROOT
from emulators.runtime.harness import Runtime
from tests.eventhub_helpers import EventHubStack

WRONG_KEY = "V3J0bmcta2V5LXRoYXQtbm8tb25lLWtub3dz"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("startup")
    with EventHubStack(workdir, partitions=2, emulator_args={"strict_consumer_groups": True}) as stack:
        yield stack


def cases(stack: EventHubStack) -> dict[str, tuple[dict, str, str]]:
    """name -> (configuration, field named, words of the message)."""
    hub = stack.connection_string
    storage = stack.azurite.connection_string
    return {
        "store_down": (stack.config(storage_connection_string=storage.replace(f":{stack.azurite.port}/", ":9/")),
                       "storage_connection_string", "unreachable"),
        "missing_container": (stack.config(storage_container_name="no-such-container"),
                              "storage_container_name", "does not exist"),
        "wrong_storage_key": (stack.config(storage_connection_string=storage.replace("Eby8vdM02x", "Xby8vdM02x")),
                              "storage_connection_string", "refused"),
        "wrong_hub_key": (stack.config(hub_connection_string=hub.replace(stack.emulator.info["key"], WRONG_KEY)),
                          "hub_connection_string", "refused the key"),
        "unknown_hub": (stack.config(hub_connection_string=hub.replace(f"EntityPath={stack.hub}", "EntityPath=nohub"),
                                     hub_name="nohub"), "hub_name", "does not exist"),
        "unknown_consumer_group": (stack.config(hub_consumer_group="not-created"), "hub_consumer_group",
                                   "does not exist"),
        "missing_hub_name": (stack.config(hub_connection_string=hub.replace(f";EntityPath={stack.hub}", "")),
                             "hub_name", "is required"),
    }


def test_each_mistake_is_one_critical_log_and_exit_code_2(stack, tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in {"TRIGGER_CONFIGURATION", "INTAKE_URL"}}
    main = os.environ.get("EVENTHUB_TEST_MAIN", "main.py")
    running = {}
    try:
        # All at once: each has its own runtime stub, so each one's logs are its own.
        for name, (config, field, words) in cases(stack).items():
            runtime = Runtime(tmp_path / name)
            env = {**base, **runtime.env(config)}
            proc = subprocess.Popen([sys.executable, main, "consume_eventhub_messages"], cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            running[name] = (proc, runtime, config, field, words)
        for name, (proc, runtime, config, field, words) in running.items():
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 2, (name, stderr.decode()[-2000:])
            critical = [log["message"] for log in runtime.logs() if log["level"] == "critical"]
            assert len(critical) == 1, (name, critical)
            assert f"`{field}`" in critical[0] and words in critical[0], (name, critical[0])
            text = stderr.decode() + json.dumps(runtime.logs())
            assert "Traceback" not in stderr.decode(), name
            for secret in (stack.emulator.info["key"], WRONG_KEY, "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6",
                           runtime.info["intake_key"]):
                assert secret not in text, (name, "secret in logs")
    finally:
        for proc, runtime, *_ in running.values():
            if proc.poll() is None:
                proc.kill()
            runtime.stop()
