"""A TCP proxy on loopback that misbehaves as a user's network does, in front of any of the local servers (hub,
Azurite, Management API, Entra, runtime stub), for the tests and the reliability scenarios.

Faults, each on every connection through it or on new ones:

- ``cut()``: every open connection is reset now (RST both ways); new ones pass.
- ``refuse(True)``: new connections are reset as soon as accepted, until ``refuse(False)``.
- ``blackhole(True)``: no byte moves either way on any connection, old or new, and nothing is closed, until
  ``blackhole(False)``: then what was held flows again (as TCP retransmits once a route comes back).
- ``freeze()``: the connections open now go silent for good (no bytes, no FIN, no RST: a NAT or firewall that
  dropped their state); new connections pass. ``release_frozen()`` resets them, as a firewall's late RST would.

TLS passes through untouched (the proxy only moves bytes), so a client checks the server's certificate as usual.
Runs its own event loop in a daemon thread; every method may be called from any thread.

``python -m emulators.netfault --target HOST:PORT [--port N]`` runs one in the foreground (faults then come from
a test's own process only: this is for trying a client by hand).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import threading
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass(eq=False)  # hashed by identity: links live in a set
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    frozen: bool = False
    tasks: list[asyncio.Task] = field(default_factory=list)


@dataclass
class Stats:
    accepted: int = 0
    refused: int = 0
    open: int = 0
    bytes_up: int = 0  # client -> server
    bytes_down: int = 0


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, port: int = 0, host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        self.stats = Stats()
        self._links: set[_Link] = set()
        self._refusing = False
        self._flowing: asyncio.Event | None = None  # cleared while blackholed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- life -------------------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=f"netfault-{self.target[1]}",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._close_all)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = loop.run_until_complete(asyncio.start_server(self._accept, self.host, self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def _call(self, fn, *args) -> None:
        """Run ``fn`` on the proxy's loop and wait until it ran."""
        if self._loop is None:
            raise RuntimeError("the fault proxy is not running")
        done = threading.Event()

        def call() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(call)
        done.wait(10)

    # -- faults -----------------------------------------------------------------------------------------------

    def cut(self) -> None:
        self._call(self._close_all)

    def refuse(self, on: bool = True) -> None:
        self._refusing = on

    def blackhole(self, on: bool = True) -> None:
        self._call(self._flowing.clear if on else self._flowing.set)

    def freeze(self) -> int:
        """Freezes the connections open now; returns how many."""
        frozen = []

        def mark() -> None:
            for link in self._links:
                link.frozen = True
                frozen.append(link)

        self._call(mark)
        return len(frozen)

    def release_frozen(self) -> None:
        self._call(lambda: [self._reset(link) for link in list(self._links) if link.frozen])

    # -- the proxy ----------------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.stats.refused += 1
            send_reset(writer.transport)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.stats.refused += 1
            send_reset(writer.transport)
            return
        self.stats.accepted += 1
        self.stats.open += 1
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [asyncio.create_task(self._pump(link, reader, up_writer, "bytes_up")),
                      asyncio.create_task(self._pump(link, up_reader, writer, "bytes_down"))]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        if link in self._links:
            self._links.discard(link)
            self.stats.open -= 1
            for side in (link.client, link.server):
                side.close()

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    counter: str) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                # Held, not dropped: a blackhole ends with the bytes flowing again (TCP retransmits), a frozen
                # link never moves a byte again and never closes.
                await self._flowing.wait()
                if link.frozen:
                    await asyncio.Event().wait()
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                setattr(self.stats, counter, getattr(self.stats, counter) + len(data))  # counted before it is seen
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            self._reset(link)

    def _reset(self, link: _Link) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        self.stats.open -= 1
        for task in link.tasks:
            task.cancel()
        for side in (link.client, link.server):
            send_reset(side.transport)

    def _close_all(self) -> None:
        for link in list(self._links):
            self._reset(link)


def send_reset(transport: asyncio.BaseTransport | None) -> None:
    """Close with an RST (SO_LINGER 0) rather than a clean FIN, as a middlebox that gives up on a connection does."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the server behind the proxy")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    proxy = FaultProxy(host, int(port), args.port).start()
    print(f"fault proxy on {proxy.address} -> {args.target}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
