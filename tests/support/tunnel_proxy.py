"""A minimal HTTP CONNECT proxy for tests, on a thread, that also stands in for DNS: each tunnel's host is mapped
to a loopback port (``routes``: host suffix -> port), so clients reach the emulators under Azure's real names
(``*.servicebus.usgovcloudapi.net:443``...) and check the emulators' certificates against those names. Hosts
without a route are refused (403); with ``credentials`` (user, password), a request without them is refused (407).
``tunnels`` lists the ``host:port`` of each tunnel opened."""

from __future__ import annotations

import asyncio
import base64
import threading


class TunnelProxy:
    def __init__(self, routes: dict[str, int], credentials: tuple[str, str] | None = None):
        self.routes = routes
        self.credentials = credentials
        self.tunnels: list[str] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        user = f"{self.credentials[0]}:{self.credentials[1]}@" if self.credentials else ""
        return f"http://{user}127.0.0.1:{self.port}"

    def _route(self, host: str) -> int | None:
        return next((port for suffix, port in self.routes.items() if host == suffix or host.endswith("." + suffix)),
                    None)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, target, _ = request.split("\r\n", 1)[0].split(" ", 2)
            host = target.rsplit(":", 1)[0]
            port = self._route(host)
            if method != "CONNECT" or port is None:
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            if self.credentials and not self._authorized(request):
                writer.write(b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="t"\r\n'
                             b"Content-Length: 0\r\n\r\n")
                return
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
            self.tunnels.append(target)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def _authorized(self, request: str) -> bool:
        expected = base64.b64encode(":".join(self.credentials).encode()).decode()  # type: ignore[arg-type]
        return any(line.lower().startswith("proxy-authorization:") and line.split(":", 1)[1].strip() ==
                   f"Basic {expected}" for line in request.split("\r\n"))

    def start(self) -> "TunnelProxy":
        ready = threading.Event()

        async def serve() -> None:
            self._stop = asyncio.Event()
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await self._stop.wait()

        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(serve)), name="tunnel-proxy",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    async def _run(self, serve) -> None:
        self._loop = asyncio.get_running_loop()
        await serve()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._thread = None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
