"""The local file of events the intake could not take as they were (too large, or refused by the runtime)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from connectors.state import Journal
from connectors.truncation import digest


class SetAsideStore:
    """Keeps, in a capped file, the full events the intake could not take as they were: over its 250,000-byte
    limit (they were sent shortened) or refused by the runtime (not sent). None disappears silently: a refused event
    the file cannot take stops delivery before anything past it is acknowledged.

    ``keep`` writes and fsyncs: the forwarder calls it in a thread, one call at a time (its own lock on the loop,
    held until the thread returns even when its caller is cancelled), so the store needs no lock of its own."""

    def __init__(self, path: Path, cap_bytes: int = 200_000_000):
        self.journal = Journal(path)
        self.cap_bytes = cap_bytes
        self.written = path.stat().st_size if path.exists() else 0

    @property
    def path(self) -> Path:
        return self.journal.path

    def keep(self, kept: list[Kept]) -> bool:
        """Write the events in one append (one fsync): all of them, or none (False) when they would take the
        file over its cap. A failed write (a full disk) raises OSError."""
        lines = [orjson.dumps({"origin": entry.origin, "reason": entry.reason, "bytes": len(entry.event),
                               "sha256": digest(entry.event), "event": entry.event.decode("utf-8", "replace")})
                 for entry in kept]
        size = sum(len(line) + 1 for line in lines)  # what lands in the file: escaping may make it 6 times the event
        if self.written + size > self.cap_bytes:
            return False
        self.journal.append(orjson.Fragment(line) for line in lines)
        self.written += size
        return True


@dataclass
class Kept:
    """An event the intake could not take as it was, for the set-aside file."""

    event: bytes  # whole, as collected
    origin: str
    reason: str
    sent: bool = False  # sent shortened (over a size limit), or not sent at all (refused)
    by_runtime: bool = False  # refused by the runtime (not by our own encoding)
