"""What the trigger remembers, and the rules that keep it from losing or repeating content.

- **Resume point** per content type (``StateFile``): content created before it was all delivered. It is the
  earlier of "listed up to" and the creation time of the oldest blob listed but not yet delivered, so it only
  moves past a blob once the runtime confirmed that blob's records. Until a first window is listed it is only
  the ``initial_lookback`` (saved as ``initial``): a restart after a fault that came before any listing owes
  nothing older than what the API still keeps, so it reports no gap.
- **Ledger** of delivered blobs (``Journal``, one fsync per write, which takes every commit since the last):
  re-listing a window (the trailing re-list that catches late blobs, a restart) skips what was delivered. Entries
  expire with the blob (7 days), so the ledger stays bounded; it is compacted when mostly expired.
- **Record filter**: a record repeated verbatim in a later blob is forwarded once. It is keyed on a hash of the
  record's bytes, not on ``Id``: distinct records may share an ``Id``. Bounded (oldest forgotten first), and
  rebuilt at start from the hashes kept in the ledger.

Everything above lives on the trigger's event loop (listing, processing, and the acknowledgements that commit):
no lock. Files are written off the loop (``persist``) from a snapshot taken on it, one write at a time (a write
whose caller was cancelled keeps its turn until its thread returned), the ledger's new lines before the checkpoint
that counts on them.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from connectors.errors import CorruptStateError
from connectors.locks import InstanceLock
from connectors.state import Journal, StateFile, thread_to_its_end
from office365.listing import ContentRef

LEDGER_GRACE = 3600.0  # keep ledger entries an hour past the blob's expiry: listings near the limit still see it
SAVE_INTERVAL = 1.0
COMPACT_CHECK_INTERVAL = 600.0


_FIRST_8_BYTES = struct.Struct(">Q").unpack_from


def record_hash(record: bytes) -> int:
    """63 bits of SHA-1 (hardware-accelerated, faster than BLAKE2 here): collisions are negligible at the bound."""
    return _FIRST_8_BYTES(hashlib.sha1(record, usedforsecurity=False).digest())[0] >> 1


def record_hashes(records: list[bytes]) -> list[int]:
    """``record_hash`` of each record; the processor's hot path, so the lookups are hoisted out of the loop."""
    sha1, first = hashlib.sha1, _FIRST_8_BYTES
    return [first(sha1(record, usedforsecurity=False).digest())[0] >> 1 for record in records]


def content_key(content_id: str) -> int:
    # The ledger can hold a week of blobs: a 63-bit key instead of a ~90-character string.
    return int.from_bytes(hashlib.sha1(content_id.encode(), usedforsecurity=False).digest()[:8], "big") >> 1


