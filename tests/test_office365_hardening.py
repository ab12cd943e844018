"""Failure classes of issue 10 (items 5-9, 14) against the real HTTPS emulator: slow transfers, a skewed API
clock and refused windows, a second instance, DLP.All without its permission, a restart after a fault, access
tokens in the logs; and the re-list schedule that brings late blobs (issue 12)."""

from __future__ import annotations

import asyncio
import math
import signal
import time
from datetime import timedelta

import orjson
import pytest

from connectors.logs import Redactor
from emulators.process import wait_until
from office365.client import TransientError
from office365.fetcher import get_with_retries
from office365.listing import RETENTION, RelistSchedule, horizon, list_pages
from tests.o365_fixtures import o365_emulator_factory  # noqa: F401
from tests.o365_helpers import (
    GAP_WORDS,
    InProcessTrigger,
    O365Rig,
    first_blob,
    free_port,
    run_with_client,
    write_checkpoint,
)

pytestmark = pytest.mark.timeout(240)

# -- 5. slow transfers --------------------------------------------------------------------------------------------


def test_a_blob_slower_than_the_timeout_but_still_arriving_is_kept(o365_emulator_factory):  # noqa: F811
    emulator, info = o365_emulator_factory(blobs=1, records_per_blob=300, subscribed=["Audit.Exchange"])
    size = len(emulator.store.body(emulator.store.blobs["Audit.Exchange"][0]))
    emulator.control(blob_bytes_per_second=size / 3)  # three seconds for the body, a byte every tenth of one

    async def body(client):
        ref = await first_blob(client)
        response = await client.get(client.given_url(ref.uri), "blob")
        return response.body

    fetched = run_with_client(info, body, timeout=1.0)
    assert len(fetched) == size and len(orjson.loads(fetched)) == 300


def test_a_peer_that_sends_nothing_is_given_up_on_after_the_timeout(o365_emulator_factory):  # noqa: F811
    emulator, info = o365_emulator_factory(blobs=1, subscribed=["Audit.Exchange"])

    async def body(client):
        ref = await first_blob(client)
        emulator.control(fault_rate=1.0, fault_kinds=["timeout"], hang_seconds=60)
        try:
            await client.get(client.given_url(ref.uri), "blob")
        except TransientError as error:
            return error
        finally:
            emulator.control(fault_rate=0.0)

    error = run_with_client(info, body, timeout=1.0)
    assert error is not None and error.status == 0 and "timeout" in str(error)


# -- 6. the API's clock -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [3 * 3600.0, -3 * 3600.0])
def test_windows_follow_the_apis_clock_from_its_date_header(o365_emulator_factory, offset):  # noqa: F811
    emulator, info = o365_emulator_factory(blobs=2, subscribed=["Audit.Exchange"], clock_offset_seconds=offset)

    async def body(client):
        await client.get(client.operation_url("subscriptions/list"), "subscription")
        learned = client.clock_offset
        # The oldest window the collector builds is accepted by the API, whatever the skew.
        oldest = horizon(client.now())
        get = lambda url: get_with_retries(client, url, "list", asyncio.Event())  # noqa: E731
        pages = [page async for page in list_pages(client, get, "Audit.Exchange", oldest, oldest + timedelta(hours=1))]
        return learned, pages

    learned, pages = run_with_client(info, body)
    assert abs(learned - offset) < 2.0
    assert pages == [([], 0)]


def test_a_refused_window_is_narrowed_and_never_holds_back_newer_ones(tmp_path, monkeypatch):
    """The oldest window starts two hours before what the API accepts (a clock the Date header did not explain):
    refused at every poll, yet its newer half and every newer window are listed and delivered."""
    import office365.lister

    monkeypatch.setattr(office365.lister, "horizon", lambda now: now - RETENTION - timedelta(hours=2))
    resume = time.time() - RETENTION.total_seconds() - 1.5 * 3600
    write_checkpoint(tmp_path, {"Audit.Exchange": resume, "Audit.General": resume})
    with O365Rig(tmp_path, "--blobs", "3", "--records-per-blob", "4") as rig:
        with InProcessTrigger(rig, rig.trigger_config(content_types=["Audit.Exchange", "Audit.General"]),
                              monkeypatch):
            assert rig.wait_complete(90, expected=2 * 3 * 4), rig.comparison()
            assert wait_until(lambda: any("refused the listing window" in str(e.get("message")) for e in rig.logs()),
                              10), rig.logs()
        refusals = [e for e in rig.logs() if "refused the listing window" in str(e.get("message"))]
        assert len(refusals) <= 2  # said once per content type, not at every poll
        assert rig.comparison()["duplicates"] == 0


