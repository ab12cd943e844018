"""``connectors.retry``: the backoff's steps and ``retrying``'s loop (pure logic: pauses are recorded, not slept)."""

import asyncio
import random

import pytest

from connectors.retry import Backoff, RetryOn, parse_retry_after, retrying
from connectors.stopping import Stopping, pause_or_stop


class Flaky:
    """An attempt failing with the given errors in turn, then returning "done"."""

    def __init__(self, *errors: Exception):
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


class Pauses(list):
    async def __call__(self, delay: float) -> None:
        self.append(delay)


class Answer(Exception):
    def __init__(self, code: str = "", retry_after: float | None = None):
        super().__init__(code)
        self.code = code
        self.retry_after = retry_after


def steps(base=1.0, cap=8.0):
    return lambda: Backoff(base=base, cap=cap, jitter=False)


def test_backoff_steps_double_up_to_the_cap_with_equal_jitter():
    backoff = Backoff(base=1.0, cap=4.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(5)]
    for delay, step in zip(delays, [1.0, 2.0, 4.0, 4.0, 4.0]):
        assert step / 2 <= delay <= step
    assert len(set(delays)) == 5  # the random half differs from one to the next
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_backoff_without_jitter_waits_whole_steps_and_a_longer_retry_after():
    backoff = Backoff(base=1.0, cap=4.0, jitter=False)
    assert [backoff.next_delay() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert backoff.next_delay(retry_after=7.0) == 7.0
    assert backoff.next_delay(retry_after=100.0) == 20.0  # a server's wish is bounded at five caps


def test_parse_retry_after_reads_seconds_and_dates():
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


async def test_retries_until_the_attempt_returns_and_resets_the_backoff():
    pauses, made = Pauses(), []

    def backoff():
        made.append(Backoff(base=1.0, cap=8.0, jitter=False))
        return made[-1]

    attempt = Flaky(Answer(), Answer(), Answer())
    assert await retrying(attempt, RetryOn(Answer), backoff=backoff, pause=pauses) == "done"
    assert attempt.calls == 4
    assert pauses == [1.0, 2.0, 4.0]
    assert len(made) == 1 and made[0].attempts == 0  # made once, reset by the success


async def test_no_backoff_is_made_when_the_first_attempt_succeeds():
    def backoff():
        raise AssertionError("made without a failure")

    assert await retrying(Flaky(), RetryOn(Answer), backoff=backoff, pause=Pauses()) == "done"


async def test_a_retry_after_longer_than_the_step_wins():
    pauses = Pauses()
    await retrying(Flaky(Answer(retry_after=5.0), Answer()), RetryOn(Answer), backoff=steps(), pause=pauses)
    assert pauses == [5.0, 2.0]


async def test_an_error_no_rule_names_is_raised_at_once():
    attempt, pauses = Flaky(Answer(), KeyError("bug")), Pauses()
    with pytest.raises(KeyError):
        await retrying(attempt, RetryOn(Answer), backoff=steps(), pause=pauses)
    assert attempt.calls == 2 and pauses == [1.0]


async def test_each_kind_gives_up_after_its_own_attempts():
    class Other(Exception):
        pass

    first = Answer("third")
    attempt = Flaky(Answer("first"), Other(), Other(), Answer("second"), Other(), first, Answer("never"))
    with pytest.raises(Answer) as raised:
        await retrying(attempt, RetryOn(Answer, attempts=3), RetryOn(Other), backoff=steps(), pause=Pauses())
    assert raised.value is first  # the third Answer, raised as it came; the Others in between did not count
    assert attempt.calls == 6


async def test_the_first_matching_rule_decides_and_when_narrows_it():
    pauses = Pauses()
    rules = (
        RetryOn(Answer, attempts=2, delay=None, when=lambda error: error.code == "stale"),
        RetryOn(Answer, delay=lambda backoff, _: min(backoff.next_delay(), 1.5)),
    )
    attempt = Flaky(Answer("stale"), Answer("busy"), Answer("busy"), Answer("busy"))
    assert await retrying(attempt, *rules, backoff=steps(), pause=pauses) == "done"
    assert pauses == [1.0, 1.5, 1.5]  # "stale" at once, the backoff untouched; "busy" capped at 1.5
    with pytest.raises(Answer, match="stale"):
        await retrying(Flaky(Answer("stale"), Answer("stale")), *rules, backoff=steps(), pause=pauses)


async def test_the_hooks_hear_each_retried_failure_with_its_count_and_each_success():
    heard = []
    rules = (RetryOn(Answer, attempts=3), RetryOn(KeyError))
    attempt = Flaky(Answer("a"), KeyError("k"), Answer("b"))
    await retrying(attempt, *rules, backoff=steps(), pause=Pauses(),
                   on_failure=lambda error, count: heard.append((str(error), count)),
                   on_success=lambda: heard.append("success"))
    assert heard == [("a", 1), ("'k'", 1), ("b", 2), "success"]
    heard.clear()
    with pytest.raises(Answer):
        await retrying(Flaky(Answer("a"), Answer("b"), Answer("c")), *rules, backoff=steps(), pause=Pauses(),
                       on_failure=lambda error, count: heard.append((str(error), count)),
                       on_success=lambda: heard.append("success"))
    assert heard == [("a", 1), ("b", 2)]  # the failure given up is raised, not heard


async def test_a_stop_during_a_pause_ends_the_retries():
    stopping = asyncio.Event()
    attempt = Flaky(Answer(), Answer())

    async def stop_soon():
        await asyncio.sleep(0.01)
        stopping.set()

    stopper = asyncio.ensure_future(stop_soon())
    with pytest.raises(Stopping) as raised:
        await retrying(attempt, RetryOn(Answer), backoff=lambda: Backoff(base=60.0, cap=60.0),
                       pause=pause_or_stop(stopping))
    await stopper
    assert attempt.calls == 1
    assert raised.value.__context__ is None  # not chained to the failure it interrupted the retries of
