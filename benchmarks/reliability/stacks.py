"""Both triggers' local servers behind one interface, so a scenario is written once for both.

A stack starts the source emulator (and Azurite), a runtime stub and the trigger processes; it says what was
published (``expected``: the keys that must arrive; ``optional``: keys that may arrive at most once), what arrived
(``reader``), what the trigger has checkpointed (``committed``: records it will not read again) and what it kept
aside (``set_aside``: too large, sent shortened; or refused by the runtime). Keys are the issue's: Office 365
record ``Id``; Event Hubs the canonical JSON of each record (a non-JSON event: its text). A shortened event that
arrived counts as the arrival of the original it names by SHA-256 (found in the trigger's set-aside file).

The configuration and the servers come from the trigger engineers' helpers (``tests/o365_helpers.py``,
``tests/eventhub_helpers.py``).
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import requests

from benchmarks.reliability.context import Context
from benchmarks.reliability.keys import TEXT, event_key
from benchmarks.reliability.processes import TriggerProcess
from emulators.process import wait_until
from tests import eventhub_helpers
from tests.eventhub_helpers import envelopes, records_with_ids
from tests.o365_helpers import O365Rig

# Configuration fields holding credentials, whatever each trigger declares: the secrets scan looks for them all.
SECRET_FIELDS = ("client_secret", "private_key", "private_key_password", "certificate_password", "intake_key",
                 "hub_connection_string", "storage_connection_string", "http_proxy")


def o365_key(line: bytes) -> str:
    try:
        return str(orjson.loads(line).get("Id"))
    except (orjson.JSONDecodeError, AttributeError):
        return TEXT + line.decode("utf-8", "backslashreplace")


def configured_secrets(config: dict, env: dict[str, str]) -> list[str]:
    """The secret values of a configuration, with the keys embedded in its connection strings, and the token."""
    values = [str(config[name]) for name in SECRET_FIELDS if config.get(name)]
    for value in list(values):
        for part in value.split(";"):
            name, _, secret = part.partition("=")
            if name.strip().lower() in ("sharedaccesskey", "accountkey", "sharedaccesssignature") and secret:
                values.append(secret)
    return values + [env["TOKEN"]]


# The marker of an event sent shortened (connectors.truncation), as JSON or as text: the original's SHA-256.
_SHORTENED = re.compile(rb"sekoia_truncated\W+original_bytes\W+\d+\W+sha256\W+([0-9a-f]{64})")


class DeliveredReader:
    """What the runtime stub confirmed, read incrementally from its output file (one event per line)."""

    def __init__(self, path: Path, key: Callable[[bytes], str], data_path: Path | None = None):
        self.path = Path(path)
        self.key = key
        self.data_path = data_path  # where the trigger keeps the originals of shortened events
        self.keys: Counter = Counter()
        self.total = 0
        self.shortened = 0
        self._originals: dict[str, bytes] = {}
        self._offset = 0
        self._rest = b""
        self._lock = threading.Lock()

    def refresh(self) -> DeliveredReader:
        with self._lock:
            if not self.path.exists():
                return self
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
            self._offset += len(data)
            data = self._rest + data
            cut = data.rfind(b"\n") + 1  # a line being written is read at the next refresh
            self._rest = data[cut:]
            for line in data[:cut].splitlines():  # the split Runtime.delivered() uses
                self.keys[self._key(line)] += 1
                self.total += 1
        return self

    def _key(self, line: bytes) -> str:
        match = _SHORTENED.search(line) if b"sekoia_truncated" in line else None
        if match is None or self.data_path is None:
            return self.key(line)
        self.shortened += 1
        sha = match.group(1).decode()
        if sha not in self._originals:  # kept before it was sent: the file has it by now
            self._originals.update(set_aside_events(self.data_path))
        original = self._originals.get(sha)
        return self.key(original) if original is not None else f"shortened, original not kept: {sha}"

    @property
    def unique(self) -> int:
        return len(self.keys)

    def covers(self, expected: Counter, set_aside: Counter | None = None) -> bool:
        self.refresh()
        set_aside = set_aside or Counter()
        return all(self.keys[key] + set_aside[key] >= count for key, count in expected.items())


def set_aside_entries(data_path: Path) -> list[dict]:
    """What the trigger kept in its set-aside files: events the runtime refused (not sent) and the originals of events
    over the intake's size limit (sent shortened), each with its origin and reason."""
    entries = []
    state = Path(data_path)
    for path in [*state.glob("state/*/set-aside-events.jsonl"), *sorted(state.glob("state/*/shortened-originals-*.jsonl"))]:
        for line in path.read_bytes().splitlines():
            try:
                entries.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # a torn last line: the event was not kept
    return entries


