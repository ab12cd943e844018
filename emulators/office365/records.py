"""Audit records of one content type, addressed by integer key.

Keys below `fixture_count` are the recorded fixture lines, served byte-for-byte. Higher keys are synthetic:
a fixture record of the same content type with a fresh Id and CreationTime. Everything about a synthetic
record derives from (seed, content type, key), so bodies are rendered on demand, identically every time,
without keeping millions of records in memory.
"""

from __future__ import annotations

import orjson

from .timefmt import format_record_time

_MASK64 = (1 << 64) - 1
_MASK62 = (1 << 62) - 1
_MASK48 = (1 << 48) - 1
_ID_SENTINEL = b'"@@EMU_ID@@"'
_TIME_SENTINEL = b'"@@EMU_TIME@@"'
_TIME_CACHE: dict[int, bytes] = {}  # formatted CreationTime by epoch second: blobs share a few thousand values


def mix64(value: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread, deterministic hash of an integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def unit_fraction(value: int) -> float:
    """Deterministic number in [0, 1) for per-record decisions (duplicates)."""
    return mix64(value) / 2.0**64


class RecordSource:
    def __init__(self, content_type: str, content_type_index: int, lines: list[bytes], seed: int, oversize_kb: int):
        self.content_type = content_type
        self.fixture_count = len(lines)
        self._lines = lines
        parsed = [orjson.loads(line) for line in lines]
        self._fixture_ids = [str(record.get("Id", "")) for record in parsed]
        # The minimal ip-format samples (RecordType -1) make poor templates for volume data.
        templates = [record for record in parsed if record.get("RecordType") != -1] or parsed
        if not templates:
            templates = [{"RecordType": 0, "Operation": "Unknown", "Workload": content_type}]
        self._templates = [self._split_template(record) for record in templates]
        self._salt = mix64((seed << 8) ^ content_type_index)
        self._average_size = sum(len(t) for t, _ in self._templates) // len(self._templates) + 40
        self._padding = b'"' + (b"0123456789abcdef" * (oversize_kb * 64))[: oversize_kb * 1024] + b'"'
        self.oversize_keys: set[int] = set()
        self.next_key = self.fixture_count

    @staticmethod
    def _split_template(record: dict) -> tuple[bytes, bool]:
        # Serialise once with sentinels, then render with one bytes %-format: no per-record JSON encoding.
        shaped = dict(record)
        shaped["Id"] = "@@EMU_ID@@"
        shaped["CreationTime"] = "@@EMU_TIME@@"
        raw = orjson.dumps(shaped).replace(b"%", b"%%")
        id_first = raw.index(_ID_SENTINEL) < raw.index(_TIME_SENTINEL)
        return raw.replace(_ID_SENTINEL, b'"%s"').replace(_TIME_SENTINEL, b'"%s"'), id_first

    def allocate(self, count: int) -> range:
        keys = range(self.next_key, self.next_key + count)
        self.next_key += count
        return keys

    def record_id(self, key: int) -> str:
        if key < self.fixture_count:
            return self._fixture_ids[key]
        return self._synthetic_id(key, mix64(key ^ self._salt))

    @staticmethod
    def _synthetic_id(key: int, spread: int) -> str:
        # Low half: bijection of the key on 62 bits (unique), with the RFC 4122 variant; high half: version 4.
        low = (1 << 63) | ((key * 0x9E3779B97F4A7C15) & _MASK62)
        high = (spread & ~0xF000) | 0x4000
        return "%08x-%04x-%04x-%04x-%012x" % (
            high >> 32,
            (high >> 16) & 0xFFFF,
            high & 0xFFFF,
            low >> 48,
            low & _MASK48,
        )

    def render(self, key: int, blob_created_ms: int) -> bytes:
        """One record's JSON bytes. Synthetic events happened up to 30 min before their blob was created."""
        if key < self.fixture_count:
            return self._lines[key]
        template, id_first = self._templates[(key - self.fixture_count) % len(self._templates)]
        spread = mix64(key ^ self._salt)  # one hash feeds both the Id and the event time offset
        event_time = blob_created_ms // 1000 - 1 - (spread >> 20) % 1800
        time_bytes = _TIME_CACHE.get(event_time)
        if time_bytes is None:
            if len(_TIME_CACHE) > 200_000:
                _TIME_CACHE.clear()
            time_bytes = _TIME_CACHE[event_time] = format_record_time(event_time).encode("ascii")
        id_bytes = self._synthetic_id(key, spread).encode("ascii")
        body = template % ((id_bytes, time_bytes) if id_first else (time_bytes, id_bytes))
        if key in self.oversize_keys:
            body = body[:-1] + b',"EmulatorPadding":' + self._padding + b"}"
        return body

    def estimated_size(self, key_count: int) -> int:
        return key_count * self._average_size
