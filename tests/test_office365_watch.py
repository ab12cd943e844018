"""What each content type tells the stall watch (office365/watch.py), and the recovery steps' own parts (a renewal
of the token that waits on a silent connection to Entra is abandoned for a new client); an HTML page answered
instead of a blob is fetched again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from connectors.metrics import gauge_values
from connectors.progress import StallWatch, seconds_until_loss
from emulators.netfault import FaultProxy
from emulators.office365.harness import trust_emulator_ca
from emulators.process import eventually
from office365 import metrics
from office365.listing import RETENTION, ContentRef
from office365.state import CollectorState
from office365.watch import STEPS, ContentTypeProgress, Recovery
from tests.o365_fixtures import o365_emulator_factory  # noqa: F401
from tests.o365_helpers import emulator_client

TYPE = "Audit.SharePoint"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def watched(tmp_path):
    clock = Clock()
    recoveries: list[tuple[str, int]] = []
    watch = StallWatch("o365-watch-test", "content type", STEPS, lambda *a: None, stall_seconds=60, clock=clock)
    watch.recover = lambda name, index: recoveries.append((name, index))
    state = CollectorState(tmp_path, [TYPE], initial_lookback=timedelta(hours=1), filter_capacity=10)
    yield watch, state, ContentTypeProgress(watch, state, [TYPE], poll_interval=30), clock, recoveries
    state.close()


def blob(content_id: str, created: datetime) -> ContentRef:
    return ContentRef(TYPE, content_id, f"https://x/{content_id}", created.timestamp(),
                      (created + RETENTION).timestamp())


def test_pending_blobs_without_commits_are_a_stall_and_a_commit_is_progress(watched):
    watch, state, progress, clock, recoveries = watched
    now = datetime.now(UTC)
    state.listed(TYPE, now)
    progress.tick(now, throttled=0, delivery_down=False)
    assert watch.stalled_for(TYPE) == 0  # nothing listed and undelivered, listing up to date: idle, not stalled
    state.track(blob("a", now - timedelta(days=6, hours=23)))
    progress.tick(now, throttled=0, delivery_down=False)
    clock.now += 61
    progress.tick(now, throttled=0, delivery_down=False)
    watch.check()
    assert recoveries == [(TYPE, 0)]
    # The time until loss is the oldest pending blob's, on the API's clock.
    assert 3500 < gauge_values(seconds_until_loss)["o365-watch-test"] <= 3600
    metrics.blobs_forwarded.labels(TYPE).inc()  # what a commit counts
    progress.tick(now, throttled=0, delivery_down=False)
    assert watch.stalled_for(TYPE) == 0


def test_blobs_waiting_for_a_timed_retry_a_missing_permission_throttling_and_delivery_down_are_no_stall(watched):
    watch, state, progress, clock, recoveries = watched
    now = datetime.now(UTC)
    state.listed(TYPE, now)
    state.track(blob("a", now))
    progress.waiting[TYPE] += 1  # deferred: fetched again later
    progress.tick(now, throttled=0, delivery_down=False)
    clock.now += 120
    progress.tick(now, throttled=0, delivery_down=False)
    assert watch.stalled_for(TYPE) == 0
    progress.waiting[TYPE] -= 1
    progress.idle.add(TYPE)
    progress.tick(now, throttled=0, delivery_down=False)
    assert watch.stalled_for(TYPE) == 0
    progress.idle.clear()
    progress.tick(now, throttled=1, delivery_down=False)  # the API throttled since the last tick
    assert watch.stalled_for(TYPE) == 0
    progress.tick(now, throttled=1, delivery_down=True)
    assert watch.stalled_for(TYPE) == 0 and recoveries == []


def test_listing_that_stopped_moving_is_behind_and_listing_that_moves_is_progress(watched):
    watch, state, progress, clock, recoveries = watched
    now = datetime.now(UTC)
    state.listed(TYPE, now - timedelta(minutes=5))  # longer ago than a poll takes
    progress.tick(now, throttled=0, delivery_down=False)
    clock.now += 30
    assert watch.stalled_for(TYPE) == 30
    state.listed(TYPE, now)
    progress.tick(now, throttled=0, delivery_down=False)
    assert watch.stalled_for(TYPE) == 0


def test_recovery_steps_new_pool_then_new_token_client_then_the_run():
    class Client:
        renewed = 0

        def renew_session(self):
            self.renewed += 1

    class Tokens:
        reset_count = 0

        def reset(self):
            self.reset_count += 1

    client, tokens, restarts = Client(), Tokens(), []
    recover = Recovery(client, tokens, restarts.append)  # type: ignore[arg-type]
    recover("A", 0)
    recover("B", 0)  # stalled at the same moment: one new pool serves both
    assert (client.renewed, tokens.reset_count, restarts) == (1, 0, [])
    recover("A", 1)
    assert (client.renewed, tokens.reset_count) == (2, 1)
    recover("A", 2)
    assert restarts == ["A"]


def test_a_token_renewal_waiting_on_a_silent_entra_connection_is_abandoned_for_a_new_client(
    o365_emulator_factory,  # noqa: F811
):
    """A read timeout of ten minutes: the renewal on the frozen keep-alive connection would wait that long. ``reset``
    (the watch's second step) gives it up: a new MSAL client asks again on a new connection."""
    emulator, info = o365_emulator_factory(blobs=0)
    with FaultProxy("127.0.0.1", info["port"]) as entra:
        proxied = dict(info, login_url=f"https://{entra.address}")

        async def body():
            async with emulator_client(proxied, timeout=600) as client:
                tokens = client.tokens
                first = await tokens.token()
                accepted = entra.stats.accepted
                assert entra.freeze() >= 1
                renewal = asyncio.create_task(tokens.renew_after_rejection(first))
                assert await eventually(lambda: tokens._abandon is not None, 10)  # a request is under way
                await asyncio.sleep(0.5)  # out on the silent connection (MSAL's thread sends at once)
                assert not renewal.done()
                tokens.reset()
                second = await asyncio.wait_for(renewal, 60)
                entra.release_frozen()  # the abandoned thread's read ends (asyncio.run waits for its thread)
                return first, second, entra.stats.accepted - accepted

        with trust_emulator_ca(info["ca_file"]):
            first, second, new_connections = asyncio.run(body())
    assert second != first and new_connections >= 1


def test_pending_content_near_its_expiry_is_warned_under_the_configured_hours_then_under_an_hour(watched):
    watch, state, progress, clock, recoveries = watched
    logs: list[tuple[str, str]] = []
    watch._log = lambda message, level: logs.append((level, message))
    watch.loss_warnings = (12 * 3600.0, 3600.0)  # what the trigger sets from expiry_warning_hours
    now = datetime.now(UTC)
    state.listed(TYPE, now)
    state.track(blob("old", now - timedelta(days=5)))  # two days left: quiet
    progress.waiting[TYPE] += 1  # waits for a retry: this test is about its expiry, not a stall

    def tick(later: timedelta) -> None:
        state.listed(TYPE, now + later)  # listing keeps up
        progress.tick(now + later, throttled=0, delivery_down=False)

    progress.tick(now, throttled=0, delivery_down=False)
    watch.check()
    assert logs == []
    tick(timedelta(days=1, hours=17))  # 7 h left
    watch.check()
    clock.now += 60
    watch.check()
    assert len(logs) == 1 and logs[0][0] == "warning" and TYPE in logs[0][1] and "leaves the source in 7" in logs[0][1]
    tick(timedelta(days=1, hours=23, minutes=30))  # 30 min left
    watch.check()
    assert len(logs) == 2 and "leaves the source in 30" in logs[1][1]


def test_an_html_page_instead_of_a_blob_is_fetched_again_not_taken_for_its_content():
    """A gateway's error page answered 200 would otherwise be a blob of unusable content: its records skipped."""
    from multidict import CIMultiDict

    from office365.client import ApiResponse
    from office365.fetcher import Deferred, fetch_blob

    class Gateway:
        def given_url(self, url: str) -> str:
            return url

        async def get(self, url: str, what: str) -> ApiResponse:
            return ApiResponse(200, CIMultiDict({"Content-Type": "text/html; charset=utf-8"}), b"<html>502</html>")

    ref = blob("a", datetime.now(UTC))
    with pytest.raises(Deferred) as deferred:
        asyncio.run(fetch_blob(Gateway(), ref, asyncio.Event()))  # type: ignore[arg-type]
    assert "HTML" in deferred.value.reason and deferred.value.delay > 0