def set_aside_events(data_path: Path) -> dict[str, bytes]:
    """The kept events by SHA-256."""
    return {entry["sha256"]: entry["event"].encode("utf-8") for entry in set_aside_entries(data_path)}


def set_aside_keys(data_path: Path, key: Callable[[bytes], str]) -> Counter:
    return Counter(key(entry["event"].encode("utf-8")) for entry in set_aside_entries(data_path))


class Stack:
    """What both stacks share: the trigger processes, the runtime stub's knobs and logs."""

    parameter = ""

    def __init__(self, ctx: Context, work: Path):
        self.ctx = ctx
        self.work = work
        self.processes: list[TriggerProcess] = []
        self.reader: DeliveredReader

    def spawn(self, config: dict | None = None, name: str | None = None, intake: bool = True,
              data_path: Path | None = None) -> TriggerProcess:
        config = config if config is not None else self.config()
        env = self.env(config, intake)
        if data_path is not None:
            env["SEKOIA_DATA_PATH"] = str(data_path)
        self.ctx.artifacts.add_secrets(*configured_secrets(json_config(env), env))
        process = TriggerProcess(self.parameter, env, self.work, name or f"trigger-{len(self.processes):02d}",
                                 self.ctx.artifacts)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            process.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- to implement ---------------------------------------------------------------------------------------------

    def config(self, **overrides) -> dict:
        raise NotImplementedError

    def env(self, config: dict, intake: bool = True) -> dict[str, str]:
        raise NotImplementedError

    def runtime_control(self, **knobs) -> dict:
        raise NotImplementedError

    def runtime_logs(self) -> list[dict]:
        raise NotImplementedError

    def runtime_stats(self) -> dict:
        raise NotImplementedError

    def runtime_port(self) -> int:
        raise NotImplementedError


def json_config(env: dict[str, str]) -> dict:
    return orjson.loads(env["TRIGGER_CONFIGURATION"])


class O365Stack(Stack):
    """The Office 365 emulator (a random client secret) and a runtime stub."""

    parameter = "office365_management_api"

    def __init__(self, ctx: Context, name: str, *emulator_args: str):
        super().__init__(ctx, ctx.workdir(name))
        self.client_secret = "Rel~" + secrets.token_urlsafe(24)
        self.rig = O365Rig(self.work, "--client-secret", self.client_secret, *emulator_args)
        try:
            self.rig.__enter__()
        except BaseException:
            self.rig.__exit__(None, None, None)
            raise
        ctx.artifacts.add_file(Path(self.rig.runtime.info["logs_out"]))
        self.data_path = self.rig.data_path
        self.reader = DeliveredReader(self.rig.out, o365_key, self.data_path)

    @property
    def emulator(self):
        return self.rig.emulator

    def config(self, **overrides) -> dict:
        return self.rig.trigger_config(**overrides)

    def env(self, config: dict, intake: bool = True) -> dict[str, str]:
        if not intake:
            config = {key: value for key, value in config.items() if key != "intake_key"}
        return self.rig.env(config)

    def expected(self) -> Counter:
        return self.rig.published()

    def optional(self) -> Counter:
        return Counter()

    def start_stream(self, per_s: int, records_per_blob: int) -> None:
        self.emulator.control(continuous=per_s / (5 * records_per_blob))  # new blobs/s of each content type

    def stop_stream(self) -> None:
        self.emulator.control(continuous=0)

    def committed(self) -> int:
        """Records of the blobs in the ledger: delivered, and never fetched again."""
        total = 0
        for path in self.data_path.glob("state/*/office365-state.sqlite3"):
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # its last committed write
            try:
                total += connection.execute("SELECT coalesce(sum(records), 0) FROM ledger").fetchone()[0]
            finally:
                connection.close()
        return total

    def set_aside(self) -> Counter:
        return set_aside_keys(self.data_path, o365_key)

    def runtime_control(self, **knobs) -> dict:
        return requests.post(self.rig.runtime.info["url"] + "/_runtime/control", json=knobs, timeout=10).json()

    def runtime_logs(self) -> list[dict]:
        return self.rig.logs()

    def runtime_stats(self) -> dict:
        return requests.get(self.rig.runtime.info["url"] + "/_runtime/stats", timeout=10).json()

    def runtime_port(self) -> int:
        return int(urlsplit(self.rig.runtime.info["url"]).port)

    def close(self) -> None:
        try:
            super().close()
        finally:  # the servers end even when a trigger would not
            self.rig.__exit__(None, None, None)


