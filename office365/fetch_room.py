"""Room for fetched bodies waiting for the processor: a number of blobs and a number of bytes.

A fetch starts only while fewer than ``blobs`` fetched blobs wait and their bodies (those being fetched counted at
the average size seen) hold fewer than ``max_bytes``: memory stays bounded whether blobs hold 50 records or 1,000
(about 1 MB each: 64 of those waiting took the process past 200 MB). A body larger than the whole budget still
goes, alone.
"""

from __future__ import annotations

import asyncio

# The size a fetch is counted at before any body was seen: large, so that a start on big blobs does not send every
# fetcher out at once (32 bodies of 1.5 MB arrived together).
FIRST_GUESS = 1024 * 1024


class FetchRoom:
    def __init__(self, blobs: int, max_bytes: int):
        self._blobs = asyncio.Semaphore(blobs)
        self.max_bytes = max_bytes
        self.held = 0  # bytes of bodies waiting, and of those being fetched (at the average)
        self._average = FIRST_GUESS
        self._freed = asyncio.Event()

    async def acquire(self) -> int:
        """Wait for room for one more fetch; returns the bytes reserved for it (give them to ``fetched`` or
        ``release``)."""
        await self._blobs.acquire()
        try:
            while self.held >= self.max_bytes:
                self._freed.clear()
                await self._freed.wait()
        except BaseException:
            self._blobs.release()
            raise
        reserved = self._average
        self.held += reserved
        return reserved

    def fetched(self, reserved: int, size: int) -> None:
        """The body came: its real size is held until ``release``."""
        self.held += size - reserved
        self._average = (self._average * 7 + size) // 8

    def release(self, size: int) -> None:
        """A body processed (or a fetch given up, with what it reserved)."""
        self.held -= size
        self._blobs.release()
        self._freed.set()
