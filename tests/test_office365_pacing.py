"""The adaptive concurrency (AIMD) and the quota pacer, on a fake clock."""

from __future__ import annotations

import asyncio
from collections import Counter, deque

import pytest

from office365.pacing import ConcurrencyLimit, Gate, QuotaPacer


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_concurrency_slow_starts_then_grows_by_one_per_round_trip():
    limit = ConcurrencyLimit(64, initial=4, clock=Clock())
    for _ in range(10):
        limit.on_success()
    assert limit.current == 14  # +1 per success below the threshold
    for _ in range(200):
        limit.on_success()
    assert limit.current == 64  # capped at the maximum


def test_concurrency_halves_once_per_episode_and_climbs_back_slowly():
    clock = Clock()
    limit = ConcurrencyLimit(32, initial=32, clock=clock)
    sent_before = clock.now
    clock.advance(0.1)
    assert limit.on_trouble(started=sent_before)
    assert limit.current == 16
    # Answers to requests sent before the decrease belong to the same episode.
    assert not limit.on_trouble(started=sent_before)
    assert limit.current == 16
    clock.advance(0.1)
    assert limit.on_trouble(started=clock.now)
    assert limit.current == 8
    for _ in range(9):
        limit.on_success()
    assert limit.current == 9  # additive increase: about +1 per `limit` successes
    for _ in range(20):
        clock.advance(2)
        limit.on_trouble(started=clock.now)
    assert limit.current == 1  # never below the minimum


def test_pacer_is_unpaced_until_throttled():
    clock = Clock()
    pacer = QuotaPacer(clock=clock)
    assert all(pacer.delay() == 0 for _ in range(10_000))
    assert pacer.per_minute is None


def test_throttling_sets_the_pace_under_the_quota_seen():
    clock = Clock()
    pacer = QuotaPacer(clock=clock)
    for _ in range(2000):  # a burst the API accepted
        pacer.delay()
        pacer.on_accepted()
        clock.advance(0.002)
    assert pacer.on_throttled()  # an episode begins: the trigger tells the user
    assert pacer.per_minute == pytest.approx(2000 * QuotaPacer.MARGIN)
    assert pacer.delay() == pytest.approx(1.0)  # first hold: 1 s
    # Further throttled answers in the same episode back off exponentially and keep the estimate.
    assert not pacer.on_throttled()
    assert pacer.delay() == pytest.approx(2.0)
    pacer.on_throttled(retry_after=30)
    assert pacer.delay() == pytest.approx(30.0)
    assert pacer.per_minute == pytest.approx(1900)
    assert pacer.throttled == 3


@pytest.mark.parametrize("window", ["sliding", "fixed"])
def test_against_a_quota_it_uses_nearly_all_of_it_with_few_throttled_answers(window):
    """A simulated API with a quota of 2,000 requests a minute and a backlog that would use more."""
    clock = Clock(0.0)
    pacer = QuotaPacer(clock=clock)
    quota, accepted_times, per_minute, accepted, throttled = 2000, deque(), Counter(), 0, 0
    horizon = 10 * 60.0
    while clock.now < horizon:
        wait = pacer.delay()
        if wait:
            clock.advance(wait)
            continue
        if window == "sliding":
            while accepted_times and accepted_times[0] <= clock.now - 60:
                accepted_times.popleft()
            full = len(accepted_times) >= quota
        else:
            full = per_minute[int(clock.now // 60)] >= quota
        if full:
            throttled += 1
            pacer.on_throttled()
        else:
            accepted += 1
            accepted_times.append(clock.now)
            per_minute[int(clock.now // 60)] += 1
            pacer.on_accepted()
        clock.advance(0.001)  # a fast API: the client alone sets the pace
    assert accepted >= 0.9 * quota * horizon / 60
    assert throttled <= 0.02 * (accepted + throttled)


def test_answers_to_requests_in_flight_together_do_not_lengthen_the_hold():
    clock = Clock()
    pacer = QuotaPacer(clock=clock)
    for _ in range(100):
        pacer.on_accepted()
    sent = clock.now
    clock.advance(0.05)
    for _ in range(32):  # 32 requests were in flight when the quota ran out
        pacer.on_throttled(sent=sent)
    assert pacer.delay() == pytest.approx(1.0)
    clock.advance(1.0)
    probe = clock.now
    clock.advance(0.01)
    pacer.on_throttled(sent=probe)  # the probe after the hold: now it doubles
    assert pacer.delay() == pytest.approx(2.0)
    for _ in range(10):
        clock.advance(pacer.delay())
        pacer.on_throttled(sent=clock.now)
    assert pacer.delay() == pytest.approx(QuotaPacer.MAX_HOLD)  # a few probes a minute, at most
    assert pacer.throttled == 43


def test_pacer_probes_upwards_only_when_it_holds_requests_back():
    clock = Clock()
    pacer = QuotaPacer(clock=clock)
    for _ in range(600):
        pacer.on_accepted()
    pacer.on_throttled()
    start = pacer.per_minute
    clock.advance(120)
    pacer.on_accepted()  # idle tenant: nothing was held back, nothing to learn
    assert pacer.per_minute == start

    def backlog(seconds: float) -> None:
        end = clock.now + seconds
        while clock.now < end:
            wait = pacer.delay()
            if wait:
                clock.advance(wait)
            else:
                pacer.on_accepted()

    # The throttling is over (a storm, not the quota): a backlog held back by a stale estimate climbs out of it
    # in seconds, faster with each probe that meets no throttling.
    backlog(30)
    assert pacer.per_minute > 3 * start
    # A throttled answer ends the climb: back under what the API accepted, small steps again.
    pacer.on_throttled()
    after = pacer.per_minute
    assert after <= 0.95 * pacer.accepted_last_minute + 1
    backlog(5.5)
    assert pacer.per_minute == pytest.approx(after * QuotaPacer.PROBE_STEPS[0])


def test_configured_cap_paces_from_the_start_and_is_never_exceeded():
    clock = Clock()
    pacer = QuotaPacer(cap_per_minute=120, clock=clock)
    assert pacer.per_minute == 120
    sent = 0
    while clock.now < 1000 + 600:
        wait = pacer.delay()
        if wait:
            clock.advance(wait)
        else:
            sent += 1
            pacer.on_accepted()
    assert pacer.per_minute == 120
    assert sent <= 120 * 10 + 3


def test_gate_bounds_requests_in_flight_and_follows_the_limit():
    async def scenario():
        limit = ConcurrencyLimit(8, initial=3)
        gate = Gate(limit, QuotaPacer())
        in_flight, peak = 0, 0

        async def request():
            nonlocal in_flight, peak
            await gate.acquire()
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            gate.release()

        await asyncio.gather(*(request() for _ in range(30)))
        assert peak == 3
        limit.limit = 6
        gate.wake()
        peak = 0
        await asyncio.gather(*(request() for _ in range(30)))
        assert peak == 6
        assert gate.in_flight == 0

        # A waiter cancelled while waiting gives its turn away.
        limit.limit = 1
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        gate.release()
        assert gate.in_flight == 0

        # Cancelled, then dropped by a hand-over before its handler ran: no error, no slot leaked.
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        gate.release()  # hands over: pops the cancelled waiter
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.in_flight == 0 and not gate._waiters

    asyncio.run(scenario())
