"""When a request's bytes reached the emulator: what token expiry is judged against.

A loaded emulator reads a request, then queues its handler behind others' work: a token that was valid when the
request arrived could expire meanwhile. A real service checks the token at its door; so does the emulator, with the
time its connection last received bytes, noted before any of its own queueing, latency or handler work.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web


class ArrivalStamping(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection (its __slots__ leave no room for a stamp): passes every event
    through and notes when data last came in (HTTP/1.1: the client sends a request once the previous one is answered)."""

    def __init__(self, inner: asyncio.Protocol):
        self.inner = inner
        self.arrived_at = time.time()

    def connection_made(self, transport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.arrived_at = time.time()
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def connection_lost(self, exc) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def arrived_at(request: web.Request) -> float:
    """Epoch seconds when the request's bytes came in; now when it did not come through ArrivalStamping."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol.arrived_at if isinstance(protocol, ArrivalStamping) else time.time()
