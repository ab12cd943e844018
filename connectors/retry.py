"""Backoff with jitter, and the ``Retry-After`` header, shared by every client of the module."""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class Backoff:
    """Exponential backoff with "equal jitter": half the step is fixed, half random.

    The fixed half keeps a throttled client from hammering; the random half spreads the
    retries of many workers (or many instances) apart. A server's ``Retry-After`` wins
    when it asks for longer than our own step.
    """

    def __init__(self, base: float = 0.5, cap: float = 60.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after: float | None = None) -> float:
        step = min(self.cap, self.base * (2**self.attempts))
        self.attempts += 1
        delay = step / 2 + self._rng.uniform(0, step / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap * 5))
        return delay

    def reset(self) -> None:
        self.attempts = 0
