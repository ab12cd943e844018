"""What was delivered, on disk: the ledger of delivered blobs and the record filter's keys, in one SQLite file.

- **Ledger**: one row per delivered blob (a 63-bit key of its content id, its expiry, its record count), looked
  up where it lies (``is_delivered``: a primary-key probe), never loaded: a start costs the same whatever the
  history. Expired rows are deleted at start and by ``write`` when asked.
- **Filter keys**: the keys of the records the runtime confirmed, in chunks (one per write, 8 bytes a key), the
  oldest chunks deleted once the newer ones hold ``capacity`` keys. A start reads at most ``capacity`` keys.

SQLite rather than a journal replayed at start (1.x): the state's size and start time follow the blobs and the
filter's bound, not the records. WAL with ``synchronous=FULL``: a write is on disk when it returns, and a SIGKILL at
any instruction leaves the last committed write. One connection reads (on the loop: lookups never wait for a write
in WAL mode), another writes (one write at a time, in a thread, serialized by the caller).

A 1.x ledger (``office365-ledger.jsonl``) is migrated at the first start, in the transaction that creates the
schema, then deleted: its live blobs, and its most recent record hashes as the filter's legacy keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import sys
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from connectors.errors import CorruptStateError
from connectors.state import Journal, open_private, private_directory, unreadable_state

FILE_NAME = "office365-state.sqlite3"
LEGACY_JOURNAL = "office365-ledger.jsonl"
SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE ledger (blob INTEGER PRIMARY KEY, expires INTEGER NOT NULL, records INTEGER NOT NULL)",
    "CREATE TABLE filter_keys (chunk INTEGER PRIMARY KEY, legacy INTEGER NOT NULL, keys BLOB NOT NULL)",
)


def content_key(content_id: str) -> int:
    # A week of blobs: a 63-bit key rather than a ~90-character string.
    return int.from_bytes(hashlib.sha1(content_id.encode(), usedforsecurity=False).digest()[:8], "big") >> 1


def _pack(keys: Iterable[int]) -> bytes:
    packed = array("q", keys)
    if sys.byteorder == "big":
        packed.byteswap()  # stored little-endian: the file moves between machines
    return packed.tobytes()


def _unpack(data: bytes) -> array:
    keys = array("q")
    keys.frombytes(data)
    if sys.byteorder == "big":
        keys.byteswap()
    return keys


@dataclass(slots=True)
class LedgerWrite:
    """One transaction: delivered blobs as (content key, expiry, records), their records' filter keys, and
    whether expired blobs go (those expiring before ``expire_before``)."""

    blobs: list[tuple[int, int, int]]
    keys: list[int]
    expire_before: float | None = None


class Ledger:
    def __init__(self, directory: Path, filter_capacity: int, now: float):
        self.directory = private_directory(Path(directory))
        self.path = self.directory / FILE_NAME
        self.capacity = filter_capacity
        self._chunks: deque[tuple[int, int]] = deque()  # (chunk, keys in it), oldest first; only the writer moves it
        self._stored_keys = 0
        self.filter_keys = array("q")  # the most recent ``capacity`` keys at start, oldest first
        self.legacy_keys = 0  # how many of the first ones are 1.x raw keys
        open_private(self.path, os.O_WRONLY).close()  # created 0600 (SQLite gives its WAL the same mode)
        self._writer = self._connect()
        self._reader: sqlite3.Connection | None = None
        try:
            self._open(now)
            self._reader = self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            # check_same_thread off: each connection is used by one thread at a time (the writer by the caller's
            # one write at a time, in whichever executor thread), which SQLite's serialized mode allows.
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            return connection
        except sqlite3.DatabaseError as error:
            raise unreadable_state(self.path, f"not a SQLite database: {error}") from None

    # -- start ----------------------------------------------------------------------------------------------

    def _open(self, now: float) -> None:
        connection = self._writer
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CorruptStateError(
                    f"State file {self.path} was written by a newer version of this module (schema {version}); "
                    "run that version, or delete the file to start again from the configured start position"
                )
            legacy = self.directory / LEGACY_JOURNAL
            with self._transaction():
                if version == 0:
                    for statement in _SCHEMA:
                        connection.execute(statement)
                    self._migrate(Journal(legacy), now)
                    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.execute("DELETE FROM ledger WHERE expires < ?", (now,))
                if self.capacity <= 0:
                    connection.execute("DELETE FROM filter_keys")
            with contextlib.suppress(FileNotFoundError):
                legacy.unlink()  # migrated (now, or by a start that died before this line)
            self._load_filter()
        except sqlite3.DatabaseError as error:
            raise unreadable_state(self.path, str(error)) from None

    def _migrate(self, journal: Journal, now: float) -> None:
        """The 1.x journal's live blobs, and the most recent of its record hashes (the filter's legacy keys)."""
        blobs: list[tuple[int, int, int]] = []
        hashes: list[int] = []
        for entry in journal.replay():
            try:
                content_id, expires, entry_hashes = entry["c"], float(entry["x"]), entry.get("h", [])
            except (KeyError, TypeError, ValueError, AttributeError):
                raise CorruptStateError(
                    f"Ledger {journal.path} holds an entry without content id or expiry"
                ) from None
            if expires < now:
                continue
            blobs.append((content_key(str(content_id)), int(expires), len(entry_hashes)))
            hashes.extend(entry_hashes)
        journal.close()
        self._writer.executemany("INSERT OR REPLACE INTO ledger VALUES (?, ?, ?)", blobs)
        if hashes and self.capacity > 0:
            try:
                packed = _pack(hashes[-self.capacity :])
            except (TypeError, OverflowError):
                raise CorruptStateError(f"Ledger {journal.path} holds a record hash that is not a 63-bit integer") \
                    from None
            self._writer.execute("INSERT INTO filter_keys (legacy, keys) VALUES (1, ?)", (packed,))

    def _load_filter(self) -> None:
        rows = self._writer.execute("SELECT chunk, legacy, keys FROM filter_keys ORDER BY chunk").fetchall()
        for chunk, legacy, data in rows:
            keys = _unpack(data)
            self._chunks.append((chunk, len(keys)))
            self._stored_keys += len(keys)
            if legacy:
                self.legacy_keys += len(keys)
            self.filter_keys.extend(keys)
        excess = max(0, len(self.filter_keys) - self.capacity)
        if excess:
            del self.filter_keys[:excess]
            self.legacy_keys = max(0, self.legacy_keys - excess)

    # -- on the loop -----------------------------------------------------------------------------------------

    def is_delivered(self, key: int) -> bool:
        return self._reader.execute("SELECT 1 FROM ledger WHERE blob = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._reader.execute("SELECT count(*) FROM ledger").fetchone()[0]

    # -- in the writer's thread --------------------------------------------------------------------------------

    def write(self, write: LedgerWrite) -> None:
        connection = self._writer
        chunks = self._chunks
        with self._transaction():
            if write.blobs:
                connection.executemany("INSERT OR REPLACE INTO ledger VALUES (?, ?, ?)", write.blobs)
            added = None
            if write.keys and self.capacity > 0:
                chunk = connection.execute(
                    "INSERT INTO filter_keys (legacy, keys) VALUES (0, ?)", (_pack(write.keys),)
                ).lastrowid
                added = (chunk, len(write.keys))
            # The oldest chunks go while the newer ones still hold ``capacity`` keys.
            stored = self._stored_keys + (added[1] if added else 0)
            dropped = 0
            while dropped < len(chunks) and stored - chunks[dropped][1] >= self.capacity:
                stored -= chunks[dropped][1]
                dropped += 1
            if dropped:
                connection.execute("DELETE FROM filter_keys WHERE chunk <= ?", (chunks[dropped - 1][0],))
            if write.expire_before is not None:
                connection.execute("DELETE FROM ledger WHERE expires < ?", (write.expire_before,))
        for _ in range(dropped):
            chunks.popleft()
        if added:
            chunks.append(added)
        self._stored_keys = stored

    @contextlib.contextmanager
    def _transaction(self):
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
            raise
        self._writer.execute("COMMIT")

    def close(self) -> None:
        for connection in (self._reader, self._writer):
            if connection is not None:
                connection.close()
