"""Durable local state under the SDK data path: checkpoints (atomic replace) and ledgers (append-only journal).

Both survive SIGKILL at any instruction: a checkpoint file is either the old or the new version (write to a
temporary file, fsync, rename over, fsync the directory); a journal may end in a torn line from an append that
never returned, which is ignored because nobody acted on it. Anything else unreadable raises
``CorruptStateError``: silently starting over would re-read a week of data or skip it.

State holds audit data (record hashes, content ids, whole events set aside): files are 0600 and their
directories 0700 whatever the umask (``main.py`` also sets a 077 umask for every other file of the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from connectors.errors import CorruptStateError


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def private_directory(path: Path) -> Path:
    """Create ``path`` (and missing parents) readable by this user only; an existing one is made so too."""
    path = Path(path)
    path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIRECTORY_MODE:
        path.chmod(DIRECTORY_MODE)
    return path


def open_private(path: Path, flags: int):
    """A binary file handle on ``path``, created 0600 (and made 0600 if it existed with wider rights)."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "ab" if flags & os.O_APPEND else "wb")
    except BaseException:
        os.close(fd)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    if not path.parent.is_dir():
        private_directory(path.parent)
    # A temporary name of its own (mkstemp: created 0600, in the same directory for the rename): two writes that
    # overlapped would otherwise write into one file and rename it from under each other.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


async def thread_to_its_end(function: Callable[..., Any], *args: Any,
                            settle: Callable[[bool], None] | None = None) -> Any:
    """``function(*args)`` in a thread of the loop's executor, awaited to its end even when the caller is
    cancelled: a cancel cannot stop the thread, and a lock released under it would let a second write run
    alongside (the same files). ``settle(completed)`` then records the outcome; after it the cancel received
    meanwhile is raised, else the function's error, else its result is returned."""
    # run_in_executor, not to_thread: a future, not a task, so asyncio.run's final cancel does not reach it.
    thread = asyncio.get_running_loop().run_in_executor(None, function, *args)
    cancelled: asyncio.CancelledError | None = None
    while not thread.done():
        try:
            await asyncio.wait([thread])  # unlike awaiting it, a cancel here leaves the future alone
        except asyncio.CancelledError as error:
            cancelled = error
    if settle is not None:
        settle(not thread.cancelled() and thread.exception() is None)
    if cancelled is not None:
        raise cancelled
    return thread.result()


def unreadable_state(path: Path, detail: str) -> CorruptStateError:
    return CorruptStateError(
        f"State file {path} is unreadable ({detail}). It was not reset, so no data is skipped or re-read "
        f"silently. Restore it from a backup, or delete it to start again from the configured start position."
    )


class StateFile:
    """One JSON document, replaced atomically on every save."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self, default: Any = None) -> Any:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return default
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise unreadable_state(self.path, f"not JSON: {error}") from None

    def save(self, value: Any) -> None:
        atomic_write(self.path, orjson.dumps(value))


class JournalBusy(OSError):
    """Another write of the journal has not returned (a disk not answering an fsync, left running at the end of a
    run): this one is not made alongside it."""


class Journal:
    """Append-only JSON lines: one write and one fsync per append call, replayed at start, compacted by rewrite.

    One write at a time, whatever the thread: a write left running at the end of a run (``RunExecutor`` leaves it
    after its bound) still holds the journal when the trigger closes its state from another thread; that write is
    then not made (``JournalBusy`` after ``busy_wait``) rather than interleaved with it on the same handle."""

    busy_wait = 1.0  # seconds a write waits for another one to return

    def __init__(self, path: Path):
        self.path = Path(path)
        self._handle = None
        self._writing = threading.Lock()

    @contextlib.contextmanager
    def _alone(self):
        if not self._writing.acquire(timeout=self.busy_wait):
            raise JournalBusy(errno.EBUSY, "another write of this file has not returned (a disk not answering?)",
                              str(self.path))
        try:
            yield
        finally:
            self._writing.release()

    def replay(self) -> list[Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = raw.split(b"\n")
        entries = []
        for number, line in enumerate(lines, start=1):
            if not line:
                continue
            try:
                entries.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                if number == len(lines):  # torn tail: the append that wrote it never returned
                    break
                raise unreadable_state(self.path, f"line {number} is not JSON") from None
        if raw and not raw.endswith(b"\n"):
            self.rewrite(entries)  # drop the torn tail before appending after it
        return entries

    def append(self, entries: Iterable[Any]) -> None:
        data = b"".join(orjson.dumps(entry) + b"\n" for entry in entries)
        if not data:
            return
        with self._alone():
            self._append(data)

    def _append(self, data: bytes) -> None:
        if self._handle is None:
            if not self.path.parent.is_dir():
                private_directory(self.path.parent)
            self._handle = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def follow_a_move(self) -> bool:
        """True when the open file is no longer at ``path`` (a person moved it away): it is closed, and the next
        append starts a new file there."""
        if self._handle is None:
            return False
        try:
            moved = os.stat(self.path).st_ino != os.fstat(self._handle.fileno()).st_ino
        except FileNotFoundError:
            moved = True
        if moved:
            self.close()
        return moved

    def rewrite(self, entries: Iterable[Any]) -> None:
        data = b"".join(orjson.dumps(entry) + b"\n" for entry in entries)
        with self._alone():
            self._close()
            atomic_write(self.path, data)

    def close(self) -> None:
        """Closes the file, unless a write left running still uses it (it is closed when the process ends)."""
        try:
            with self._alone():
                self._close()
        except JournalBusy:
            pass

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
