"""An HTTPS front for Azurite adding what its OAuth mode leaves out: the token's signature (the Entra emulator's
keys, as Storage checks them) and the principal's Azure RBAC role on the account. Without a role that allows the
request, the answer is Storage's: 403 AuthorizationPermissionMismatch. Everything else goes to Azurite unchanged
(shared key and SAS requests too).

    gate = StorageRoleGate(azurite.account_url, azurite_ca, authority, authority_ca,
                           {client_id: ["Storage Blob Data Contributor"]})
    gate.start_in_thread(certificate)     # gate.account_url replaces azurite.account_url
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from emulators.eventhub.entra import EntraAuthority

AUDIENCES = ("https://storage.azure.com",)
ROLE_CLAIMS = {
    "Storage Blob Data Reader": frozenset({"read"}),
    "Storage Blob Data Contributor": frozenset({"read", "write"}),
    "Storage Blob Data Owner": frozenset({"read", "write"}),
}
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


def _error(status: int, code: str, message: str) -> web.Response:
    body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=status, text=body, content_type="application/xml", headers={"x-ms-error-code": code})


class StorageRoleGate:
    def __init__(self, upstream: str, ca_file: str | Path, authority: str, authority_ca_file: str | Path,
                 roles: Mapping[str, Iterable[str]] | None = None, host: str = "127.0.0.1") -> None:
        parts = urlsplit(upstream)
        self.upstream = f"{parts.scheme}://{parts.netloc}"
        self.account_path = parts.path
        self.ca_file = str(ca_file)
        self.host = host
        self.port = 0
        self.entra = EntraAuthority(authority, str(authority_ca_file), roles, AUDIENCES, ROLE_CLAIMS, "Storage")
        self.refused: list[str] = []  # what was refused, for tests
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def account_url(self) -> str:
        return f"https://{self.host}:{self.port}{self.account_path}"

    async def _serve(self, certificate: Path, ready: threading.Event, stop: asyncio.Event) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.entra.load_keys)
        client_context = ssl.create_default_context(cafile=self.ca_file)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context),
                                         auto_decompress=False) as session:
            self._session = session
            app = web.Application(client_max_size=256 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_context.load_cert_chain(str(certificate))
            site = web.TCPSite(runner, self.host, 0, ssl_context=server_context)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            await stop.wait()
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            check = self.entra.check(header[7:].strip())
            if check.status != 202:
                self.refused.append(check.description)
                return _error(401, "InvalidAuthenticationInfo", f"Server failed to authenticate the request. "
                                                                f"{check.description}")
            needed = "read" if request.method in ("GET", "HEAD") else "write"
            if needed not in check.claims:
                self.refused.append(f"{check.principal} lacks {needed}")
                return _error(403, "AuthorizationPermissionMismatch",
                              "This request is not authorized to perform this operation using this permission.")
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _HOP_HEADERS}
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                         data=await request.read()) as answer:
            body = await answer.read()
            kept = {name: value for name, value in answer.headers.items() if name.lower() not in _HOP_HEADERS}
            return web.Response(status=answer.status, body=body, headers=kept)

    def start_in_thread(self, certificate: Path, timeout: float = 30.0) -> "StorageRoleGate":
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._stop = asyncio.Event()
            try:
                self._loop.run_until_complete(self._serve(certificate, ready, self._stop))
            except BaseException as error:  # noqa: BLE001 - reported to the starting thread
                failure.append(error)
                ready.set()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="storage-role-gate", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            raise RuntimeError(f"the storage role gate did not start: {failure[0] if failure else 'timed out'}")
        return self

    def stop(self) -> None:
        if self._thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._thread = None
