"""A relay in front of Azurite that records the checkpoint and ownership writes, and the ownership reads, of the
one consumer using it.

Each instance of the trigger gets its own tap (its storage connection string names the tap's port), so who wrote
what, and when, is known from outside the trigger. Shared Key signatures cover the path, not the host: requests
pass through unchanged.

    tap = StorageTap(azurite.account_url).start()
    config = stack.config(storage_connection_string=tap.connection_string(azurite.connection_string))
    tap.writes  # [Write(at, kind, partition, value, order)], at: epoch seconds when the request arrived
    tap.reads  # [Read(order, partition, owner)]: the owner each HEAD of an ownership blob answered

``order`` is the tap's own sequence: a write's when it arrived, a read's when its answer was about to leave, so a
write ordered after a read was sent by a consumer that could have seen that answer (its requests of one partition
go one after the other).
"""

from __future__ import annotations

import http.client
import itertools
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
    order: int  # in the tap's sequence, on arrival


@dataclass(frozen=True)
class Read:
    order: int  # in the tap's sequence, as the answer left
    partition: str
    owner: str  # the owner id the ownership blob named ("": none, or no blob)


class StorageTap:
    def __init__(self, account_url: str):
        target = urlsplit(account_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.writes: list[Write] = []
        self.reads: list[Read] = []
        self._lock = threading.Lock()
        self._order = itertools.count(1)
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
                arrived, order = time.time(), tap._next()
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
                    tap._record(arrived, order, self.path, self.headers)
                elif self.command == "HEAD":
                    tap._record_read(self.path, response)
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

    def _next(self) -> int:
        with self._lock:
            return next(self._order)

    def _record(self, arrived: float, order: int, path: str, headers) -> None:
        match = _BLOB.search(path)
        if not match:
            return
        kind, partition = match.groups()
        value = headers.get("x-ms-meta-sequencenumber" if kind == "checkpoint" else "x-ms-meta-ownerid", "")
        with self._lock:
            self.writes.append(Write(arrived, kind, partition, value, order))

    def _record_read(self, path: str, response: http.client.HTTPResponse) -> None:
        match = _BLOB.search(path)
        if not match or match.group(1) != "ownership" or (response.status >= 300 and response.status != 404):
            return  # an error answer tells the consumer nothing: it reads again before writing
        owner = response.getheader("x-ms-meta-ownerid") or ""  # none in a released blob, or without one (404)
        with self._lock:
            self.reads.append(Read(next(self._order), match.group(2), owner))

    def connection_string(self, azurite_connection_string: str) -> str:
        """The same account through this tap."""
        return re.sub(r"BlobEndpoint=http://[^/;]+", f"BlobEndpoint=http://127.0.0.1:{self.port}",
                      azurite_connection_string)

    def checkpoints(self, partition: str, after: float = 0.0) -> list[Write]:
        with self._lock:
            return [w for w in self.writes if w.kind == "checkpoint" and w.partition == partition and w.at > after]

    def claimed_as(self) -> set[str]:
        """The owner ids the consumer behind this tap claimed partitions as."""
        with self._lock:
            return {w.value for w in self.writes if w.kind == "ownership" and w.value}

    def read_before(self, write: Write) -> Read | None:
        """The consumer's last ownership read of the write's partition before the write."""
        with self._lock:
            return max((r for r in self.reads if r.partition == write.partition and r.order < write.order),
                       key=lambda r: r.order, default=None)

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


# The writer's contract (azure_eventhub/checkpoints.py): a checkpoint is written only while the consumer's last
# ownership read of the partition named it, a read being trusted for at most a load-balancing interval (1 s in the
# handover rigs, ``OWNER_CHECK_MAX_AGE`` at most) before the next one. Judged in the tap's order, not by the clock:
# a write after a read that named another owner broke it, however slow the machine. A loser that never reads again
# is caught by this cap instead, far above the interval (only a stall this long between a read and its write would
# be mistaken for one).
LATE_CAP_S = 10.0


def late_checkpoints(found: Sequence[Handover], cap_s: float = LATE_CAP_S) -> list[Write]:
    """Checkpoints a loser wrote for a partition it lost: after its last ownership read of it named someone else
    (until it claimed it back, a read naming itself again), or more than ``cap_s`` after the new owner claimed it
    and before it claimed it back."""
    late: dict[tuple[int, int], Write] = {}
    for h in found:
        mine = h.loser.claimed_as()
        for w in h.loser.checkpoints(h.partition):
            read = h.loser.read_before(w)
            if (read is not None and read.owner not in mine) or h.at + cap_s < w.at < h.until:
                late[(id(h.loser), w.order)] = w
    return sorted(late.values(), key=lambda w: w.at)