class EventHubStack(Stack):
    """The Event Hubs emulator (a random SAS key, events kept on disk across restarts), Azurite, a runtime stub,
    and a feed that publishes with the real producer client."""

    parameter = "consume_eventhub_messages"

    def __init__(self, ctx: Context, name: str, partitions: int = 4, strict_consumer_groups: bool = False):
        work = ctx.workdir(name)
        super().__init__(ctx, work)
        self.key = "Rel" + secrets.token_urlsafe(30)
        self.stack = eventhub_helpers.EventHubStack(
            work, partitions=partitions,
            emulator_args={"key": self.key, "persist_dir": work / "hub", "strict_consumer_groups": strict_consumer_groups})
        try:
            ctx.artifacts.add_file(Path(self.stack.runtime.info["logs_out"]))
            self.data_path = self.stack.runtime.data_path
            self.reader = DeliveredReader(self.stack.runtime.out, event_key, self.data_path)
            self.feed = EventHubFeed(self.stack.connection_string, partitions)
        except BaseException:
            self.stack.close()
            raise

    @property
    def emulator(self):
        return self.stack.emulator

    @property
    def azurite(self):
        return self.stack.azurite

    def config(self, **overrides) -> dict:
        return self.stack.config(**overrides)

    def env(self, config: dict, intake: bool = True) -> dict[str, str]:
        return self.stack.env(config, intake=intake)

    def expected(self) -> Counter:
        return self.feed.snapshot()[0]

    def optional(self) -> Counter:
        return self.feed.snapshot()[1]

    def start_stream(self, per_s: int, records_per_blob: int = 0) -> None:
        self.feed.start_stream(per_s)

    def stop_stream(self) -> None:
        self.feed.stop_stream()

    def committed(self) -> int:
        """Records up to each partition's checkpoint in Azurite: never read again."""
        return sum(self.feed.records_upto(partition, sequence)
                   for partition, sequence in self.stack.checkpoints().items())

    def set_aside(self) -> Counter:
        return set_aside_keys(self.data_path, event_key)

    def runtime_control(self, **knobs) -> dict:
        return self.stack.runtime.control(**knobs)

    def runtime_logs(self) -> list[dict]:
        return self.stack.logs()

    def runtime_stats(self) -> dict:
        return self.stack.runtime.stats()

    def runtime_port(self) -> int:
        return int(urlsplit(self.stack.runtime.info["url"]).port)

    def close(self) -> None:
        try:
            super().close()
            self.feed.close()
        finally:  # the servers end even when a trigger or the feed would not
            self.stack.close()


