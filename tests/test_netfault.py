"""The fault proxy itself, in front of an echo server: each fault does what a network does, and only that."""

import socket
import socketserver
import threading

import pytest

from emulators.netfault import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while data := self.request.recv(4096):
                self.request.sendall(data)
        except ConnectionResetError:  # the proxy's cut reaches the server too
            pass


@pytest.fixture
def proxy():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with FaultProxy("127.0.0.1", server.server_address[1]) as proxy:
        yield proxy
    server.shutdown()
    server.server_close()


def connect(proxy, timeout=5.0):
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    return sock


def echo(sock, data=b"ping"):
    sock.sendall(data)
    return sock.recv(4096)


def test_passes_bytes_and_counts_them(proxy):
    with connect(proxy) as sock:
        assert echo(sock) == b"ping"
    assert proxy.stats.accepted == 1 and proxy.stats.bytes_up == 4 and proxy.stats.bytes_down == 4


def test_cut_resets_open_connections_and_lets_new_ones_pass(proxy):
    with connect(proxy) as sock:
        assert echo(sock) == b"ping"
        proxy.cut()
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            sock.sendall(b"x")
            if not sock.recv(10):
                raise ConnectionResetError
    with connect(proxy) as sock:
        assert echo(sock) == b"ping"


def test_refused_while_refusing(proxy):
    proxy.refuse(True)
    with pytest.raises((ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        with connect(proxy) as sock:  # the reset may come before connect() returns
            sock.sendall(b"x")
            if not sock.recv(10):
                raise ConnectionResetError
    proxy.refuse(False)
    with connect(proxy) as sock:
        assert echo(sock) == b"ping"
    assert proxy.stats.refused == 1


def test_blackhole_holds_bytes_without_closing_then_they_flow(proxy):
    with connect(proxy, timeout=0.5) as sock:
        assert echo(sock) == b"ping"
        proxy.blackhole(True)
        sock.sendall(b"held")
        with pytest.raises(socket.timeout):  # silence, not a close (a close would return b"")
            sock.recv(10)
        proxy.blackhole(False)
        sock.settimeout(5)
        assert sock.recv(10) == b"held"


def test_freeze_silences_open_connections_for_good_and_new_ones_pass(proxy):
    with connect(proxy, timeout=0.5) as frozen:
        assert echo(frozen) == b"ping"
        assert proxy.freeze() == 1
        frozen.sendall(b"lost")
        with pytest.raises(socket.timeout):
            frozen.recv(10)
        with connect(proxy) as fresh:
            assert echo(fresh, b"pong") == b"pong"
        with pytest.raises(socket.timeout):  # still silent, still open
            frozen.recv(10)
        proxy.release_frozen()
        frozen.settimeout(5)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            if not frozen.recv(10):
                raise ConnectionResetError
