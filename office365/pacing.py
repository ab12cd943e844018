"""How hard to push the API: an adaptive number of requests in flight (AIMD) and a pace under the tenant's quota.

Two separate controls, because the API fails in two ways. Latency-bound work needs many requests in flight,
and an overloaded API (5xx, timeouts) needs fewer: ``ConcurrencyLimit`` grows by one per
success while below its threshold (slow start), then by 1/limit (one per round trip), and halves on trouble.
The per-minute quota (2,000 requests/minute baseline, per tenant and publisher) is a rate, not a concurrency:
``QuotaPacer`` runs unpaced until the first throttled answer, then estimates the quota from the requests the
API accepted during the last minute and paces a token bucket a little under it. Pacing instead of "hammer and
back off" keeps throttled answers rare while using nearly all of the quota. The estimate is only a bound (a
throttling storm, or a low demand of ours, makes it too small), so while the pace holds requests back and nothing
is throttled, it probes upwards in growing steps: a wrong estimate costs seconds, not the backlog.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]


class ConcurrencyLimit:
    """Additive increase, multiplicative decrease of the number of requests allowed in flight."""

    def __init__(self, maximum: int, initial: int | None = None, minimum: int = 1, clock: Clock = time.monotonic):
        self.maximum = max(1, maximum)
        self.minimum = max(1, min(minimum, self.maximum))
        self.limit = float(min(self.maximum, initial if initial is not None else max(self.minimum, 4)))
        self.threshold = float(self.maximum)  # slow start below it
        self._clock = clock
        self._last_decrease = -math.inf

    @property
    def current(self) -> int:
        return max(self.minimum, int(self.limit))

    def on_success(self) -> None:
        if self.limit < self.threshold:
            self.limit += 1.0
        else:
            self.limit += 1.0 / self.limit
        self.limit = min(self.limit, float(self.maximum))

    def on_trouble(self, started: float | None = None) -> bool:
        """Halve once per episode: answers to requests sent before the last decrease say nothing new."""
        now = self._clock()
        if started is not None and started < self._last_decrease:
            return False
        if started is None and now - self._last_decrease < 1.0:
            return False
        self._last_decrease = now
        self.limit = max(float(self.minimum), self.limit / 2)
        self.threshold = self.limit
        return True


class QuotaPacer:
    """A token bucket paced under the quota the API showed; unpaced until the first throttled answer."""

    WINDOW = 60.0
    MARGIN = 0.95  # pace at this share of the quota seen
    PROBE_EVERY = 3.0  # seconds of throttle-free pacing that held requests back before trying more
    PROBE_STEPS = (1.05, 1.1, 1.25, 1.5, 2.0)  # consecutive probes that met no throttling: bolder each time
    BURST_SECONDS = 1.0
    MAX_HOLD = 15.0  # longest pause without Retry-After: a few probes per minute while a window drains
    MIN_PER_MINUTE = 30.0

    def __init__(self, cap_per_minute: float | None = None, clock: Clock = time.monotonic):
        self.cap = cap_per_minute
        self.per_minute: float | None = cap_per_minute
        self._clock = clock
        self._accepted: deque[float] = deque()
        self._tokens = 0.0
        self._refilled = clock()
        self.hold_until = 0.0
        self._throttle_streak = 0
        self._held_at = -math.inf
        self._last_throttle = -math.inf
        self._last_probe = clock()
        self._probes = 0  # consecutive throttle-free probes
        self._waited_recently = -math.inf
        self.throttled = 0

    def now(self) -> float:
        return self._clock()

    # -- sending -------------------------------------------------------------------------------------------

    def delay(self) -> float:
        """Seconds to wait before one more request may go; 0 means go now (and it was counted)."""
        now = self._clock()
        if now < self.hold_until:
            self._waited_recently = now
            return self.hold_until - now
        if self.per_minute is None:
            return 0.0
        rate = self.per_minute / self.WINDOW
        capacity = max(1.0, rate * self.BURST_SECONDS)
        self._tokens = min(capacity, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        self._waited_recently = now
        return max(0.001, (1.0 - self._tokens) / rate)  # never a wait too small to move a clock

    # -- answers -------------------------------------------------------------------------------------------

    def on_accepted(self) -> bool:
        """True when the pace changed (a probe raised it)."""
        now = self._clock()
        self._accepted.append(now)
        self._trim(now)
        self._throttle_streak = 0
        return self._maybe_probe(now)

    def on_throttled(self, retry_after: float | None = None, sent: float | None = None) -> bool:
        """A throttled answer to a request sent at ``sent`` (clock time; unknown: now). True when it begins an
        episode (the first throttled answer since an accepted one): the news worth telling the user."""
        now = self._clock()
        self.throttled += 1
        self._trim(now)
        self._probes = 0
        episode = self._throttle_streak == 0
        if episode:
            # What the API accepted over the last minute is the best estimate of the quota left to us.
            seen = len(self._accepted)
            if seen >= 10:
                estimate = max(self.MIN_PER_MINUTE, seen * self.MARGIN)
                self.per_minute = estimate if self.per_minute is None else min(self.per_minute, estimate)
                if self.cap is not None:
                    self.per_minute = min(self.per_minute, self.cap)
        elif sent is not None and sent < self._held_at:
            # Sent before the current hold began (requests in flight together): the same news, not a new probe.
            if retry_after is not None:
                self.hold_until = max(self.hold_until, now + min(retry_after, 5 * self.WINDOW))
            return False
        self._throttle_streak += 1
        # Back off exponentially while throttling lasts (a fixed-window quota only resets at its window's end),
        # and never less than the server asked for.
        hold = min(self.MAX_HOLD, 2.0 ** (self._throttle_streak - 1))
        if retry_after is not None:
            hold = max(hold, min(retry_after, 5 * self.WINDOW))
        self.hold_until = max(self.hold_until, now + hold)
        self._held_at = now
        self._tokens = 0.0
        self._refilled = self.hold_until
        self._last_throttle = now
        self._last_probe = now
        return episode

    def hold(self, seconds: float) -> None:
        """The API asked every client to wait (503 with Retry-After)."""
        self.hold_until = max(self.hold_until, self._clock() + min(seconds, 5 * self.WINDOW))

    def _trim(self, now: float) -> None:
        horizon = now - self.WINDOW
        while self._accepted and self._accepted[0] < horizon:
            self._accepted.popleft()

    def _maybe_probe(self, now: float) -> bool:
        if self.per_minute is None or now - self._last_probe < self.PROBE_EVERY:
            return False
        self._last_probe = now
        # Only when the pace actually held requests back: a quiet tenant has nothing to learn.
        if now - self._waited_recently < self.PROBE_EVERY and now - self._last_throttle >= self.PROBE_EVERY:
            raised = self.per_minute * self.PROBE_STEPS[min(self._probes, len(self.PROBE_STEPS) - 1)]
            self._probes += 1
            self.per_minute = raised if self.cap is None else min(raised, self.cap)
            return True
        return False

    @property
    def accepted_last_minute(self) -> int:
        self._trim(self._clock())
        return len(self._accepted)


class Gate:
    """Asyncio side of both controls: ``acquire()`` waits for a free slot, then for the pace.

    A plain counter and a FIFO of waiters (the event loop is single-threaded): this runs for every request.
    """

    def __init__(self, limit: ConcurrencyLimit, pacer: QuotaPacer):
        self.limit = limit
        self.pacer = pacer
        self.in_flight = 0
        self._waiters: deque[asyncio.Future] = deque()

    async def acquire(self) -> float:
        if self.in_flight >= self.limit.current or self._waiters:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            try:
                await future  # resolved by release() with the slot handed over
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self.release()  # got the slot while being cancelled: pass it on
                elif future in self._waiters:  # (a hand-over may already have dropped it)
                    self._waiters.remove(future)
                raise
        else:
            self.in_flight += 1
        try:
            while (wait := self.pacer.delay()) > 0:
                await asyncio.sleep(min(wait, 1.0))
        except BaseException:
            self.release()
            raise
        return self.pacer.now()

    def release(self) -> None:
        self.in_flight -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters and self.in_flight < self.limit.current:
            future = self._waiters.popleft()
            if not future.done():
                self.in_flight += 1
                future.set_result(None)

    def wake(self) -> None:
        """After the limit grew."""
        self._hand_over()
