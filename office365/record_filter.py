"""The record filter: a record published again in a later blob is forwarded once.

A record is known by what it is, not by how it is spelt: its key is a hash of its canonical form (decoded, then
encoded again with sorted keys and no whitespace), so a copy with its keys in another order or other whitespace
matches, while a record whose ``Id`` repeats with other content does not. msgspec decodes integers of any size
exactly (orjson would turn those beyond 64 bits into floats: two such records could look alike); what it refuses
(a lone surrogate escape, a number beyond a double) is canonicalized by the standard library instead.

Keys of records admitted by a 1.x version were hashes of their bytes as written (``raw_key``): until the last of
them is evicted, a record is also checked against its raw key, so nothing forwarded before an upgrade is
forwarded again after it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import deque
from collections.abc import Iterable

import msgspec

_FIRST_8_BYTES = struct.Struct(">Q").unpack_from
_decode = msgspec.json.Decoder().decode
_encode_sorted_into = msgspec.json.Encoder(order="sorted").encode_into  # replaces the buffer's content
_DecodeError = msgspec.DecodeError


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _canonical_exactly(record: bytes) -> bytes:
    """What msgspec refuses: the standard library keeps lone surrogates and numbers beyond a double."""
    try:
        value = json.loads(record.decode("utf-8", "surrogatepass"), parse_constant=_reject_constant)
    except ValueError:  # not JSON at all (never cut out as a record): its bytes are all there is to it
        return record
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def record_key(record: bytes) -> int:
    """63 bits of SHA-1 (hardware-accelerated) of the record's canonical form."""
    return record_keys([record])[0]


def record_keys(records: list[bytes]) -> list[int]:
    """``record_key`` of each record; the processor's hot path: C calls only (msgspec decode, sorted encode into one
    reused buffer, SHA-1: about 5 us a 1.3 KB record), the standard library for a record msgspec refuses."""
    sha1, first, decode, encode_into = hashlib.sha1, _FIRST_8_BYTES, _decode, _encode_sorted_into
    canonical = bytearray()
    keys: list[int] = []
    append = keys.append
    for record in records:
        try:
            encode_into(decode(record), canonical)
            digest = sha1(canonical, usedforsecurity=False).digest()
        except _DecodeError:
            digest = sha1(_canonical_exactly(record), usedforsecurity=False).digest()
        append(first(digest)[0] >> 1)
    return keys


def raw_key(record: bytes) -> int:
    """The 1.x key: a hash of the record's bytes as written."""
    return _FIRST_8_BYTES(hashlib.sha1(record, usedforsecurity=False).digest())[0] >> 1


class RecordFilter:
    """Keys of the most recent ``capacity`` records admitted.

    A forgotten key's entry stays in the eviction order, counted in ``_stale``: when it comes out it is dropped
    from that count, and never evicts the key admitted again since (its live entry is a later one)."""

    def __init__(self, capacity: int, keys: Iterable[int] = (), legacy: int = 0):
        """``keys`` oldest first; the first ``legacy`` of them are 1.x raw keys."""
        self.capacity = capacity
        self._seen: set[int] = set()
        self._order: deque[int] = deque()
        self._stale: dict[int, int] = {}  # key -> entries of it in the order left by ``forget``
        self._evicted = 0  # entries that left the order so far
        self._legacy_until = 0  # the entries before this one (in admission order) hold raw keys
        if capacity > 0:
            keys = list(keys)
            cut = max(0, len(keys) - capacity)
            self._legacy_until = max(0, legacy - cut)
            self._remember(keys[cut:])

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: int) -> bool:
        return key in self._seen

    @property
    def checks_raw_keys(self) -> bool:
        """Whether 1.x raw keys are still held."""
        return self._evicted < self._legacy_until

    def admit(self, records: list[bytes]) -> tuple[list[bytes], list[int]]:
        """The records not seen before and their keys, remembered from now on; the hot path."""
        if self.capacity <= 0:
            return records, []
        keys = record_keys(records)
        seen = self._seen
        raw = list(map(raw_key, records)) if self.checks_raw_keys else None
        if raw is None and seen.isdisjoint(keys) and len(set(keys)) == len(keys):
            self._remember(keys)  # the common case, in C: no record seen before, no repeat within the list
            return records, keys
        fresh: list[bytes] = []
        fresh_keys: list[int] = []
        for index, (record, key) in enumerate(zip(records, keys)):
            if key in seen or (raw is not None and raw[index] in seen):
                continue
            seen.add(key)  # a repeat within the batch is a duplicate too
            fresh.append(record)
            fresh_keys.append(key)
        self._remember(fresh_keys)
        return fresh, fresh_keys

    def _remember(self, keys: list[int]) -> None:
        seen, order, stale = self._seen, self._order, self._stale
        seen.update(keys)
        order.extend(keys)
        excess = len(order) - self.capacity
        for _ in range(max(0, excess)):
            key = order.popleft()
            left = stale.get(key)
            if left is None:
                seen.discard(key)
            elif left > 1:
                stale[key] = left - 1
            else:
                del stale[key]
        self._evicted += max(0, excess)

    def forget(self, keys: Iterable[int]) -> None:
        """Records admitted but not handed over after all (their blob failed): a retry must not see duplicates."""
        seen, stale = self._seen, self._stale
        for key in keys:
            if key in seen:
                seen.remove(key)
                stale[key] = stale.get(key, 0) + 1
