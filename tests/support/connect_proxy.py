"""An HTTP proxy on loopback for the tests, as a locked-down tenant's network has one: CONNECT tunnels (HTTPS,
AMQP over WebSockets) and absolute-form requests (plain HTTP, e.g. Azurite), optionally behind basic
authentication, counting what went through it per target host, and able to refuse as real proxies do.

    with ConnectProxy(auth=("user", "pass")) as proxy:
        env["HTTPS_PROXY"] = proxy.url_with_credentials
        ...
        assert proxy.tunnels["127.0.0.1:8443"] >= 1

``refuse`` answers every request with that status instead (407 asks for credentials again, 403 forbids the
destination, 502 says the destination is unreachable); ``refuse_hosts`` does so for some targets only.

``routes`` (host name or domain -> loopback port) also stands in for DNS: a target whose host is a key, or under
one (``NAME.servicebus.usgovcloudapi.net`` under ``servicebus.usgovcloudapi.net``), is reached at 127.0.0.1 on
that port, so clients reach the emulators under Azure's real names and check their certificates against those
names; with ``routes``, a target under none of them is refused (403), nothing leaves the machine.
"""

from __future__ import annotations

import base64
import select
import socket
import socketserver
import threading
from collections import Counter
from urllib.parse import urlsplit

REASONS = {200: "Connection established", 403: "Forbidden", 407: "Proxy Authentication Required",
           502: "Bad Gateway"}


class ConnectProxy:
    def __init__(self, auth: tuple[str, str] | None = None, refuse: int | None = None,
                 refuse_hosts: dict[str, int] | None = None, routes: dict[str, int] | None = None):
        self.auth = auth
        self.routes = routes
        self.refuse = refuse
        self.refuse_hosts = dict(refuse_hosts or {})  # "host:port" -> status
        self.lock = threading.Lock()
        self.tunnels: Counter[str] = Counter()  # CONNECTs tunnelled, per "host:port"
        self.forwarded: Counter[str] = Counter()  # absolute-form requests forwarded, per "host:port"
        self.refused: Counter[str] = Counter()  # "host:port status"
        self.bytes_up: Counter[str] = Counter()  # client -> target, per "host:port"
        self.bytes_down: Counter[str] = Counter()  # target -> client
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    # -- addresses ------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        if self.auth is None:
            return self.url
        return f"http://{self.auth[0]}:{self.auth[1]}@127.0.0.1:{self.port}"

    def through(self, host: str) -> int:
        """Tunnels and requests that reached ``host`` (any port, or "host:port")."""
        with self.lock:
            seen = self.tunnels + self.forwarded
        return sum(count for target, count in seen.items() if target == host or target.rsplit(":", 1)[0] == host)

    def _route(self, host: str) -> int | None:
        """The loopback port ``routes`` sends ``host`` to, if any."""
        return next((port for name, port in (self.routes or {}).items()
                     if host == name or host.endswith("." + name)), None)

    # -- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> ConnectProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="connect-proxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- one client connection ------------------------------------------------------------------------------

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                return
            head += chunk
            if len(head) > 65536:
                return
        header_block, _, rest = head.partition(b"\r\n\r\n")
        lines = header_block.decode("latin-1").split("\r\n")
        method, target, version = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
        names = {name.strip().lower(): value.strip() for name, value in headers}
        if method.upper() == "CONNECT":
            host_port = target
        else:
            parts = urlsplit(target)
            host_port = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        status = self._verdict(host_port, names.get("proxy-authorization"))
        if status is not None:
            with self.lock:
                self.refused[f"{host_port} {status}"] += 1
            extra = 'Proxy-Authenticate: Basic realm="tests"\r\n' if status == 407 else ""
            body = f"{status} {REASONS.get(status, 'Refused')}\n".encode()
            client.sendall(f"HTTP/1.1 {status} {REASONS.get(status, 'Refused')}\r\n{extra}Content-Length: "
                           f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            return
        host, _, port = host_port.rpartition(":")
        host = host.strip("[]")
        if self.routes is not None:
            host, port = "127.0.0.1", self._route(host)
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except OSError:
            with self.lock:
                self.refused[f"{host_port} 502"] += 1
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        with upstream:
            if method.upper() == "CONNECT":
                with self.lock:
                    self.tunnels[host_port] += 1
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
            else:
                # Origin-form to the target, one request per connection (the client opens another for the next).
                parts = urlsplit(target)
                path = parts.path or "/"
                if parts.query:
                    path += "?" + parts.query
                kept = [f"{name}:{value}" for name, value in headers
                        if name.strip().lower() not in ("proxy-authorization", "proxy-connection", "connection")]
                request = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
                with self.lock:
                    self.forwarded[host_port] += 1
                upstream.sendall(request.encode("latin-1") + rest)
            self._pipe(client, upstream, host_port)

    def _verdict(self, host_port: str, authorization: str | None) -> int | None:
        if self.refuse is not None:
            return self.refuse
        if host_port in self.refuse_hosts:
            return self.refuse_hosts[host_port]
        if self.auth is not None:
            expected = "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            if authorization != expected:
                return 407
        if self.routes is not None and self._route(host_port.rpartition(":")[0].strip("[]")) is None:
            return 403
        return None

    def _pipe(self, client: socket.socket, upstream: socket.socket, host_port: str) -> None:
        sockets = [client, upstream]
        client.settimeout(None)
        upstream.settimeout(None)
        while True:
            readable, _, failed = select.select(sockets, [], sockets, 60)
            if failed or not readable:
                return
            for source in readable:
                try:
                    data = source.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                target = upstream if source is client else client
                try:
                    target.sendall(data)
                except OSError:
                    return
                with self.lock:
                    (self.bytes_up if source is client else self.bytes_down)[host_port] += len(data)
