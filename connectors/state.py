"""Durable local state under the SDK data path: checkpoints (atomic replace) and ledgers (append-only journal).

Both survive SIGKILL at any instruction: a checkpoint file is either the old or the new version (write to a
temporary file, fsync, rename over, fsync the directory); a journal may end in a torn line from an append that
never returned, which is ignored because nobody acted on it. Anything else unreadable raises
``CorruptStateError``: silently starting over would re-read a week of data or skip it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
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


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _corrupt(path: Path, detail: str) -> CorruptStateError:
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
            raise _corrupt(self.path, f"not JSON: {error}") from None

    def save(self, value: Any) -> None:
        atomic_write(self.path, orjson.dumps(value))


class Journal:
    """Append-only JSON lines: one write and one fsync per append call, replayed at start, compacted by rewrite."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._handle = None

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
                raise _corrupt(self.path, f"line {number} is not JSON") from None
        if raw and not raw.endswith(b"\n"):
            self.rewrite(entries)  # drop the torn tail before appending after it
        return entries

    def append(self, entries: Iterable[Any]) -> None:
        data = b"".join(orjson.dumps(entry) + b"\n" for entry in entries)
        if not data:
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "ab")
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def rewrite(self, entries: Iterable[Any]) -> None:
        self.close()
        atomic_write(self.path, b"".join(orjson.dumps(entry) + b"\n" for entry in entries))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
