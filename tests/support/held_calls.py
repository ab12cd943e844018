"""A function whose first call is held in its thread until the test releases it: for tests of a write that a
cancel cannot stop (the next one must wait for its thread, never run alongside)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class FirstCallHeld:
    """Wraps ``function``; counts its calls and the most running at once."""

    def __init__(self, function: Callable[..., object]):
        self.function = function
        self.calls = 0
        self.running = 0
        self.most = 0
        self._released = threading.Event()
        self._lock = threading.Lock()

    def release(self) -> None:
        self._released.set()

    def __call__(self, *args):
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
            first = self.calls == 1
        try:
            if first:
                assert self._released.wait(30), "the test never released the first call"
            return self.function(*args)
        finally:
            with self._lock:
                self.running -= 1
