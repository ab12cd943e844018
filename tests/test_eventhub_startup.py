"""Start-up checks: each configuration mistake is one critical log naming the field, then the trigger stops."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from connectors.trigger import CollectorTrigger
from emulators.process import python_child
from emulators.runtime.harness import Runtime
from tests.eventhub_helpers import EventHubStack, InProcessTrigger

WRONG_KEY = "V3J0bmcta2V5LXRoYXQtbm8tb25lLWtub3dz"
AZURITE_KEY_PART = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("startup")
    with EventHubStack(workdir, partitions=2, emulator_args={"strict_consumer_groups": True}) as stack:
        yield stack


def assert_one_clear_critical(logs: list[dict], field: str, words: str, secrets: list[str]) -> None:
    critical = [log["message"] for log in logs if log["level"] == "critical"]
    assert len(critical) == 1, critical
    assert f"`{field}`" in critical[0] and words in critical[0], critical[0]
    text = json.dumps(logs)
    for secret in secrets:
        assert secret not in text


def test_store_down_or_missing_container_exit_main_with_code_2(stack, tmp_path):
    storage = stack.azurite.connection_string
    cases = {
        "store_down": (stack.config(storage_connection_string=storage.replace(f":{stack.azurite.port}/", ":9/")),
                       "storage_connection_string", "unreachable"),
        "missing_container": (stack.config(storage_container_name="no-such-container"),
                              "storage_container_name", "does not exist"),
    }
    base = {k: v for k, v in os.environ.items() if k not in {"TRIGGER_CONFIGURATION", "INTAKE_URL"}}
    running = {}
    try:
        for name, (config, field, words) in cases.items():  # in parallel, each with its own runtime stub
            runtime = Runtime(tmp_path / name)
            proc = python_child("main.py", "consume_eventhub_messages", env={**base, **runtime.env(config)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            running[name] = (proc, runtime, field, words)
        for name, (proc, runtime, field, words) in running.items():
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 2, (name, stderr.decode()[-2000:])
            assert "Traceback" not in stderr.decode(), name
            assert_one_clear_critical(runtime.logs(), field, words, [AZURITE_KEY_PART, runtime.info["intake_key"]])
            assert AZURITE_KEY_PART not in stderr.decode()
    finally:
        for proc, runtime, *_ in running.values():
            proc.kill()
            runtime.stop()


def in_process_cases(stack: EventHubStack) -> dict[str, tuple[dict, str, str]]:
    hub = stack.connection_string
    storage = stack.azurite.connection_string
    return {
        "wrong_storage_key": (stack.config(storage_connection_string=storage.replace("Eby8vdM02x", "Xby8vdM02x")),
                              "storage_connection_string", "refused"),
        "wrong_hub_key": (stack.config(hub_connection_string=hub.replace(stack.emulator.info["key"], WRONG_KEY)),
                          "hub_connection_string", "refused the key"),
        # Both probed at once: the hub's mistake is the one said (the store's would come next, once it is fixed).
        "wrong_hub_and_storage_keys": (
            stack.config(hub_connection_string=hub.replace(stack.emulator.info["key"], WRONG_KEY),
                         storage_connection_string=storage.replace("Eby8vdM02x", "Xby8vdM02x")),
            "hub_connection_string", "refused the key"),
        "unknown_hub": (stack.config(hub_connection_string=hub.replace(f"EntityPath={stack.hub}", "EntityPath=nohub"),
                                     hub_name="nohub"), "hub_name", "does not exist"),
        "unknown_consumer_group": (stack.config(hub_consumer_group="not-created"), "hub_consumer_group",
                                   "does not exist"),
        "no_intake_server": (stack.config(intake_key="some-intake-key"), "intake_server", "required"),
    }


@pytest.mark.parametrize("case", ["wrong_storage_key", "wrong_hub_key", "wrong_hub_and_storage_keys", "unknown_hub",
                                  "unknown_consumer_group", "no_intake_server"])
def test_hub_and_storage_mistakes_stop_the_trigger_with_one_message(stack, monkeypatch, case):
    config, field, words = in_process_cases(stack)[case]
    CollectorTrigger.fatal_error = None
    seen = len(stack.logs())
    env = stack.env(config)
    if case == "no_intake_server":
        env.pop("INTAKE_URL")
        monkeypatch.delenv("INTAKE_URL", raising=False)
    runner = InProcessTrigger(env, monkeypatch).start()
    runner.thread.join(90)
    try:
        assert not runner.thread.is_alive(), "the trigger kept running"
        assert CollectorTrigger.fatal_error and f"`{field}`" in CollectorTrigger.fatal_error
        assert_one_clear_critical(stack.logs()[seen:], field, words,
                                  [stack.emulator.info["key"], WRONG_KEY, AZURITE_KEY_PART])
    finally:
        runner.stop()
        CollectorTrigger.fatal_error = None