# -- 7. one instance per data path ------------------------------------------------------------------------------


def test_a_second_instance_on_the_same_data_path_exits_2_with_one_clear_message(tmp_path):
    with O365Rig(tmp_path, "--blobs", "2", "--records-per-blob", "5") as rig:
        first = rig.start_trigger(log_name="first.log")
        try:
            assert rig.wait_complete(90), rig.comparison()
            rig.ports = (free_port(), free_port())  # its own liveness and metrics ports: only the data path is shared
            second = rig.start_trigger(log_name="second.log")
            assert second.wait(60) == 2
            critical = [e["message"] for e in rig.logs() if e.get("level") == "critical"]
            assert len(critical) == 1 and "another instance" in critical[0] and "SEKOIA_DATA_PATH" in critical[0]
            assert first.poll() is None  # the first one goes on
        finally:
            assert rig.stop_trigger(first) == 0
        assert rig.comparison()["duplicates"] == 0


# -- 8. DLP.All without ActivityFeed.ReadDlp ---------------------------------------------------------------------


def test_dlp_without_its_permission_leaves_the_other_types_collected_and_says_so(tmp_path, monkeypatch, caplog):
    import office365.lister

    monkeypatch.setattr(office365.lister, "PERMISSION_RECHECK", 2.0)
    with O365Rig(tmp_path, "--no-dlp-permission") as rig:
        started = time.monotonic()
        with InProcessTrigger(rig, rig.trigger_config(), monkeypatch) as running:
            others = sum(n for ct, n in rig.emulator.published(all=1, ids=0)["by_content_type"].items()
                         if ct != "DLP.All")
            assert rig.wait_complete(90, expected=others), rig.comparison()
            assert wait_until(lambda: dlp_warnings(rig), 30)  # the runtime hears it
            # Said again every PERMISSION_RECHECK; the runtime gets the same line at most once a minute.
            assert wait_until(lambda: sum(NOT_COLLECTED in r.getMessage() for r in caplog.records) >= 2, 30)
            assert running.trigger.fatal_error is None
            assert not any(e.get("level") == "critical" for e in rig.logs())
            # Granted later: picked up without a restart.
            rig.emulator.control(dlp_permission=True)
            assert rig.wait_complete(90), rig.comparison()
        warned = len(dlp_warnings(rig))
        assert warned <= 1 + (time.monotonic() - started) // 60, warned  # once a minute at most, however long it ran
        assert rig.comparison()["duplicates"] == 0
        assert any("ActivityFeed.ReadDlp is granted now" in str(e.get("message")) for e in rig.logs())


NOT_COLLECTED = "DLP.All is not collected: the app lacks the application permission ActivityFeed.ReadDlp"


def dlp_warnings(rig: O365Rig) -> list[str]:
    return [str(e["message"]) for e in rig.logs() if e.get("level") == "warning" and NOT_COLLECTED in str(e["message"])]


def test_only_dlp_configured_without_its_permission_is_a_configuration_error(tmp_path):
    with O365Rig(tmp_path, "--no-dlp-permission") as rig:
        proc = rig.start_trigger(rig.trigger_config(content_types=["DLP.All"]))
        assert proc.wait(60) == 2
        critical = [e["message"] for e in rig.logs() if e.get("level") == "critical"]
        assert len(critical) == 1 and "ActivityFeed.ReadDlp" in critical[0] and "`content_types`" in critical[0]


# -- 9. no false gap after a restart ----------------------------------------------------------------------------


