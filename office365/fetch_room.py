"""Room for fetched bodies not yet cut into records: a number of blobs and a number of bytes.

A fetch starts only while fewer than ``blobs`` bodies are held and the bytes held, with this fetch counted at the
largest body seen lately of its kind (a content type), stay within ``max_bytes``. A body is held from the start of
its fetch until the processor has cut its records out (``release``): then its records are the delivery's to bound.
Counting fetches on their way at the largest recent body of their kind, not at an average of all, keeps a wave of
fetches within the budget when they all come back big: blobs of 1,000 records weigh 0.4 MB in one content type and
3 MB in another, and the listers hand over runs of one type. A kind not seen yet is counted at the largest body of
any kind, and at least a quarter of the room. A body larger than the whole budget still goes, alone.
"""

from __future__ import annotations

import asyncio
from collections import deque

# Bodies of a kind whose sizes make its estimate.
RECENT_SIZES = 8


class FetchRoom:
    def __init__(self, blobs: int, max_bytes: int):
        self._blobs = asyncio.Semaphore(blobs)
        self.max_bytes = max_bytes
        self.held = 0  # bytes of bodies held, and of those being fetched (at their estimate)
        self._recent: dict[str, deque[int]] = {}  # kind -> sizes of its latest bodies
        # A kind not seen yet: the largest body of any kind, and at least a quarter of the room (four such fetches
        # at once), however small the bodies of the kinds seen first.
        self._largest = max(1, max_bytes // 4)
        self._freed = asyncio.Event()

    def estimate(self, kind: str = "") -> int:
        """What a fetch of this kind is counted at until its body came: the largest recent body of its kind."""
        recent = self._recent.get(kind)
        return (max(recent) if recent else 0) or self._largest  # bodies skipped (none) tell nothing

    async def acquire(self, kind: str = "") -> int:
        """Wait for room for one more fetch; returns the bytes reserved for it (give them to ``fetched`` or
        ``release``)."""
        await self._blobs.acquire()
        try:
            while self.held and self.held + self.estimate(kind) > self.max_bytes:
                self._freed.clear()
                await self._freed.wait()
        except BaseException:
            self._blobs.release()
            raise
        reserved = self.estimate(kind)
        self.held += reserved
        return reserved

    def fetched(self, reserved: int, size: int, kind: str = "") -> None:
        """The body came: its real size is held until ``release``."""
        self.held += size - reserved
        recent = self._recent.get(kind)
        if recent is None:
            recent = self._recent[kind] = deque(maxlen=RECENT_SIZES)
        recent.append(size)
        self._largest = max(self._largest, size)
        if size < reserved:
            self._freed.set()

    def release(self, size: int) -> None:
        """A body cut into records (or a fetch given up, with what it reserved)."""
        self.held -= size
        self._blobs.release()
        self._freed.set()
