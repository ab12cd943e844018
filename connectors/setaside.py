"""Local files of the events the intake could not take as they were, kept apart by what they are.

- Refused by the runtime (not sent): ``set-aside-events.jsonl``, their only copy. Never rotated nor expired; its cap
  is a level that is warned (at 80 % and when reached), never a stop: it grows while the disk has room, and only a
  write the disk refuses holds delivery back (the forwarder retries it; nothing past it is acknowledged). Moved away
  by a person, it starts again under the same name.
- Originals of events sent shortened (over the intake's size limit: what reached Sekoia is the shortened copy):
  segments ``shortened-originals-<UTC time>.jsonl``, a new one once the current reaches a quarter of the cap; a
  segment goes once its last write is older than the age limit, and the oldest go while all of them exceed the cap.

Each line: origin, reason, bytes, sha256, event. Writes append and fsync, one call at a time: the forwarder calls
``keep`` in a thread under its own lock (held until the thread returns, even for a cancelled caller), so the
stores need no lock of their own. They log from that thread (the trigger's ``log`` never blocks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from connectors.logs import LogFunction
from connectors.state import Journal
from connectors.truncation import digest

logger = logging.getLogger(__name__)

MB = 1_000_000
REFUSED_FILE = "set-aside-events.jsonl"
ORIGINALS_PREFIX = "shortened-originals-"
WARN_SHARE = 0.8  # of a cap: warned once when reached (again after falling below)
SEGMENTS = 4  # an originals segment holds at most this share of the cap: expiring by size drops a quarter at a time
EXPIRY_CHECK_SECONDS = 600.0  # originals are looked at for age at most this often (at each write, and at start)


@dataclass
class Kept:
    """An event the intake could not take as it was, for the set-aside files."""

    event: bytes  # whole, as collected
    origin: str
    reason: str
    sent: bool = False  # sent shortened (over a size limit: its original is a copy), or not sent at all (refused)


def _lines(kept: list[Kept]) -> list[bytes]:
    return [orjson.dumps({"origin": entry.origin, "reason": entry.reason, "bytes": len(entry.event),
                          "sha256": digest(entry.event), "event": entry.event.decode("utf-8", "replace")})
            for entry in kept]


def _log_to_logger(message: str, level: str) -> None:
    logger.log(logging.getLevelName(level.upper()), message)


class _CapWarning:
    """One warning when a size reaches 80 % of its cap and one when it reaches the cap; re-armed below 80 %."""

    def __init__(self, cap_bytes: int, log: LogFunction, what: str, beyond: str):
        self.cap_bytes = cap_bytes
        self._log = log
        self._what = what  # e.g. "The file of refused events /x/y"
        self._beyond = beyond  # what happens at the cap
        self._said = 0  # 0: nothing, 1: the 80 % warning, 2: the cap reached

    def check(self, size: int) -> None:
        level = 2 if size >= self.cap_bytes else 1 if size >= WARN_SHARE * self.cap_bytes else 0
        if level <= self._said:
            self._said = min(self._said, level)
            return
        self._said = level
        share = "reached its cap" if level == 2 else f"reached {WARN_SHARE * 100:.0f} % of its cap"
        self._log(f"{self._what} {share} of {self.cap_bytes // MB} MB ({size // MB} MB): {self._beyond}",
                  "error" if level == 2 else "warning")


class RefusedFile:
    """The events the runtime refused: kept whole, the only copy, growing past its cap (warned) while the disk
    has room."""

    def __init__(self, path: Path, cap_bytes: int = 200 * MB, log: LogFunction = _log_to_logger):
        self.journal = Journal(path)
        self.written = path.stat().st_size if path.exists() else 0
        self._cap = _CapWarning(
            cap_bytes, log, f"The file of events the runtime refused, {path},",
            "they are still kept, as long as the disk has room; look at why the runtime refuses them, then move the "
            "file elsewhere (a new one starts)")

    @property
    def path(self) -> Path:
        return self.journal.path

    @property
    def cap_bytes(self) -> int:
        return self._cap.cap_bytes

    def keep(self, kept: list[Kept]) -> None:
        """Append the events in one write (one fsync). A write the disk refuses raises OSError."""
        if not kept:
            return
        self._follow_a_move()
        lines = _lines(kept)
        self.journal.append(orjson.Fragment(line) for line in lines)
        self.written += sum(len(line) + 1 for line in lines)  # escaping may make it 6 times the event
        self._cap.check(self.written)

    def _follow_a_move(self) -> None:
        """Moved away by a person (at its cap): the next write starts a new file under its name."""
        if self.journal.follow_a_move():
            self.written = 0
            self._cap.check(0)

    def close(self) -> None:
        self.journal.close()


class OriginalsArchive:
    """The originals of events sent shortened: rotated segments expired by age and by total size."""

    def __init__(self, directory: Path, cap_bytes: int = 200 * MB, max_age_seconds: float = 30 * 86400.0,
                 log: LogFunction = _log_to_logger, clock: Callable[[], float] = time.time):
        self.directory = Path(directory)
        self.cap_bytes = cap_bytes
        self.max_age_seconds = max_age_seconds
        self._log = log
        self._clock = clock
        self._segment_bytes = max(1, cap_bytes // SEGMENTS)
        self._current: Journal | None = None
        self._current_size = 0
        self._checked_at = float("-inf")
        self._warned = False  # once per process: at its cap is the steady state of a source of large events

    @property
    def pattern(self) -> str:
        return str(self.directory / f"{ORIGINALS_PREFIX}*.jsonl")

    def segments(self) -> list[Path]:
        """Oldest first (their names are their UTC start times)."""
        return sorted(self.directory.glob(f"{ORIGINALS_PREFIX}*.jsonl"))

    def keep(self, kept: list[Kept]) -> None:
        """Append the originals in one write (one fsync), in a new segment once the current one is full; then
        expire. A write the disk refuses raises OSError."""
        if not kept:
            return
        lines = _lines(kept)
        size = sum(len(line) + 1 for line in lines)
        if self._current is None or (self._current_size and self._current_size + size > self._segment_bytes):
            self._rotate()
        assert self._current is not None
        self._current.append(orjson.Fragment(line) for line in lines)
        self._current_size += size
        self.expire(force=self._current_size == size)  # a new segment: old ones may have to go for the size

    def _rotate(self) -> None:
        if self._current is not None:
            self._current.close()
        name = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.directory / f"{ORIGINALS_PREFIX}{name}.jsonl"
        self._current, self._current_size = Journal(path), 0

    def expire(self, force: bool = False) -> None:
        """Remove the segments whose last write is older than the age limit, then the oldest while all of them
        exceed the cap (never the one being written). Looked at for age at most every ``EXPIRY_CHECK_SECONDS``."""
        now = self._clock()
        if not force and now - self._checked_at < EXPIRY_CHECK_SECONDS:
            return
        self._checked_at = now
        current = self._current.path if self._current is not None else None
        sizes: list[tuple[Path, int]] = []
        aged = 0
        for path in self.segments():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path != current and now - stat.st_mtime > self.max_age_seconds:
                path.unlink(missing_ok=True)
                aged += 1
                continue
            sizes.append((path, stat.st_size))
        total = sum(size for _, size in sizes)
        if not self._warned and total >= WARN_SHARE * self.cap_bytes:
            self._warned = True
            self._log(f"The originals of events sent shortened, {self.pattern}, reached {WARN_SHARE * 100:.0f} % "
                      f"of their cap of {self.cap_bytes // MB} MB: from the cap on, the oldest are removed before "
                      "their age limit", "warning")
        dropped = 0
        for path, size in sizes:
            if total <= self.cap_bytes:
                break
            if path == current:
                continue
            path.unlink(missing_ok=True)
            total -= size
            dropped += 1
        if dropped:
            self._log(f"Removed the {dropped} oldest segments of originals of events sent shortened, before their "
                      f"age limit, to stay under their cap of {self.cap_bytes // MB} MB", "info")

    def close(self) -> None:
        if self._current is not None:
            self._current.close()


class SetAsideStore:
    """Both files of a trigger, in its state directory: ``keep`` sends each event to its own."""

    def __init__(self, directory: Path, *, refused_cap_bytes: int = 200 * MB, originals_cap_bytes: int = 200 * MB,
                 originals_max_age_seconds: float = 30 * 86400.0, log: LogFunction = _log_to_logger):
        self.refused = RefusedFile(Path(directory) / REFUSED_FILE, refused_cap_bytes, log)
        self.originals = OriginalsArchive(directory, originals_cap_bytes, originals_max_age_seconds, log)
        self.originals.expire()

    @property
    def path(self) -> Path:
        """Where the refused events are."""
        return self.refused.path

    def keep(self, kept: list[Kept]) -> None:
        """Refused events to their file, originals of shortened ones to theirs (in that order: the refused ones
        are the only copy). A write the disk refuses raises OSError."""
        self.refused.keep([entry for entry in kept if not entry.sent])
        self.originals.keep([entry for entry in kept if entry.sent])

    def where(self, sent: bool) -> str:
        return self.originals.pattern if sent else str(self.refused.path)

    def close(self) -> None:
        self.refused.close()
        self.originals.close()
