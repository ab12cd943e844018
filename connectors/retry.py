"""Backoff with jitter, the ``Retry-After`` header, and ``retrying``: the one retry loop of the module."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

T = TypeVar("T")


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
    when it asks for longer than our own step. Without ``jitter`` every delay is the whole
    step (a one-off probe, where there is no crowd to spread).
    """

    def __init__(self, base: float = 0.5, cap: float = 60.0, rng: random.Random | None = None, jitter: bool = True):
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._rng = (rng or random.Random()) if jitter else None

    def next_delay(self, retry_after: float | None = None) -> float:
        step = min(self.cap, self.base * (2**self.attempts))
        self.attempts += 1
        delay = (step / 2 + self._rng.uniform(0, step / 2)) if self._rng is not None else step
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap * 5))
        return delay

    def reset(self) -> None:
        self.attempts = 0


def next_step(backoff: Backoff, error: BaseException) -> float:
    """The backoff's next delay, longer when the error carries the server's ``Retry-After`` (``retry_after``)."""
    return backoff.next_delay(getattr(error, "retry_after", None))


@dataclass(frozen=True, slots=True)
class RetryOn:
    """Which failures ``retrying`` retries, how long it waits before the next attempt, and when it gives up."""

    errors: type[Exception] | tuple[type[Exception], ...]
    # After this many failures of this kind (the first attempt's included) the last one is raised; None: never.
    attempts: int | None = None
    # The wait before the next attempt; None: at once, the backoff untouched.
    delay: Callable[[Backoff, BaseException], float] | None = next_step
    # Only errors this accepts (by default every error of ``errors``).
    when: Callable[[BaseException], bool] | None = None

    def matches(self, error: BaseException) -> bool:
        return isinstance(error, self.errors) and (self.when is None or self.when(error))


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *rules: RetryOn,
    backoff: Callable[[], Backoff],
    pause: Callable[[float], Awaitable[object]] = asyncio.sleep,
    on_failure: Callable[[BaseException, int], object] | None = None,
    on_success: Callable[[], object] | None = None,
) -> T:
    """``attempt()`` until it returns, retrying the errors the first matching rule names; any other error, or one
    whose rule ran out of attempts, is raised as it came.

    ``backoff`` is made at the first failure (most calls never need one) and reset on success (it may be one that
    outlives the call). ``pause`` is the wait between attempts: stop-aware ones raise to end the retries
    (``connectors.stopping.pause_or_stop``, delivery's ``Control.pause``). ``on_failure(error, failures)``
    hears each failure about to be retried, with how many of its kind came so far; ``on_success`` each success,
    after failures or not (``OnceLogger.ended`` says only the end of an outage).
    """
    delays: Backoff | None = None
    failures: dict[RetryOn, int] = {}
    while True:
        try:
            result = await attempt()
        except Exception as error:
            rule = next((rule for rule in rules if rule.matches(error)), None)
            if rule is None:
                raise
            failures[rule] = count = failures.get(rule, 0) + 1
            if rule.attempts is not None and count >= rule.attempts:
                raise
            if on_failure is not None:
                on_failure(error, count)
            if rule.delay is None:
                continue
            delays = delays or backoff()
            delay = rule.delay(delays, error)
        else:
            if delays is not None:
                delays.reset()
            if on_success is not None:
                on_success()
            return result
        await pause(delay)  # out of the except block: what it raises (a stop) is not chained to the failure
