"""AMQP over WebSockets, as the service serves it on port 443: `wss://HOST/$servicebus/websocket`, subprotocol
`AMQPWSB10`, the AMQP byte stream in binary messages. Each WebSocket drives an ordinary AmqpConnection through a
transport that turns its writes into messages."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .connection import AmqpConnection

if TYPE_CHECKING:
    from .server import EventHubEmulator

_LOG = logging.getLogger(__name__)
PATH = "/$servicebus/websocket"
SUBPROTOCOL = "AMQPWSB10"


class WebSocketTransport(asyncio.Transport):
    """What AmqpConnection needs of a transport, over one server-side WebSocket: writes are sent in order."""

    def __init__(self, ws: web.WebSocketResponse, peer: Any) -> None:
        super().__init__()
        self._ws = ws
        self._peer = peer
        self._outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closing = False
        self.sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        try:
            while (data := await self._outgoing.get()) is not None:
                await self._ws.send_bytes(data)
        except (ConnectionError, RuntimeError):
            pass  # the peer went away: the reading side ends the connection
        finally:
            await self._ws.close()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._outgoing.put_nowait(bytes(data))

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._outgoing.put_nowait(None)

    def is_closing(self) -> bool:
        return self._closing

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return self._outgoing.qsize()

    def pause_reading(self) -> None:  # reading is driven by the WebSocket's own loop
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default


class WebSocketServer:
    def __init__(self, emulator: EventHubEmulator) -> None:
        self.emulator = emulator
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> None:
        app = web.Application()
        app.router.add_get(PATH, self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), max_msg_size=0)
        if SUBPROTOCOL not in request.headers.get("Sec-WebSocket-Protocol", ""):
            raise web.HTTPBadRequest(text=f"the {SUBPROTOCOL} subprotocol is required")
        await ws.prepare(request)
        transport = WebSocketTransport(ws, request.transport.get_extra_info("peername") if request.transport else None)
        connection = AmqpConnection(self.emulator)
        connection.connection_made(transport)
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    connection.data_received(message.data)
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            connection.connection_lost(None)
            transport.close()
            await asyncio.gather(transport.sender, return_exceptions=True)
        return ws
