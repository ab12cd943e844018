"""Room for fetched bodies not yet cut into records: a number of blobs and a number of bytes.

A fetch starts only while fewer than ``blobs`` bodies are held and the bytes held, with this fetch counted at the
largest body seen lately, stay within ``max_bytes``. A body is held from the start of its fetch until the processor
has cut its records out (``release``): then its records are the delivery's to bound. Counting fetches on their way
at the largest recent body, not at an average, keeps a wave of fetches started together within the budget when
they all come back big (bodies of 1,000 records, about 2 MB, after a start guessed at less). A body larger than the
whole budget still goes, alone.
"""

from __future__ import annotations

import asyncio
from collections import deque

# Bodies whose sizes make the estimate: enough to span every content type's blobs (their sizes differ by 5x).
RECENT_SIZES = 16


class FetchRoom:
    def __init__(self, blobs: int, max_bytes: int):
        self._blobs = asyncio.Semaphore(blobs)
        self.max_bytes = max_bytes
        self.held = 0  # bytes of bodies held, and of those being fetched (at the estimate)
        # Before any body was seen: a quarter of the room, so that a start on big blobs sends four fetchers out.
        self._recent: deque[int] = deque([max(1, max_bytes // 4)], maxlen=RECENT_SIZES)
        self._freed = asyncio.Event()

    @property
    def estimate(self) -> int:
        """What a fetch is counted at until its body came: the largest recent body."""
        return max(self._recent)

    async def acquire(self) -> int:
        """Wait for room for one more fetch; returns the bytes reserved for it (give them to ``fetched`` or
        ``release``)."""
        await self._blobs.acquire()
        try:
            while self.held and self.held + self.estimate > self.max_bytes:
                self._freed.clear()
                await self._freed.wait()
        except BaseException:
            self._blobs.release()
            raise
        reserved = self.estimate
        self.held += reserved
        return reserved

    def fetched(self, reserved: int, size: int) -> None:
        """The body came: its real size is held until ``release``."""
        self.held += size - reserved
        self._recent.append(size)
        if size < reserved:
            self._freed.set()

    def release(self, size: int) -> None:
        """A body cut into records (or a fetch given up, with what it reserved)."""
        self.held -= size
        self._blobs.release()
        self._freed.set()
