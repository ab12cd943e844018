"""One process per data directory: an advisory lock that a second instance cannot take.

Two collectors resuming from the same state would both send everything. ``flock`` is released by the kernel when
the holder dies (kill -9 included), so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from connectors.errors import ConfigurationError
from connectors.state import open_private, private_directory


class InstanceLock:
    """Held from construction until ``release`` (or the process ends)."""

    def __init__(self, path: Path, field: str, advice: str):
        """Take ``path``'s lock, or raise ``ConfigurationError(field, ...)`` naming the directory and ``advice``."""
        self.path = Path(path)
        private_directory(self.path.parent)  # state: private whatever the entry point's umask
        handle: IO[bytes] | None = open_private(self.path, os.O_WRONLY)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigurationError(
                field, f"another instance already runs on {self.path.parent} (it holds {self.path.name}): {advice}"
            ) from None
        # Who holds it, for a person looking at the directory; the lock itself is the flock, not the text.
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None
