"""Partition-key hashing: Bob Jenkins' lookup3 `hashlittle2`, as Event Hubs uses it.

The 16-bit hash is (c ^ b) folded to a signed short; the partition index follows the Python
client's buffered-producer resolver (Python modulo), so a key lands on the same partition
whether the client resolves it (buffered mode) or the emulator does.
"""

from __future__ import annotations

import struct

_M = 0xFFFFFFFF
_WORDS = struct.Struct("<III")


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _M) ^ _rot(c, 4)
    c = (c + b) & _M
    b = ((b - a) & _M) ^ _rot(a, 6)
    a = (a + c) & _M
    c = ((c - b) & _M) ^ _rot(b, 8)
    b = (b + a) & _M
    a = ((a - c) & _M) ^ _rot(c, 16)
    c = (c + b) & _M
    b = ((b - a) & _M) ^ _rot(a, 19)
    a = (a + c) & _M
    c = ((c - b) & _M) ^ _rot(b, 4)
    b = (b + a) & _M
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int, int]:
    c = ((c ^ b) - _rot(b, 14)) & _M
    a = ((a ^ c) - _rot(c, 11)) & _M
    b = ((b ^ a) - _rot(a, 25)) & _M
    c = ((c ^ b) - _rot(b, 16)) & _M
    a = ((a ^ c) - _rot(c, 4)) & _M
    b = ((b ^ a) - _rot(a, 14)) & _M
    c = ((c ^ b) - _rot(b, 24)) & _M
    return a, b, c


def hashlittle2(data: bytes, pc: int = 0, pb: int = 0) -> tuple[int, int]:
    """Return (c, b) as the C function leaves them in *pc, *pb."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + pc) & _M
    c = (c + pb) & _M
    pos = 0
    while length - pos > 12:
        x, y, z = _WORDS.unpack_from(data, pos)
        a, b, c = _mix((a + x) & _M, (b + y) & _M, (c + z) & _M)
        pos += 12
    tail = data[pos:]
    if not tail:
        return c, b
    x, y, z = _WORDS.unpack(tail + bytes(12 - len(tail)))  # missing bytes add nothing
    a, b, c = _final((a + x) & _M, (b + y) & _M, (c + z) & _M)
    return c, b


def partition_hash(key: str) -> int:
    if not key:
        return 0
    c, b = hashlittle2(key.encode("utf-8"))
    value = (c ^ b) & 0xFFFF
    return value - 0x10000 if value >= 0x8000 else value


def partition_for_key(key: str, partition_count: int) -> int:
    return abs(partition_hash(key) % partition_count)
