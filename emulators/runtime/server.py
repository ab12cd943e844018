"""The Sekoia runtime as a trigger sees it: callback (playbook events), logs, secrets and the intake ``/batch`` API.

Every delivered event is appended to one JSONL file, one event per line, before the request is answered: an
answered request is a confirmed delivery. Intake events are written exactly as delivered (the strings of
``jsons``); records of a playbook event are read from the records file it points at and written compactly. With
``keep_events`` off (``--count-only``, for benchmarks: a production intake is remote, and writing the events cost
the stub more CPU than checking them, on the cores the trigger under test uses), requests are still checked and
their events counted; nothing is written.
Delivery requests are numbered as they arrive; the stats say how many are being handled and the oldest of them, so
a caller can wait until every request received before some moment was answered (those of a killed trigger).
Knobs add latency, a failure rate, and periods of being down, at start or at any time through
``POST /_runtime/control``; and, on the delivery endpoints (``/batch`` and ``/callback``), refusals for good of
requests holding a marker string or over a size, a status for every request (401, 403, 404: wrong key or
server), and hanging before answering.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
from aiohttp import web

DELIVERY_PATHS = frozenset({"/batch", "/callback"})


@dataclass
class RuntimeKnobs:
    latency_ms: float = 0.0
    failure_rate: float = 0.0  # fraction of requests answered 503
    down_until: float = 0.0  # monotonic time until which every request is cut (connection reset)
    down_status: int = 0  # 0: cut the connection while down; else answer this status
    # Delivery endpoints only (/batch, /callback):
    refuse_markers: list[str] = field(default_factory=list)  # a request holding one of these: refuse_status
    refuse_status: int = 400
    refuse_over_bytes: int = 0  # events of a request (sum of their sizes) over this: 413
    deny_status: int = 0  # answer every request with this status (401, 403, 404...) without reading it
    hang_seconds: float = 0.0  # wait this long before handling a request (the events are written after)
    # The log endpoint only (/logs), while delivery works: its own outage, a status or a hang.
    logs_status: int = 0  # answer every log request with this status (the lines are not kept)
    logs_hang_seconds: float = 0.0  # hold every log request this long (or until reset) before handling it


@dataclass
class RuntimeStats:
    events: int = 0
    batches: int = 0
    playbook_events: int = 0
    logs: int = 0
    rejected: int = 0
    failures: int = 0
    cut: int = 0
    refused: int = 0  # requests refused by refuse_markers or refuse_over_bytes
    denied: int = 0
    hung: int = 0
    secrets_served: int = 0
    logs_failed: int = 0
    logs_hung: int = 0
    records_files: int = 0  # records files of playbook events read
    records_files_shared: int = 0  # ... of which the file or its directory was open to the group or others
    deliveries: int = 0  # delivery requests received, whatever their answer (numbered from 0 in that order)
    active: int = 0  # ... being handled now (latency, hang, writing), as of the stats request
    oldest_active: int = 0  # the number of the oldest being handled; ``deliveries`` when none is


@dataclass
class RuntimeStub:
    out: Path
    logs_out: Path
    data_path: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    intake_key: str = field(default_factory=lambda: secrets.token_hex(16))
    trigger_secrets: dict = field(default_factory=dict)
    module_secrets: dict = field(default_factory=dict)
    knobs: RuntimeKnobs = field(default_factory=RuntimeKnobs)
    stats: RuntimeStats = field(default_factory=RuntimeStats)
    seed: int | None = None
    keep_events: bool = True  # append delivered events to ``out`` (off: counted only)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.logs_out = Path(self.logs_out)
        self.data_path = Path(self.data_path)
        self._out = open(self.out, "ab")
        self._logs = open(self.logs_out, "ab")
        self._rng = random.Random(self.seed)
        self._active: set[int] = set()  # numbers of the delivery requests being handled
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- server ----------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._numbered, self._faults])
        app.router.add_post("/callback", self.callback)
        app.router.add_post("/logs", self.logs)
        app.router.add_get("/secrets", self.secrets)
        app.router.add_post("/batch", self.batch)
        app.router.add_post("/_runtime/control", self.control)
        app.router.add_get("/_runtime/stats", self.get_stats)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        # A stop does not wait for requests held by a hang or latency knob (aiohttp would give them a minute).
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        self._out.close()
        self._logs.close()

    def ready_info(self) -> dict:
        base = f"http://127.0.0.1:{self.port}"
        return {
            "url": base,
            "callback_url": f"{base}/callback",
            "logs_url": f"{base}/logs",
            "secrets_url": f"{base}/secrets",
            "intake_url": base,
            "token": self.token,
            "intake_key": self.intake_key,
            "out": str(self.out),
            "logs_out": str(self.logs_out),
            "data_path": str(self.data_path),
            "port": self.port,
        }

    # -- fault injection ---------------------------------------------------------------------------------------

    @web.middleware
    async def _numbered(self, request: web.Request, handler):
        """A delivery request is active from its arrival (before any latency or hang) until answered or cut."""
        if request.path not in DELIVERY_PATHS:
            return await handler(request)
        number = self.stats.deliveries
        self.stats.deliveries += 1
        self._active.add(number)
        try:
            return await handler(request)
        finally:
            self._active.discard(number)

    @web.middleware
    async def _faults(self, request: web.Request, handler):
        if request.path.startswith("/_runtime/"):
            return await handler(request)
        knobs = self.knobs
        if knobs.latency_ms:
            await asyncio.sleep(knobs.latency_ms / 1000)
        if time.monotonic() < knobs.down_until:
            if knobs.down_status:
                self.stats.failures += 1
                return web.json_response({"message": "runtime unavailable"}, status=knobs.down_status)
            self.stats.cut += 1
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError()
        if knobs.failure_rate and self._rng.random() < knobs.failure_rate:
            self.stats.failures += 1
            return web.json_response({"message": "injected failure"}, status=503)
        return await handler(request)

    async def _delivery_faults(self) -> web.Response | None:
        """Before a delivery request is read: a status for all, or a hang."""
        knobs = self.knobs
        if knobs.deny_status:
            self.stats.denied += 1
            return web.json_response({"message": "denied"}, status=knobs.deny_status)
        if knobs.hang_seconds:
            self.stats.hung += 1
            await asyncio.sleep(knobs.hang_seconds)
        return None

    def _refusing(self) -> bool:
        return bool(self.knobs.refuse_markers or self.knobs.refuse_over_bytes)

    def _keep(self, events: list[bytes]) -> None:
        """Append the events to ``out``, one a line, before the request is answered (unless ``keep_events`` is off)."""
        if events and self.keep_events:
            self._out.write(b"\n".join(events))
            self._out.write(b"\n")
            self._out.flush()

    def _refusal(self, events: list[bytes]) -> web.Response | None:
        """A refusal for good of the request's events: one holds a marker, or they are too large together."""
        knobs = self.knobs
        status = 0
        if knobs.refuse_markers and any(marker.encode() in event for event in events for marker in knobs.refuse_markers):
            status = knobs.refuse_status
        elif knobs.refuse_over_bytes and sum(map(len, events)) > knobs.refuse_over_bytes:
            status = 413
        if not status:
            return None
        self.stats.refused += 1
        return web.json_response({"message": "refused"}, status=status)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    # -- endpoints ---------------------------------------------------------------------------------------------

    async def batch(self, request: web.Request) -> web.Response:
        fault = await self._delivery_faults()
        if fault is not None:
            return fault
        try:
            body = orjson.loads(await request.read())
            key, jsons = body["intake_key"], body["jsons"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return web.json_response({"message": "expected {intake_key, jsons}"}, status=400)
        if key != self.intake_key:
            self.stats.rejected += 1
            return web.json_response({"message": "Invalid intake key"}, status=401)
        if not isinstance(jsons, list) or not all(isinstance(item, str) for item in jsons):
            return web.json_response({"message": "jsons must be a list of strings"}, status=400)
        if self.keep_events or self._refusing():
            # One by one: an ASCII event is then a copy, where one string of them all would be transcoded whole.
            encoded = [item.encode("utf-8", "surrogatepass") for item in jsons]
            refusal = self._refusal(encoded)
            if refusal is not None:
                return refusal
            self._keep(encoded)
        first = self.stats.events
        self.stats.events += len(jsons)
        self.stats.batches += 1
        # orjson: aiohttp's json_response would encode the ids with the json module, a cost per event.
        ids = orjson.dumps(["ev-%d" % number for number in range(first, first + len(jsons))])
        return web.Response(body=b'{"received":true,"event_ids":' + ids + b"}", content_type="application/json")

    async def callback(self, request: web.Request) -> web.Response:
        fault = await self._delivery_faults()
        if fault is not None:
            return fault
        if not self._authorized(request):
            self.stats.rejected += 1
            return web.json_response({"message": "Invalid token"}, status=401)
        try:
            body = orjson.loads(await request.read())
            event = body["event"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return web.json_response({"message": "expected {name, event}"}, status=400)
        records = list(event.get("records", []))
        directory = body.get("directory")
        for key, value in event.items():
            if key.endswith("_path") and directory:
                # The trigger deletes the directory once we answer: read it now.
                path = self.data_path / directory / value
                try:
                    records.extend(orjson.loads(path.read_bytes()))
                    self.stats.records_files += 1
                    if (path.stat().st_mode | path.parent.stat().st_mode) & 0o077:  # audit data others may read
                        self.stats.records_files_shared += 1
                except (OSError, orjson.JSONDecodeError) as error:
                    return web.json_response({"message": f"cannot read {path}: {error}"}, status=400)
        encoded = [orjson.dumps(record) for record in records]
        refusal = self._refusal(encoded)
        if refusal is not None:
            return refusal
        self._keep(encoded)
        self.stats.events += len(records)
        self.stats.playbook_events += 1
        return web.json_response({"received": True})

    async def logs(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"message": "Invalid token"}, status=401)
        if self.knobs.logs_hang_seconds:
            self.stats.logs_hung += 1
            deadline = time.monotonic() + self.knobs.logs_hang_seconds
            while self.knobs.logs_hang_seconds and time.monotonic() < deadline:  # held until the knob is reset
                await asyncio.sleep(0.1)
        if self.knobs.logs_status:
            self.stats.logs_failed += 1
            return web.json_response({"message": "logs unavailable"}, status=self.knobs.logs_status)
        entries = orjson.loads(await request.read()).get("logs", [])
        self._logs.write(b"".join(orjson.dumps(entry) + b"\n" for entry in entries))
        self._logs.flush()
        self.stats.logs += len(entries)
        return web.json_response({"received": True})

    async def secrets(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"message": "Invalid token"}, status=401)
        self.stats.secrets_served += 1
        return web.json_response({"value": self.module_secrets, "node_value": self.trigger_secrets})

    async def control(self, request: web.Request) -> web.Response:
        """``{"latency_ms", "failure_rate", "down_for" (seconds from now), "down_status", "refuse_markers",
        "refuse_status", "refuse_over_bytes", "deny_status", "hang_seconds", "logs_status", "logs_hang_seconds"}``:
        any subset."""
        body = orjson.loads(await request.read() or b"{}")
        for name, kind in (("refuse_markers", list), ("refuse_status", int), ("refuse_over_bytes", int),
                           ("deny_status", int), ("hang_seconds", float), ("logs_status", int),
                           ("logs_hang_seconds", float)):
            if name in body:
                setattr(self.knobs, name, kind(body[name]))
        if "latency_ms" in body:
            self.knobs.latency_ms = float(body["latency_ms"])
        if "failure_rate" in body:
            self.knobs.failure_rate = float(body["failure_rate"])
        if "down_status" in body:
            self.knobs.down_status = int(body["down_status"])
        if "down_for" in body:
            self.knobs.down_until = time.monotonic() + float(body["down_for"])
        return web.json_response(asdict(self.knobs))

    async def get_stats(self, request: web.Request) -> web.Response:
        # Polled every 50 ms by the benchmarks: orjson, not the json module.
        self.stats.active = len(self._active)
        self.stats.oldest_active = min(self._active, default=self.stats.deliveries)
        return web.Response(body=orjson.dumps(asdict(self.stats)), content_type="application/json")
