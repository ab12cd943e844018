"""Office365Emulator: wires the services into one aiohttp HTTPS server, in the caller's loop or a thread."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from aiohttp import web

from .activity_api import ActivityApi
from .arrival import ArrivalStamping
from .config import CONTENT_TYPES, EmulatorConfig
from .content import ContentStore
from .control import ControlApi
from .entra import EntraService
from .policy import RequestPolicy
from .stats import Stats
from .subscriptions import SubscriptionBook
from .timefmt import set_clock_offset
from .tls import TlsMaterial, create_tls_material

log = logging.getLogger("emulators.office365")


class Office365Emulator:
    """Usage: `async with Office365Emulator(cfg) as info`, or `with Office365Emulator(cfg) as info` (thread)."""

    def __init__(self, config: EmulatorConfig | None = None, *, access_log: bool = False, **overrides):
        self.config = dataclasses.replace(config or EmulatorConfig(), **overrides)
        self.config.validate()
        self.access_log = access_log
        self.info: dict | None = None
        self.store: ContentStore | None = None
        self.stats = Stats()
        self.tls: TlsMaterial | None = None
        self.entra: EntraService | None = None  # e.g. `entra.federated_token()` for workload identity tests
        self._control: ControlApi | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._publisher_task: asyncio.Task | None = None
        self._owned_workdir: Path | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ in the caller's event loop
    async def start(self) -> dict:
        cfg = self.config
        if cfg.workdir:
            workdir = Path(cfg.workdir)
        else:
            workdir = self._owned_workdir = Path(tempfile.mkdtemp(prefix="o365-emulator-"))
        loop = asyncio.get_running_loop()
        set_clock_offset(cfg.clock_offset_seconds)  # before content: its times are the API's
        # Key generation and content generation are CPU work: keep the loop responsive meanwhile.
        self.tls = await loop.run_in_executor(None, create_tls_material, workdir, tuple(cfg.tls_names))
        self.store = await loop.run_in_executor(None, ContentStore.build, cfg)
        subscriptions = SubscriptionBook(self.store)
        for content_type in cfg.subscribed:
            subscriptions.start(content_type, None)
        for content_type in cfg.disabled_by_admin:
            subscriptions.disable_by_admin(content_type)
        policy = RequestPolicy(cfg, self.stats)
        entra = self.entra = EntraService(cfg, self.tls, self.stats, policy)
        api = ActivityApi(cfg, self.store, subscriptions, entra, policy, self.stats)
        self._control = ControlApi(cfg, self.store, subscriptions, self.stats)

        app = web.Application(client_max_size=4 * 1024 * 1024, middlewares=[self.stats.stamp_first_request])
        app.add_routes(api.routes() + self._control.routes() + entra.routes())
        self._runner = web.AppRunner(
            app,
            access_log=log if self.access_log else None,
            handler_cancellation=True,  # a client giving up on a 'timeout' fault frees the handler
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        # Our own listener rather than a TCPSite: each connection's protocol is wrapped to note when requests arrive.
        server = self._runner.server
        self._listener = await loop.create_server(
            lambda: ArrivalStamping(server()), cfg.host, cfg.port, ssl=self.tls.server_context, backlog=1024
        )
        port = self._listener.sockets[0].getsockname()[1]
        self._publisher_task = asyncio.create_task(self._publish_continuously())

        base = f"https://{cfg.host}:{port}"
        self.info = {
            "login_url": base,
            "management_url": base,
            "ca_file": str(self.tls.ca_file),
            "tenant_id": cfg.tenant_id,
            "client_id": cfg.client_id,
            "client_secret": cfg.client_secret,
            "certificate_file": str(self.tls.certificate_file),
            "private_key_file": str(self.tls.private_key_file),
            "port": port,
            # Extras beyond the agreed keys.
            "certificate_with_key_file": str(self.tls.certificate_with_key_file),
            "certificate_thumbprint_sha1": self.tls.client_certificate.sha1_thumbprint.hex().upper(),
            "token_url": f"{base}/{cfg.tenant_id}/oauth2/v2.0/token",
            "authority_host": base,
            "identity_endpoint": f"{base}/msi/token",  # App Service / Container Apps: IDENTITY_ENDPOINT
            "identity_header": cfg.identity_header,
            "imds_host": base,  # AZURE_POD_IDENTITY_AUTHORITY_HOST
            "managed_identity_client_id": cfg.managed_identity_client_id,
            "federated_subject": cfg.federated_subject,
            "api_root": f"{base}/api/v1.0/{cfg.tenant_id}/activity/feed",
            "content_types": list(CONTENT_TYPES),
            "workdir": str(workdir),
            "pid": os.getpid(),
        }
        return self.info

    async def stop(self) -> None:
        if self._publisher_task is not None:
            self._publisher_task.cancel()
            await asyncio.gather(self._publisher_task, return_exceptions=True)
            self._publisher_task = None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()  # no new connections; the runner's cleanup closes the open ones
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if listener is not None:
            await listener.wait_closed()
        if self._owned_workdir is not None:
            shutil.rmtree(self._owned_workdir, ignore_errors=True)
            self._owned_workdir = None

    async def __aenter__(self) -> dict:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _publish_continuously(self) -> None:
        credit = {ct: 0.0 for ct in CONTENT_TYPES}
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            rate, elapsed, last = self.config.continuous, now - last, now
            if rate <= 0:
                continue
            for content_type in CONTENT_TYPES:
                credit[content_type] += rate * elapsed
                while credit[content_type] >= 1.0:
                    credit[content_type] -= 1.0
                    self.store.publish_new(content_type)

    # ------------------------------------------------------------------ runtime control (any thread)
    def control(self, **changes) -> dict:
        """Same as POST /_emulator/control; safe to call from another thread when running in a thread."""
        if self._thread_loop is not None and threading.current_thread() is not self._thread:
            future = asyncio.run_coroutine_threadsafe(self._apply(changes), self._thread_loop)
            return future.result(10)
        return self._control.apply(changes)

    async def _apply(self, changes: dict) -> dict:
        return self._control.apply(changes)

    def published(self, **kwargs) -> dict:
        if self._thread_loop is not None and threading.current_thread() is not self._thread:
            future = asyncio.run_coroutine_threadsafe(self._published(kwargs), self._thread_loop)
            return future.result(60)
        return self.store.published(**kwargs)

    async def _published(self, kwargs: dict) -> dict:
        return self.store.published(**kwargs)

    # ------------------------------------------------------------------ in a background thread
    def start_in_thread(self, timeout: float = 60.0) -> dict:
        ready: Future = Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                ready.set_result(loop.run_until_complete(self.start()))
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                ready.set_exception(exc)
                loop.close()
                return
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="office365-emulator", daemon=True)
        self._thread.start()
        return ready.result(timeout)

    def stop_thread(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
        self._thread.join(timeout)
        self._thread = self._thread_loop = None

    def __enter__(self) -> dict:
        return self.start_in_thread()

    def __exit__(self, *exc) -> None:
        self.stop_thread()
