"""EventHubEmulator: the asyncio server, usable in-process (async or on a background thread)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from .broker import MAX_MESSAGE_SIZE, Broker
from .connection import AmqpConnection
from .control import ControlApi
from .entra import EntraAuthority
from .frames import error

_LOG = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_KEY_NAME = "RootManageSharedAccessKey"
DEFAULT_KEY = "SAS_KEY_VALUE"  # same placeholder as Microsoft's emulator
DEFAULT_PARTITIONS = 4
DEFAULT_HUB = "eventhub"
DEFAULT_MAX_FRAME_SIZE = 65536  # what the real service advertises: exercises multi-frame transfers


def normalize_hubs(hubs: Mapping[str, int] | Iterable[str] | str | None, partitions: int) -> dict[str, int]:
    """Accept {"name": n}, ["name", "name:n"], "name" or None."""
    if hubs is None:
        return {DEFAULT_HUB: partitions}
    if isinstance(hubs, str):
        hubs = [hubs]
    if isinstance(hubs, Mapping):
        return {str(k): int(v) for k, v in hubs.items()}
    result: dict[str, int] = {}
    for spec in hubs:
        name, _, count = str(spec).partition(":")
        if not name:
            raise ValueError(f"invalid hub spec {spec!r}")
        result[name] = int(count) if count else partitions
    return result or {DEFAULT_HUB: partitions}


def synthetic_body(index: int, size: int) -> bytes:
    head = b'{"records":[{"category":"Preload","index":%d,"padding":"' % index
    tail = b'"}]}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


class EventHubEmulator:
    """AMQP 1.0 Event Hubs emulator.

    async:   emu = EventHubEmulator({"hub": 4}); info = await emu.start(); ...; await emu.stop()
    thread:  with EventHubEmulator({"hub": 4}) as emu: emu.connection_string()
    """

    def __init__(
        self,
        hubs: Mapping[str, int] | Iterable[str] | str | None = None,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        key_name: str = DEFAULT_KEY_NAME,
        key: str = DEFAULT_KEY,
        consumer_groups: Iterable[str] = (),
        strict_consumer_groups: bool = False,
        persist_dir: str | Path | None = None,
        max_events: int | None = None,
        retention_seconds: float | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_message_size: int = MAX_MESSAGE_SIZE,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        amqps_port: int = 0,
        websocket_port: int = 0,
        entra: EntraAuthority | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.hubs = normalize_hubs(hubs, partitions)
        # Advertised in the open frame; a connection silent for longer is closed, as the service closes idle ones.
        self.idle_timeout = idle_timeout
        self.host = host
        self.port = port
        self.control_port = control_port
        self.control = ControlApi(self)
        self.key_name = key_name
        self.key = key
        self.max_frame_size = max(int(max_frame_size), 512)
        self._broker_args = dict(
            consumer_groups=tuple(consumer_groups),
            strict_consumer_groups=strict_consumer_groups,
            persist_dir=persist_dir,
            max_events=max_events,
            retention_seconds=retention_seconds,
            max_message_size=max_message_size,
        )
        # With a certificate, AMQP over TLS and over WebSockets (wss) on ports of their own, as Azure serves them
        # (5671 and 443), beside the plain port of connection strings with UseDevelopmentEmulator.
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.amqps_port, self.websocket_port = amqps_port, websocket_port
        self._tls_server: asyncio.base_events.Server | None = None
        self._websocket: Any = None
        self.entra = entra  # Entra ID tokens checked against this authority (else accepted unchecked)
        self.broker: Broker | None = None  # type: ignore[assignment]
        self.connections: set[AmqpConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._retention_task: asyncio.Task | None = None
        self._started_at = 0.0
        self._cpu_at_start = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_stop: asyncio.Event | None = None

    # -- async lifecycle ------------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        self.broker = Broker(self.hubs, {self.key_name: self.key}, **self._broker_args)  # type: ignore[arg-type]
        # A persisted hub may have been grown before this start: it keeps its partitions.
        self.hubs = {name: len(self.broker.hubs[name.lower()].partitions) for name in self.hubs}
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(lambda: AmqpConnection(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.entra is not None:
            await self._loop.run_in_executor(None, self.entra.load_keys)
        if self.tls_cert:
            await self._start_tls()
        await self.control.start(self.host, self.control_port)
        if self.broker.retention_seconds is not None:
            self._retention_task = asyncio.create_task(self._retention_loop())
        self._started_at = time.monotonic()
        self._cpu_at_start = time.process_time()
        _LOG.info("serving %s on %s:%d", ", ".join(f"{h}({n})" for h, n in self.hubs.items()), self.host, self.port)
        return self.info

    async def _start_tls(self) -> None:
        from .websocket import WebSocketServer

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.tls_cert), str(self.tls_key) if self.tls_key else None)
        self._tls_server = await self._loop.create_server(  # type: ignore[union-attr]
            lambda: AmqpConnection(self), self.host, self.amqps_port, ssl=context)
        self.amqps_port = self._tls_server.sockets[0].getsockname()[1]
        self._websocket = WebSocketServer(self)
        await self._websocket.start(self.host, self.websocket_port, context)
        self.websocket_port = self._websocket.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        if self._tls_server is not None:
            self._tls_server.close()
        await self.control.stop()
        if self._retention_task is not None:
            self._retention_task.cancel()
        for conn in list(self.connections):
            conn.close(error("amqp:connection:forced", "The Event Hubs emulator is shutting down."))
        await self._server.wait_closed()
        self._server = None
        if self._websocket is not None:
            await self._websocket.stop()
        if self._tls_server is not None:
            await self._tls_server.wait_closed()
            self._tls_server = None
        await asyncio.sleep(0)  # let transports flush their close frames
        if self.broker is not None:
            self.broker.close()
            _LOG.info("summary: %s", self.summary())

    async def __aenter__(self) -> EventHubEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _retention_loop(self) -> None:
        period = max(0.5, min(60.0, self.broker.retention_seconds / 10))  # type: ignore[operator]
        while True:
            await asyncio.sleep(period)
            self.broker.enforce_retention()  # type: ignore[union-attr]

    def set_partition_count(self, hub: str | None, count: int) -> list[str]:
        """Raise a hub's partition count (default hub: the first) while serving; the ids added. Existing links and
        events are untouched; the management READ answers the new count at once. Also POST /_emulator/control."""
        assert self.broker is not None, "start() first"
        name = next((h for h in self.hubs if h.lower() == (hub or next(iter(self.hubs))).lower()), None)
        if name is None:
            raise KeyError(hub)
        added = self.broker.set_partition_count(name, count)
        self.hubs[name] = len(self.broker.hubs[name.lower()].partitions)
        return added

    def recreate_hub(self, hub: str | None) -> None:
        """Delete the hub (default: the first) and create it again, empty, under the same name, while serving:
        its open links are detached (consumers and producers attach again, to the new hub). Also POST
        /_emulator/control ``{"hub": NAME, "recreate": true}``."""
        assert self.broker is not None, "start() first"
        name = next((h for h in self.hubs if h.lower() == (hub or next(iter(self.hubs))).lower()), None)
        if name is None:
            raise KeyError(hub)
        old = self.broker.hub(name)
        self.broker.recreate_hub(name)
        for conn in list(self.connections):
            for session in list(conn.sessions.values()):
                for link in list(session.links.values()):
                    if getattr(link, "hub", None) is old:
                        conn.detach_link(link, error(
                            "amqp:link:detach-forced",
                            f"The link '{link.name}' is force detached. Code: EntityDeleted. Details: the event "
                            f"hub '{name}' was deleted."))

    def stall_receivers(self, hub: str | None) -> int:
        """The consumer links of the hub (default: the first) open now stop delivering, for good, while their
        link and connection stay healthy (flow, heartbeats, management): a reader stuck on the service's side.
        Links attached later deliver. Returns how many. Also POST /_emulator/control ``{"stall_receivers": true}``."""
        assert self.broker is not None, "start() first"
        target = self.broker.hub(hub or next(iter(self.hubs)))
        if target is None:
            raise KeyError(hub)
        stuck = 0
        for conn in list(self.connections):
            for session in list(conn.sessions.values()):
                for link in list(session.links.values()):
                    if getattr(link, "hub", None) is target and hasattr(link, "stuck"):
                        link.stuck = True
                        stuck += 1
        return stuck

    def preload(self, count: int, size: int = 1024, hub: str | None = None) -> None:
        """Append `count` synthetic events of about `size` bytes (JSON `{"records": [...]}` bodies)
        to a hub (default: every hub), round-robin over its partitions; no AMQP involved."""
        assert self.broker is not None, "start() first"
        for name in [hub] if hub else list(self.hubs):
            partitions = self.hubs[name]
            for start in range(0, count, 1000):
                n = min(1000, count - start)
                for pid in range(partitions):
                    bodies = [synthetic_body(i, size) for i in range(start + pid, start + n, partitions)]
                    if bodies:
                        self.broker.publish_bodies(name, bodies, partition_id=str(pid))
        _LOG.info("preloaded %d events of %d bytes", count, size)

    # -- background thread ----------------------------------------------------------------------
    def start_in_thread(self, timeout: float = 10.0) -> dict[str, Any]:
        """Run the emulator on its own event loop in a daemon thread (for sync callers)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._thread_stop = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            await self._thread_stop.wait()
            await self.stop()

        self._thread = threading.Thread(target=lambda: asyncio.run(main()), name="eventhub-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the emulator did not start in time")
        if failure:
            raise failure[0]
        return self.info

    def stop_thread(self, timeout: float = 10.0) -> None:
        if self._thread is None or self._loop is None or self._thread_stop is None:
            return
        self._loop.call_soon_threadsafe(self._thread_stop.set)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> EventHubEmulator:
        self.start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `function` on the emulator's loop and return its result: from another thread in
        thread mode (e.g. `emu.call(emu.broker.publish_bodies, "hub", bodies, partition_id="0")`)."""
        loop = self._loop
        assert loop is not None, "start the emulator first"
        if self._thread is None or threading.current_thread() is self._thread:
            return function(*args, **kwargs)

        async def run() -> T:
            return function(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(30)

    # -- information ----------------------------------------------------------------------------
    def connection_string(self, hub: str | None = None) -> str:
        """Connection string with EntityPath (default: the first hub)."""
        return self._connection_string(f";EntityPath={hub or next(iter(self.hubs))}")

    def namespace_connection_string(self) -> str:
        return self._connection_string("")

    def _connection_string(self, entity: str) -> str:
        return (
            f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName={self.key_name};"
            f"SharedAccessKey={self.key}{entity};UseDevelopmentEmulator=true"
        )

    @property
    def info(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "connection_string": self.connection_string(),
            "namespace_connection_string": self.namespace_connection_string(),
            "hubs": dict(self.hubs),
            "control_url": self.control.url,
            "key_name": self.key_name,
            "key": self.key,
            # With TLS: where Entra ID clients connect (`custom_endpoint_address`), AMQPS and WebSockets.
            **({"amqps_endpoint": f"sb://{self.host}:{self.amqps_port}",
                "websocket_endpoint": f"sb://{self.host}:{self.websocket_port}"} if self._tls_server else {}),
        }

    def stats(self) -> dict[str, Any]:
        """Broker counters plus uptime and process CPU (the whole process: in thread mode that
        includes whatever else runs in it)."""
        stats = self.broker.stats.as_dict() if self.broker else {}
        stats["uptime_s"] = round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0
        stats["process_cpu_s"] = round(time.process_time() - self._cpu_at_start, 3)
        return stats

    def summary(self) -> str:
        s = self.stats()
        moved = s.get("events_delivered", 0) + s.get("events_published", 0)
        per_event = f", {s['process_cpu_s'] * 1e6 / moved:.1f} us CPU per event in+out" if moved else ""
        return (
            f"{s.get('connections_total', 0)} connections, {s.get('events_published', 0)} events published, "
            f"{s.get('events_delivered', 0)} delivered, {s.get('publish_rejected', 0)} rejected, "
            f"{s.get('tokens_refused', 0)} tokens refused, {s.get('links_stolen', 0)} links stolen, "
            f"CPU {s['process_cpu_s']}s{per_event}"
        )
