"""What the trigger remembers, and the rules that keep it from losing or repeating content.

- **Resume point** per content type (``StateFile``): content created before it was all delivered. It is the
  earlier of "listed up to" and the creation time of the oldest blob listed but not yet delivered, so it only
  moves past a blob once the runtime confirmed that blob's records. Until a first window is listed it is only
  the ``initial_lookback`` (saved as ``initial``): a restart after a fault that came before any listing owes
  nothing older than what the API still keeps, so it reports no gap.
- **Ledger** of delivered blobs (``office365.ledger``, one transaction per write, which takes every commit since
  the last): re-listing a window (the trailing re-list that catches late blobs, a restart) skips what was
  delivered. Rows expire with the blob (7 days), so the ledger stays bounded; it is looked up on disk, never
  loaded, so a start costs the same whatever the history.
- **Record filter** (``office365.record_filter``): a record published again in a later blob is forwarded once.
  Bounded (oldest forgotten first); its keys are written with the blobs that held them, and a start reads back
  only the most recent ``filter_capacity``.

Everything above lives on the trigger's event loop (listing, processing, and the acknowledgements that commit):
no lock. Files are written off the loop (``persist``) from a snapshot taken on it, one write at a time (a write
whose caller was cancelled keeps its turn until its thread returned), the ledger's rows before the checkpoint
that counts on them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from connectors.errors import CorruptStateError
from connectors.locks import InstanceLock
from connectors.state import StateFile, thread_to_its_end
from office365.ledger import Ledger, LedgerWrite, content_key
from office365.listing import ContentRef
from office365.record_filter import RecordFilter

LEDGER_GRACE = 3600.0  # keep ledger entries an hour past the blob's expiry: listings near the limit still see it
SAVE_INTERVAL = 1.0
EXPIRY_INTERVAL = 600.0  # how often a write also deletes the ledger's expired rows


@dataclass(slots=True)
class Delivered:
    """A blob whose records were handed to the forwarder; committed once the runtime confirmed them."""

    ref: ContentRef
    keys: list[int] = field(default_factory=list)  # the record filter's keys of the records forwarded
    records: int = 0
    skipped: str = ""  # why the blob was skipped (AF20050/51/52), empty when fetched


@dataclass(slots=True)
class _Write:
    """What one write puts on disk, taken on the loop: the ledger's new rows, then the checkpoint (None: unchanged
    or not due)."""

    ledger: LedgerWrite
    checkpoint: dict | None


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
        self._ledger: Ledger | None = None
        self._recent: set[int] = set()  # content keys committed, not known to be written yet
        self._unwritten: list[tuple[int, int, int]] = []  # ledger rows committed, not yet written
        self._unwritten_keys: list[int] = []  # and their records' filter keys
        self._writing = asyncio.Lock()  # one write at a time: the store has one writer
        self._persisting: asyncio.Task | None = None
        self._last_save = 0.0
        self._last_expiry = time.monotonic()
        self._progress: dict[str, _Progress] = {}
        self._saved_initial: list[str] | None = None
        try:
            self._load((now or datetime.now(UTC)), initial_lookback, filter_capacity)
        except BaseException:
            if self._ledger is not None:
                self._ledger.close()
            self._instance.release()
            raise

    # -- loading --------------------------------------------------------------------------------------------

    def _load(self, now: datetime, initial_lookback: timedelta, filter_capacity: int) -> None:
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
        self._ledger = Ledger(self.directory, filter_capacity, now.timestamp())
        self.filter = RecordFilter(filter_capacity, self._ledger.filter_keys, self._ledger.legacy_keys)
        self._ledger.filter_keys = None  # the filter holds them now

    def _delivered(self, content_id: str) -> bool:
        key = content_key(content_id)
        return key in self._recent or self._ledger.is_delivered(key)

    # -- listing side --------------------------------------------------------------------------------------

    def resume_point(self, content_type: str) -> datetime:
        return datetime.fromtimestamp(self._progress[content_type].resume(), UTC)

    def listed_until(self, content_type: str) -> datetime:
        return datetime.fromtimestamp(self._progress[content_type].listed_until, UTC)

    def is_known(self, content_type: str, content_id: str) -> bool:
        """Delivered, or listed and on its way."""
        return content_id in self._progress[content_type].pending or self._delivered(content_id)

    def track(self, ref: ContentRef) -> bool:
        """Take a listed blob in; False when it was delivered or is already on its way."""
        progress = self._progress[ref.content_type]
        if ref.content_id in progress.pending or self._delivered(ref.content_id):
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
            key = content_key(item.ref.content_id)
            self._recent.add(key)
            self._progress[item.ref.content_type].pending.pop(item.ref.content_id, None)
            self._unwritten.append((key, int(expires), item.records))
            self._unwritten_keys.extend(item.keys)

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
                    self._unwritten_again(write)

            # Held to the thread's end even when cancelled (the monitor, at every stop): a second write alongside
            # would share the store's writer.
            await thread_to_its_end(self._write, write, settle=settle)

    def save(self, force: bool = False) -> None:
        """``persist`` where no loop runs (at close, after the run's loop ended)."""
        write = self._next_write(force)
        if write is not None:
            try:
                self._write(write)
            except BaseException:
                self._unwritten_again(write)
                raise
            self._written(write)

    def _next_write(self, force: bool) -> _Write | None:
        """On the loop: the snapshot of what to write."""
        blobs, self._unwritten = self._unwritten, []
        keys, self._unwritten_keys = self._unwritten_keys, []
        checkpoint = None
        now = time.monotonic()
        if force or now - self._last_save >= SAVE_INTERVAL:
            resume = {ct: progress.resume() for ct, progress in self._progress.items()}
            initial = [ct for ct, progress in self._progress.items() if progress.initial]
            if initial != self._saved_initial or any(resume[ct] != self._progress[ct].saved_resume for ct in resume):
                checkpoint = {"version": self.VERSION, "resume": resume, "initial": initial}
        expire_before = None
        if now - self._last_expiry >= EXPIRY_INTERVAL:
            self._last_expiry = now
            expire_before = time.time()
        if not blobs and checkpoint is None and expire_before is None:
            return None
        return _Write(LedgerWrite(blobs, keys, expire_before), checkpoint)

    def _write(self, write: _Write) -> None:
        """In a thread (or where no loop runs): touches the files only."""
        ledger = write.ledger
        if ledger.blobs or ledger.expire_before is not None:
            self._ledger.write(ledger)
        if write.checkpoint is not None:
            self._checkpoint.save(write.checkpoint)

    def _written(self, write: _Write) -> None:
        for key, _, _ in write.ledger.blobs:
            self._recent.discard(key)  # in the ledger now (committed again meanwhile: written next time too)
        if write.checkpoint is not None:
            for content_type, value in write.checkpoint["resume"].items():
                self._progress[content_type].saved_resume = value
            self._saved_initial = write.checkpoint["initial"]
            self._last_save = time.monotonic()

    def _unwritten_again(self, write: _Write) -> None:
        """Written next time (a row written twice replaces itself; a filter key twice costs a slot)."""
        self._unwritten[:0] = write.ledger.blobs
        self._unwritten_keys[:0] = write.ledger.keys

    def close(self) -> None:
        try:
            self.save(force=True)
        finally:
            try:
                self._ledger.close()
            finally:
                self._instance.release()

    @property
    def ledger_size(self) -> int:
        """Delivered blobs remembered (written or not)."""
        return len(self._ledger) + sum(1 for key in self._recent if not self._ledger.is_delivered(key))
