"""Optional persistence: one append-only log per partition, replayed at start.

Layout: DIR/<hub>/meta.json ({"created_at": ms, "partitions": n}) and DIR/<hub>/<partition>.log.
A log is a magic line followed by records `>IqqqH` (wire length, sequence number, offset,
enqueued ms, header length) + the delivery bytes. Records are flushed to the OS after every
publish (no fsync: the point is surviving an emulator restart, not a power cut). A torn record
at the tail (process killed mid-write) is cut off on replay.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

_LOG = logging.getLogger(__name__)
_MAGIC = b"EHEMU01\n"
_RECORD = struct.Struct(">IqqqH")


class Record(NamedTuple):
    seq: int
    offset: int
    enqueued_ms: int
    header_len: int
    wire: bytes


class PartitionLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None

    def replay(self) -> Iterator[Record]:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data.startswith(_MAGIC):
            raise ValueError(f"{self.path} is not an emulator partition log")
        pos = len(_MAGIC)
        good = pos
        while pos + _RECORD.size <= len(data):
            length, seq, offset, enqueued, header_len = _RECORD.unpack_from(data, pos)
            start = pos + _RECORD.size
            if start + length > len(data):
                break
            yield Record(seq, offset, enqueued, header_len, data[start : start + length])
            pos = good = start + length
        if good != len(data):
            _LOG.warning("%s: dropping a torn record at the end (%d bytes)", self.path, len(data) - good)
            with open(self.path, "r+b") as handle:
                handle.truncate(good)

    def append(self, records: list[Record]) -> None:
        if self._file is None:
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            self._file = open(self.path, "ab")
            if fresh:
                self._file.write(_MAGIC)
        write = self._file.write
        for record in records:
            write(_RECORD.pack(len(record.wire), record.seq, record.offset, record.enqueued_ms, record.header_len))
            write(record.wire)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class HubStore:
    """Files of one hub."""

    def __init__(self, root: Path, hub: str) -> None:
        self.dir = root / hub
        self.dir.mkdir(parents=True, exist_ok=True)
        self._meta = self.dir / "meta.json"

    def load_meta(self) -> dict | None:
        try:
            return json.loads(self._meta.read_text())
        except (OSError, ValueError):
            return None

    def save_meta(self, meta: dict) -> None:
        tmp = self._meta.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self._meta)

    def partition_log(self, partition_id: str) -> PartitionLog:
        return PartitionLog(self.dir / f"{partition_id}.log")

    def extra_partition_files(self, partition_count: int) -> list[Path]:
        return [p for p in self.dir.glob("*.log") if not (p.stem.isdigit() and int(p.stem) < partition_count)]