class RecordFilter:
    """Hashes of records already forwarded, the most recent ``capacity`` of them."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._seen: set[int] = set()
        self._order: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: int) -> bool:
        return key in self._seen

    def admit(self, records: list[bytes], keys: list[int]) -> tuple[list[bytes], list[int]]:
        """The records (and their keys) not seen before, remembered from now on; the hot path."""
        if self.capacity <= 0:
            return records, keys
        seen, order = self._seen, self._order
        fresh: list[bytes] = []
        fresh_keys: list[int] = []
        for record, key in zip(records, keys):
            if key not in seen:
                seen.add(key)
                order.append(key)
                fresh.append(record)
                fresh_keys.append(key)
        while len(order) > self.capacity:
            seen.discard(order.popleft())
        return fresh, fresh_keys

    def forget(self, keys: Iterable[int]) -> None:
        """Records admitted but not handed over after all (their blob failed): a retry must not see duplicates."""
        self._seen.difference_update(keys)

    def add(self, key: int) -> bool:
        """Remember ``key``; False when it was already there (a duplicate)."""
        if key in self._seen:
            return False
        if self.capacity <= 0:
            return True
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > self.capacity:
            self._seen.discard(self._order.popleft())
        return True


@dataclass(slots=True)
class Delivered:
    """A blob whose records were handed to the forwarder; committed once the runtime confirmed them."""

    ref: ContentRef
    hashes: list[int] = field(default_factory=list)
    records: int = 0
    skipped: str = ""  # why the blob was skipped (AF20050/51/52), empty when fetched


@dataclass(slots=True)
class _Write:
    """What one write puts on disk, taken on the loop: the ledger's new lines, then the checkpoint (None: unchanged
    or not due), and whether the ledger is rewritten without the lines expired before ``compact_before``."""

    entries: list[dict]
    checkpoint: dict | None
    compact_before: float | None
    live: int = 0  # ledger lines left by a compaction


@dataclass
class _Progress:
    listed_until: float  # epoch seconds: every blob created before it was listed (and tracked or delivered)
    pending: dict[str, float] = field(default_factory=dict)  # content id -> contentCreated
    saved_resume: float | None = None
    initial: bool = True  # nothing listed yet: the resume point is only the initial lookback

    def resume(self) -> float:
        return min(self.listed_until, min(self.pending.values())) if self.pending else self.listed_until


class CollectorState:
    VERSION = 1

    def __init__(
        self,
        directory: Path,
        content_types: Iterable[str],
        *,
        initial_lookback: timedelta,
        filter_capacity: int,
        now: datetime | None = None,
    ):
        self.directory = Path(directory)
        self.content_types = list(content_types)
        # Two processes on this state would both list and send everything: the second one stops here.
        self._instance = InstanceLock(
            self.directory / "office365.lock",
            "SEKOIA_DATA_PATH",
            "two collectors on one data path would send every record twice; stop the other one, or give each "
            "instance its own data path",
        )
        self._checkpoint = StateFile(self.directory / "office365-checkpoint.json")
        self._journal = Journal(self.directory / "office365-ledger.jsonl")
        self._ledger: dict[int, float] = {}
        self._unwritten: list[dict] = []  # ledger lines committed, not yet written
        self._writing = asyncio.Lock()  # one write at a time: journal lines stay in commit order
        self._persisting: asyncio.Task | None = None
        self._journal_entries = 0
        self._last_save = 0.0
        self._last_compact_check = time.monotonic()
        self.filter = RecordFilter(filter_capacity)
        self._progress: dict[str, _Progress] = {}
        self._saved_initial: list[str] | None = None
        try:
            self._load((now or datetime.now(UTC)), initial_lookback)
        except BaseException:
            self._instance.release()
            raise

    # -- loading --------------------------------------------------------------------------------------------

    def _load(self, now: datetime, initial_lookback: timedelta) -> None:
        saved = self._checkpoint.load(default={}) or {}
        if not isinstance(saved, dict) or not isinstance(saved.get("resume", {}), dict):
            raise CorruptStateError(f"State file {self._checkpoint.path} does not hold a resume point per content type")
        resume = saved.get("resume", {})
        never_listed = set(saved.get("initial", ())) if isinstance(saved.get("initial", ()), list) else set()
        initial = (now - initial_lookback).timestamp()
        for content_type in self.content_types:
            value = resume.get(content_type)
            start = initial
            if value is not None:
                try:
                    start = float(value)
                except (TypeError, ValueError):
                    raise CorruptStateError(
                        f"State file {self._checkpoint.path}: bad resume point for {content_type}"
                    ) from None
            self._progress[content_type] = _Progress(
                listed_until=start,
                saved_resume=start if value is not None else None,
                initial=value is None or content_type in never_listed,
            )

        entries = self._journal.replay()
        now_ts = now.timestamp()
        live = []
        for entry in entries:
            try:
                content_id, expires = entry["c"], float(entry["x"])
            except (KeyError, TypeError, ValueError):
                raise CorruptStateError(
                    f"Ledger {self._journal.path} holds an entry without content id or expiry"
                ) from None
            if expires < now_ts:
                continue
            live.append(entry)
            self._ledger[content_key(content_id)] = expires
            for key in entry.get("h", ()):
                self.filter.add(key)
        self._journal_entries = len(live)
        if len(live) < len(entries):
            self._journal.rewrite(live)

    # -- listing side --------------------------------------------------------------------------------------

    def resume_point(self, content_type: str) -> datetime:
        return datetime.fromtimestamp(self._progress[content_type].resume(), UTC)

    def listed_until(self, content_type: str) -> datetime:
        return datetime.fromtimestamp(self._progress[content_type].listed_until, UTC)

    def is_known(self, content_type: str, content_id: str) -> bool:
        """Delivered, or listed and on its way."""
        return content_id in self._progress[content_type].pending or content_key(content_id) in self._ledger

    def track(self, ref: ContentRef) -> bool:
        """Take a listed blob in; False when it was delivered or is already on its way."""
        progress = self._progress[ref.content_type]
        if ref.content_id in progress.pending or content_key(ref.content_id) in self._ledger:
            return False
        progress.pending[ref.content_id] = ref.created
        return True

    def listed(self, content_type: str, until: datetime) -> None:
        progress = self._progress[content_type]
        progress.listed_until = max(progress.listed_until, until.timestamp())
        progress.initial = False

    def skip_to(self, content_type: str, moment: datetime) -> None:
        """Content before ``moment`` expired while the trigger was away: stop resuming from before it."""
        progress = self._progress[content_type]
        progress.listed_until = max(progress.listed_until, moment.timestamp())
        for content_id, created in list(progress.pending.items()):
            if created < moment.timestamp():
                del progress.pending[content_id]

    def rewind(self, content_type: str, moment: datetime) -> None:
        """Listed only up to ``moment``: the resume point was past the API's clock (the only way back)."""
        self._progress[content_type].listed_until = moment.timestamp()

    def owes_from_resume(self, content_type: str) -> bool:
        """Whether content from the resume point on was promised: a window was listed since the state began (the
        initial lookback alone promises only what the API still keeps)."""
        return not self._progress[content_type].initial

    def pending(self, content_type: str) -> tuple[int, float | None]:
        """(blobs listed and not delivered, contentCreated of the oldest one)."""
        pending = self._progress[content_type].pending
        return len(pending), (min(pending.values()) if pending else None)

    # -- delivery side (acknowledgements, after confirmation) ------------------------------------------------

    def commit(self, delivered: list[Delivered]) -> None:
        """The runtime confirmed every record of these blobs: record them, and let the resume point move. In memory
        (an acknowledgement must not block the loop): the next write puts them in the ledger."""
        for item in delivered:
            expires = item.ref.expiration + LEDGER_GRACE
            self._ledger[content_key(item.ref.content_id)] = expires
            self._progress[item.ref.content_type].pending.pop(item.ref.content_id, None)
            self._unwritten.append({"c": item.ref.content_id, "x": int(expires), "h": item.hashes})
        self._journal_entries += len(delivered)

    def persist_soon(self) -> None:
        """On the loop, after commits: write them off the loop now; commits made meanwhile join the next write."""
        if self._persisting is None and self._unwritten:
            self._persisting = asyncio.get_running_loop().create_task(self._persist_committed())

    async def _persist_committed(self) -> None:
        try:
            while self._unwritten:
                await self.persist()
        except Exception:  # noqa: BLE001 - the monitor's next write meets the same trouble and fails the run
            pass
        finally:
            self._persisting = None

    async def persist(self, force: bool = False) -> None:
        """On the loop: write what changed (the checkpoint at most once a second unless ``force``) in a thread."""
        async with self._writing:
            write = self._next_write(force)
            if write is None:
                return

            def settle(written: bool) -> None:
                if written:
                    self._written(write)
                else:
                    self._unwritten[:0] = write.entries  # written next time (a line twice in the ledger is harmless)

            # Held to the thread's end even when cancelled (the monitor, at every stop): a second write alongside
            # would share the files and the journal handle.
            await thread_to_its_end(self._write, write, settle=settle)

    def save(self, force: bool = False) -> None:
        """``persist`` where no loop runs (at close, after the run's loop ended)."""
        write = self._next_write(force)
        if write is not None:
            try:
                self._write(write)
            except BaseException:
                self._unwritten[:0] = write.entries
                raise
            self._written(write)

    def _next_write(self, force: bool) -> _Write | None:
        """On the loop: the snapshot of what to write."""
        entries, self._unwritten = self._unwritten, []
        checkpoint = None
        now = time.monotonic()
        if force or now - self._last_save >= SAVE_INTERVAL:
            resume = {ct: progress.resume() for ct, progress in self._progress.items()}
            initial = [ct for ct, progress in self._progress.items() if progress.initial]
            if initial != self._saved_initial or any(resume[ct] != self._progress[ct].saved_resume for ct in resume):
                checkpoint = {"version": self.VERSION, "resume": resume, "initial": initial}
        compact_before = self._compaction()
        if not entries and checkpoint is None and compact_before is None:
            return None
        return _Write(entries, checkpoint, compact_before)

    def _write(self, write: _Write) -> None:
        """In a thread (or where no loop runs): touches the files only."""
        self._journal.append(write.entries)
        if write.compact_before is not None:
            live = [entry for entry in self._journal.replay() if float(entry["x"]) >= write.compact_before]
            self._journal.rewrite(live)
            write.live = len(live)
        if write.checkpoint is not None:
            self._checkpoint.save(write.checkpoint)

    def _written(self, write: _Write) -> None:
        if write.compact_before is not None:
            self._journal_entries = write.live + len(self._unwritten)
        if write.checkpoint is not None:
            for content_type, value in write.checkpoint["resume"].items():
                self._progress[content_type].saved_resume = value
            self._saved_initial = write.checkpoint["initial"]
            self._last_save = time.monotonic()

    def _compaction(self) -> float | None:
        """Every few minutes: drop expired entries from memory; the cut-off for a rewrite of the ledger once they
        are most of it (None: not now)."""
        if time.monotonic() - self._last_compact_check < COMPACT_CHECK_INTERVAL:
            return None
        self._last_compact_check = time.monotonic()
        now = time.time()
        for key in [key for key, expires in self._ledger.items() if expires < now]:
            del self._ledger[key]
        return now if self._journal_entries > 1000 and self._journal_entries > 2 * len(self._ledger) else None

    def close(self) -> None:
        try:
            self.save(force=True)
            self._journal.close()
        finally:
            self._instance.release()

    @property
    def ledger_size(self) -> int:
        return len(self._ledger)
