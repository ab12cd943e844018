"""Shared by the Event Hubs trigger tests and benchmarks: the local servers, the environment, what was delivered.

    with EventHubStack(tmp_path, partitions=4) as stack:
        stack.publish_envelopes(records_with_ids(500), per_envelope=20)
        proc = stack.start_process(stack.config())
        wait_until(lambda: stack.delivered_count() >= 500, 60)
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from emulators import fixtures
from emulators.azurite import Azurite
from emulators.eventhub.harness import EmulatorProcess
from emulators.process import ChildProcess, python_child, wait_until
from emulators.runtime.harness import Runtime, compare

TRIGGER = "consume_eventhub_messages"
CONTAINER = "checkpoints"
ID_FIELD = "sekoia_test_id"

__all__ = ["EventHubStack", "compare", "wait_until"]


# -- data ---------------------------------------------------------------------------------------------------------


def fixture_lines() -> list[bytes]:
    """The 29 real diagnostic-settings records, as their bytes (an error names a missing fixture file)."""
    return fixtures.eventhub_lines()


def canonical(record) -> str:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()


def records_with_ids(count: int, prefix: str = "r") -> list[bytes]:
    """``count`` fixture-shaped records, each with a unique ``sekoia_test_id`` (the fixtures cycled)."""
    shapes = [orjson.loads(line) for line in fixture_lines()]
    return [orjson.dumps({**shapes[i % len(shapes)], ID_FIELD: f"{prefix}-{i}"}) for i in range(count)]


def envelope(records: Sequence[bytes]) -> bytes:
    return b'{"records":[' + b",".join(records) + b"]}"


def envelopes(records: Sequence[bytes], per_envelope: int) -> list[bytes]:
    return [envelope(records[i : i + per_envelope]) for i in range(0, len(records), per_envelope)]


def ids_of(records: Iterable[bytes]) -> list[str]:
    return [orjson.loads(record)[ID_FIELD] for record in records]


# -- publishing with the real producer client ------------------------------------------------------------------------


def publish(connection_string: str, bodies: Sequence[bytes], partitions: int | None = None,
            partition_id: str | None = None) -> None:
    """Send every body with the real producer: round-robin over ``partitions``, or all to ``partition_id``."""
    from azure.eventhub import EventData, EventHubProducerClient

    targets = [partition_id] if partition_id is not None else [str(p) for p in range(partitions or 1)]
    per_target: dict[str, list[bytes]] = {target: [] for target in targets}
    for index, body in enumerate(bodies):
        per_target[targets[index % len(targets)]].append(body)
    producer = EventHubProducerClient.from_connection_string(connection_string)
    with producer:
        for target, items in per_target.items():
            batch = producer.create_batch(partition_id=target)
            for body in items:
                try:
                    batch.add(EventData(body))
                except ValueError:  # batch full
                    producer.send_batch(batch)
                    batch = producer.create_batch(partition_id=target)
                    batch.add(EventData(body))
            if len(batch):
                producer.send_batch(batch)


# -- the stack -----------------------------------------------------------------------------------------------------


class EventHubStack:
    """Event Hubs emulator + Azurite (optional) + runtime stub, and how to run the trigger against them."""

    def __init__(self, workdir: Path, hub: str = "insights-logs", partitions: int = 4, azurite: bool = True,
                 emulator_args: dict | None = None, azurite_args: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hub = hub
        self.partitions = partitions
        self.emulator = EmulatorProcess({hub: partitions}, **(emulator_args or {}))
        self.emulator.start()
        self.azurite: Azurite | None = None
        self.runtime: Runtime | None = None
        self.processes: list[ChildProcess] = []
        self._counted_bytes = self._counted_lines = 0
        try:
            if azurite:
                self.azurite = Azurite(location=self.workdir / "azurite", log_path=self.workdir / "azurite.log",
                                       **(azurite_args or {}))
                self.azurite.start()
                self.azurite.create_container(CONTAINER)
            self.runtime = Runtime(self.workdir / "runtime")
        except BaseException:
            self.close()
            raise

    @property
    def connection_string(self) -> str:
        return self.emulator.info["connection_string"]

    def publish(self, bodies: Sequence[bytes], partition_id: str | None = None) -> None:
        publish(self.connection_string, bodies, partitions=self.partitions, partition_id=partition_id)

    def publish_envelopes(self, records: Sequence[bytes], per_envelope: int = 20) -> None:
        self.publish(envelopes(records, per_envelope))

    def config(self, storage: bool = True, **overrides) -> dict:
        config = {
            "hub_connection_string": self.connection_string,
            "hub_name": self.hub,
            "hub_consumer_group": "$Default",
        }
        if storage and self.azurite is not None:
            config.update(storage_connection_string=self.azurite.connection_string,
                          storage_container_name=CONTAINER)
        config.update(overrides)
        return config

    def env(self, config: dict, intake: bool = True, data_path: Path | None = None) -> dict[str, str]:
        env = self.runtime.env(config, intake=intake)  # type: ignore[union-attr]
        if data_path is not None:
            env["SEKOIA_DATA_PATH"] = str(data_path)
        return env

    def start_process(self, config: dict, intake: bool = True, data_path: Path | None = None,
                      log_name: str = "trigger", env: dict[str, str] | None = None) -> ChildProcess:
        """``python main.py consume_eventhub_messages`` with the container's environment (``env``: one made
        already); ended with the stack."""
        base = {k: v for k, v in os.environ.items() if k not in {"TRIGGER_CONFIGURATION", "INTAKE_URL"}}
        with open(self.workdir / f"{log_name}-{len(self.processes)}.log", "ab") as log:
            proc = python_child("main.py", TRIGGER, env={**base, **(env or self.env(config, intake, data_path))},
                                stdout=log, stderr=log)
        self.processes.append(proc)
        return proc

    # -- what arrived -------------------------------------------------------------------------------------------

    def delivered(self) -> list[bytes]:
        return self.runtime.delivered()  # type: ignore[union-attr]

    def delivered_count(self) -> int:
        """Records delivered so far, counted incrementally (cheap enough to poll during a benchmark)."""
        try:
            size = self.runtime.out.stat().st_size  # type: ignore[union-attr]
        except FileNotFoundError:
            return 0
        if size > self._counted_bytes:
            with open(self.runtime.out, "rb") as handle:  # type: ignore[union-attr]
                handle.seek(self._counted_bytes)
                chunk = handle.read(size - self._counted_bytes)
            complete = chunk.rfind(b"\n") + 1  # a line being written is counted once it is whole
            self._counted_lines += chunk.count(b"\n", 0, complete)
            self._counted_bytes += complete
        return self._counted_lines

    def delivered_ids(self) -> list[str]:
        return [orjson.loads(line).get(ID_FIELD, "") for line in self.delivered()]

    def logs(self) -> list[dict]:
        return self.runtime.logs()  # type: ignore[union-attr]

    def checkpoints(self) -> dict[str, int]:
        """Sequence number per partition from the checkpoint blobs in Azurite."""
        blobs = self.azurite.admin.list_blobs(CONTAINER)  # type: ignore[union-attr]
        return {blob["name"].rsplit("/", 1)[1]: int(blob["metadata"]["sequencenumber"])
                for blob in blobs if "/checkpoint/" in blob["name"]}

    def owners(self) -> dict[str, str]:
        blobs = self.azurite.admin.list_blobs(CONTAINER)  # type: ignore[union-attr]
        return {blob["name"].rsplit("/", 1)[1]: blob["metadata"].get("ownerid", "")
                for blob in blobs if "/ownership/" in blob["name"]}

    # -- teardown ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        for proc in self.processes:
            proc.kill()
        for server in (self.runtime, self.azurite, self.emulator):
            if server is not None:
                try:
                    server.stop()
                except Exception:  # noqa: BLE001,S110 - best effort at teardown
                    pass

    def __enter__(self) -> "EventHubStack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def terminate(proc: ChildProcess, timeout: float = 20) -> int:
    """SIGTERM; the exit code (negative when it had to be killed after ``timeout`` seconds)."""
    return proc.stop(timeout)


class InProcessTrigger:
    """The trigger in this process, on a thread, with the same environment as the container gets."""

    def __init__(self, env: dict[str, str], monkeypatch):
        from sekoia_automation.module import Module

        from azure_eventhub.trigger import EventHubTrigger

        for key, value in env.items():
            monkeypatch.setenv(key, value)
        # The SDK's trigger takes SIGINT and SIGTERM over: give them back to pytest afterwards.
        self._handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.trigger = EventHubTrigger(Module())
        self.thread = threading.Thread(target=self._run, name="trigger", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.trigger.execute()
        except BaseException as error:  # noqa: BLE001 - surfaced to the test
            self.error = error

    def start(self) -> "InProcessTrigger":
        self.thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        self.trigger.stop()
        self.thread.join(timeout)
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        assert not self.thread.is_alive(), "the trigger did not stop"
