"""A relay in front of Azurite that records the checkpoint and ownership writes of the one consumer using it.

Each instance of the trigger gets its own tap (its storage connection string names the tap's port), so who wrote
what, and when, is known from outside the trigger. Shared Key signatures cover the path, not the host: requests
pass through unchanged.

    tap = StorageTap(azurite.account_url).start()
    config = stack.config(storage_connection_string=tap.connection_string(azurite.connection_string))
    tap.writes  # [Write(at, kind, partition, value)], at: epoch seconds when the request arrived
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
_BLOB = re.compile(r"/(checkpoint|ownership)/([^/?]+)")


@dataclass(frozen=True)
class Write:
    at: float
    kind: str  # checkpoint | ownership
    partition: str
    value: str  # the sequence number written, or the owner id claimed


class StorageTap:
    def __init__(self, account_url: str):
        target = urlsplit(account_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.writes: list[Write] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.hanging = threading.Event()  # set: requests are taken and never answered (until stop), as a stuck account
        self._released = threading.Event()

    def start(self) -> "StorageTap":
        tap = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream: http.client.HTTPConnection | None = None

            def log_message(self, *args) -> None:  # quiet
                pass

            def _relay(self) -> None:
                arrived = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if tap.hanging.is_set():
                    tap._released.wait()
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(*tap.target, timeout=30)
                try:
                    self.upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = self.upstream.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException):
                    self.upstream.close()
                    self.upstream = None
                    self.send_error(502)
                    return
                if self.command == "PUT" and response.status < 300:
                    tap._record(arrived, self.path, self.headers)
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(payload))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="storage-tap", daemon=True).start()
        return self

    def _record(self, arrived: float, path: str, headers) -> None:
        match = _BLOB.search(path)
        if not match:
            return
        kind, partition = match.groups()
        value = headers.get("x-ms-meta-sequencenumber" if kind == "checkpoint" else "x-ms-meta-ownerid", "")
        with self._lock:
            self.writes.append(Write(arrived, kind, partition, value))

    def connection_string(self, azurite_connection_string: str) -> str:
        """The same account through this tap."""
        return re.sub(r"BlobEndpoint=http://[^/;]+", f"BlobEndpoint=http://127.0.0.1:{self.port}",
                      azurite_connection_string)

    def checkpoints(self, partition: str, after: float = 0.0) -> list[Write]:
        with self._lock:
            return [w for w in self.writes if w.kind == "checkpoint" and w.partition == partition and w.at > after]

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass(frozen=True)
class Handover:
    partition: str
    at: float  # when the new owner claimed it
    loser: StorageTap
    until: float  # when the loser claimed it again (inf: never)


def handovers(taps: Sequence[StorageTap]) -> list[Handover]:
    """Partitions that went from one consumer to another, from the ownership claims the taps saw (one tap per
    consumer; a release, with an empty owner, is not a claim)."""
    found = []
    for partition in sorted({w.partition for tap in taps for w in tap.writes if w.kind == "ownership"}):
        claims = sorted(((w.at, w.value, tap) for tap in taps for w in tap.writes
                         if w.kind == "ownership" and w.partition == partition and w.value), key=lambda c: c[0])
        for (_, owner, loser), (claimed_at, new_owner, winner) in zip(claims, claims[1:]):
            if new_owner != owner and winner is not loser:
                back = min((at for at, _, tap in claims if tap is loser and at > claimed_at), default=float("inf"))
                found.append(Handover(partition, claimed_at, loser, back))
    return found


# How late after a claim a loser's checkpoint may arrive: the loser trusts its last ownership read for up to the
# load-balancing interval (1 s in the handover rigs, ``OWNER_CHECK_MAX_AGE`` at most), and a request it sent just
# before may land later on a loaded machine.
LATE_GRACE_S = 2.5


def late_checkpoints(found: Sequence[Handover], grace_s: float = LATE_GRACE_S) -> list[Write]:
    """Checkpoints a loser wrote for the partition more than ``grace_s`` after the new owner claimed it, before
    it claimed it back."""
    return [w for h in found for w in h.loser.checkpoints(h.partition, h.at + grace_s) if w.at < h.until]