class EventHubFeed:
    """Publishes bodies with the real producer client, round robin over the partitions, and remembers what each
    partition's n-th event holds (to count the records under a checkpoint). A send that raised may or may not
    have been stored: its keys become optional and the per-partition accounting is no longer exact."""

    TICK = 0.5

    def __init__(self, connection_string: str, partitions: int):
        self.connection_string = connection_string
        self.partitions = [str(p) for p in range(partitions)]
        self.expected: Counter = Counter()
        self.optional: Counter = Counter()
        self.failed_sends = 0
        self._cumulative: dict[str, list[int]] = {p: [] for p in self.partitions}
        self._next = 0
        self._producer = None
        self._lock = threading.Lock()  # held while sending: pause() waits for the send at hand
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None

    def _client(self):
        if self._producer is None:
            from azure.eventhub import EventHubProducerClient

            self._producer = EventHubProducerClient.from_connection_string(self.connection_string)
        return self._producer

    def send(self, bodies: Sequence[bytes], must: Sequence[Sequence[str]],
             optional: Sequence[Sequence[str]] | None = None) -> None:
        """Send ``bodies`` (``must[i]``: the keys body i must deliver, ``optional[i]``: the keys it may deliver)."""
        from azure.eventhub import EventData

        optional = optional or [()] * len(bodies)
        with self._lock:
            per_partition: dict[str, list[int]] = {}
            for index in range(len(bodies)):
                partition = self.partitions[(self._next + index) % len(self.partitions)]
                per_partition.setdefault(partition, []).append(index)
            self._next += len(bodies)
            for partition, indexes in per_partition.items():
                pending: list[int] = []
                batch = self._client().create_batch(partition_id=partition)
                for index in indexes:
                    try:
                        batch.add(EventData(bodies[index]))
                    except ValueError:  # batch full
                        self._send_batch(partition, batch, pending, must, optional)
                        batch, pending = self._client().create_batch(partition_id=partition), []
                        batch.add(EventData(bodies[index]))
                    pending.append(index)
                self._send_batch(partition, batch, pending, must, optional)

    def _send_batch(self, partition, batch, indexes, must, optional) -> None:
        if not indexes:
            return
        try:
            self._client().send_batch(batch)
        except Exception:  # noqa: BLE001 - stored or not, nobody knows: the keys may arrive, or not
            self.failed_sends += 1
            for index in indexes:
                self.optional.update(must[index])
                self.optional.update(optional[index])
            return
        cumulative = self._cumulative[partition]
        for index in indexes:
            self.expected.update(must[index])
            self.optional.update(optional[index])
            cumulative.append((cumulative[-1] if cumulative else 0) + len(must[index]))

    def send_records(self, records: Sequence[bytes], per_envelope: int = 20) -> None:
        """Diagnostic-settings envelopes of ``records`` (each a JSON object)."""
        keys = [event_key(record) for record in records]
        chunks = [keys[i:i + per_envelope] for i in range(0, len(keys), per_envelope)]
        self.send(envelopes(records, per_envelope), chunks)

    def add_partitions(self, count: int) -> None:
        """The hub now has ``count`` partitions: spread over them too, with a new producer (a producer client
        keeps the partition ids it first read)."""
        with self._lock:
            self.partitions += [str(p) for p in range(len(self.partitions), count)]
            for partition in self.partitions:
                self._cumulative.setdefault(partition, [])
            if self._producer is not None:
                self._producer.close()
                self._producer = None

    def renumber(self) -> None:
        """The hub was deleted and created again: its partitions number their events from 0 again (what was sent
        before stays expected: the trigger delivered it before)."""
        with self._lock:
            self._cumulative = {partition: [] for partition in self.partitions}

    def records_in(self, partition: str) -> int:
        """Records of the partition's events sent so far (that a send returned)."""
        with self._lock:
            cumulative = self._cumulative.get(partition, [])
            return cumulative[-1] if cumulative else 0

    def records_upto(self, partition: str, sequence_number: int) -> int:
        """Records of the partition's events up to this sequence number (included); they start at 0."""
        cumulative = self._cumulative.get(partition, [])
        if sequence_number < 0 or not cumulative:
            return 0
        return cumulative[min(sequence_number, len(cumulative) - 1)]

    def snapshot(self) -> tuple[Counter, Counter]:
        with self._lock:
            return Counter(self.expected), Counter(self.optional)

    # -- a steady stream while a scenario runs ---------------------------------------------------------------

    def start_stream(self, per_s: int) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._stream, args=(per_s,), name="eventhub-feed", daemon=True)
        self._thread.start()

    def _stream(self, per_s: int) -> None:
        per_envelope = max(1, round(per_s * self.TICK / len(self.partitions)))
        tick = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            if not self._paused.is_set():
                self.send_records(records_with_ids(per_envelope * len(self.partitions), f"s{tick}"), per_envelope)
                tick += 1
            next_at += self.TICK
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def pause(self) -> None:
        self._paused.set()
        with self._lock:  # the send under way ends first
            pass

    def resume(self) -> None:
        self._paused.clear()

    def stop_stream(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None

    def close(self) -> None:
        self.stop_stream()
        if self._producer is not None:
            try:
                self._producer.close()
            except Exception:  # noqa: BLE001,S110 - the emulator may be gone already
                pass


def reconcile(expected: Counter, delivered: Counter, optional: Counter | None = None,
              set_aside: Counter | None = None) -> dict:
    """Lost: expected keys neither delivered nor kept aside. Duplicates: deliveries beyond the expected multiset,
    an optional key's first delivery excepted."""
    optional, set_aside = optional or Counter(), set_aside or Counter()
    lost = expected - delivered - set_aside
    extra = delivered - expected
    duplicates = extra - optional
    return {
        "published": sum(expected.values()),
        "delivered_unique": sum((delivered & expected).values()),
        "lost": sum(lost.values()),
        "duplicates": sum(duplicates.values()),
        "set_aside": sum((set_aside & expected).values()),
        "optional_delivered": sum((extra & optional).values()),
        "lost_sample": [key[:120] for key in list(lost)[:5]],
        "duplicate_sample": [key[:120] for key in list(duplicates)[:5]],
    }


def wait_covered(stack: Stack, expected: Counter, timeout: float, also: Callable[[], bool] = lambda: True,
                 processes: Sequence[TriggerProcess] = ()) -> float | None:
    """Seconds until every expected key arrived (and ``also`` holds); None on timeout or when a process died."""
    started = time.monotonic()

    def done() -> bool:
        if processes and not any(process.alive for process in processes):
            raise ProcessDied()
        return stack.reader.covers(expected, stack.set_aside()) and also()

    try:
        ok = wait_until(done, timeout, interval=0.25)
    except ProcessDied:
        return None
    return round(time.monotonic() - started, 2) if ok else None


class ProcessDied(Exception):
    pass