def test_a_restart_after_a_fault_reports_no_gap_and_delivers_everything(tmp_path):
    # Throttled hard: a few listings get through, the other content types' first windows do not.
    with O365Rig(tmp_path, "--blobs", "3", "--records-per-blob", "5", "--subscribed", "all",
                 "--quota-per-minute", "4") as rig:
        checkpoint = rig.data_path / "state" / "office365_management_api" / "office365-checkpoint.json"
        proc = rig.start_trigger(log_name="first.log")
        try:
            assert wait_until(lambda: checkpoint.exists() and orjson.loads(checkpoint.read_bytes()).get("initial"),
                              60)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        rig.emulator.control(quota_per_minute=0)
        proc = rig.start_trigger(log_name="second.log")
        try:
            assert rig.wait_complete(90), rig.comparison()
        finally:
            rig.stop_trigger(proc)
        assert not [e for e in rig.logs() if GAP_WORDS in str(e.get("message"))]
        assert rig.comparison()["duplicates"] == 0


def test_content_owed_and_expired_is_reported_once(tmp_path, monkeypatch):
    """A checkpoint from a run that listed content 8 days ago: that gap is real, and said once per type."""
    write_checkpoint(tmp_path, {"Audit.Exchange": time.time() - 8 * 86400})
    with O365Rig(tmp_path, "--blobs", "2", "--records-per-blob", "3") as rig:
        with InProcessTrigger(rig, rig.trigger_config(content_types=["Audit.Exchange"]), monkeypatch):
            assert rig.wait_complete(60, expected=6), rig.comparison()
        gaps = [e for e in rig.logs() if GAP_WORDS in str(e.get("message"))]
        assert len(gaps) == 1 and "Audit.Exchange" in gaps[0]["message"]


# -- 14. access tokens obtained at run time ----------------------------------------------------------------------


def test_access_tokens_join_the_redaction_list_and_old_ones_leave_it(o365_emulator_factory):  # noqa: F811
    emulator, info = o365_emulator_factory(blobs=0, token_lifetime=1)
    redactor = Redactor()

    async def body(client):
        # Each token lives 1 s, renewed at 80 % of its life: asked for until the third one came.
        tokens = [await client.tokens.token()]
        deadline = time.monotonic() + 30
        while len(tokens) < 3 and time.monotonic() < deadline:
            token = await client.tokens.token()
            if token != tokens[-1]:
                tokens.append(token)
            await asyncio.sleep(0.05)
        return tokens

    tokens = run_with_client(info, body, redactor=redactor)
    assert len(set(tokens)) == 3
    assert redactor(f"Authorization: Bearer {tokens[-1]}") == "Authorization: Bearer ***"
    assert tokens[-2] not in redactor(tokens[-2]) and tokens[0] in redactor(tokens[0])  # only the last two kept


# -- issue 12: the re-list schedule ---------------------------------------------------------------------------------


def test_relist_schedule_lists_recent_time_often_and_old_time_rarely():
    day, week = timedelta(hours=24), RETENTION
    schedule = RelistSchedule([(day, 720.0), (week, 14400.0)], now=0.0)
    assert schedule.due(0.0) == day  # a run starts with the last day again
    assert schedule.due(1.0) is None and math.isclose(schedule.wait(1.0), 719.0)
    assert schedule.due(720.0) == day
    assert schedule.due(14400.0) == week  # the whole retention also does the day's work
    assert schedule.due(14401.0) is None and math.isclose(schedule.wait(14401.0), 719.0)


def test_a_late_blob_is_delivered_within_the_schedule(tmp_path, monkeypatch):
    """Blobs becoming listable 30 minutes and 20 hours after their creation time, while the trigger runs."""
    with O365Rig(tmp_path, "--blobs", "1", "--records-per-blob", "2") as rig:
        config = rig.trigger_config(content_types=["Audit.Exchange"], relist_interval_minutes=0.05)
        with InProcessTrigger(rig, config, monkeypatch):
            assert rig.wait_complete(60, expected=2), rig.comparison()
            rig.emulator.control(publish_late={"seconds_late": 1800, "content_types": ["Audit.Exchange"]})
            rig.emulator.control(publish_late={"seconds_late": 72000, "content_types": ["Audit.Exchange"]})
            assert rig.wait_complete(60, expected=6), rig.comparison()  # both late blobs, 2 records each
        late = [blob["ids"] for blob in rig.emulator.blobs("Audit.Exchange", ids=1) if blob["role"] == "late"]
        assert len(late) == 2 and all(rig.delivered()[i] == 1 for ids in late for i in ids)
