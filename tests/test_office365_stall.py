"""Never silently stuck (issue 16, Office 365), against the real HTTPS emulator through a fault proxy: a silent
connection to the Management API or to Entra is given up on and replaced; a stall the timeouts do not end is
found by the progress watch and recovered by its steps; the API's clock ahead of the collector's, a resume point in
the API's future; one unreadable answer, and URLs naming another host (issues 17 and 18)."""

from __future__ import annotations

import time

import orjson
import pytest

from connectors.metrics import gauge_values
from emulators.netfault import FaultProxy
from emulators.process import wait_until
from office365 import metrics
from tests.o365_helpers import InProcessTrigger, O365Rig, write_checkpoint

pytestmark = pytest.mark.timeout(180)
EXCHANGE = ["Audit.Exchange"]


def messages(rig: O365Rig, words: str) -> list[str]:
    return [str(entry.get("message")) for entry in rig.logs() if words in str(entry.get("message"))]


def publish(rig: O365Rig, count: int = 2, records: int = 5, content_types=EXCHANGE) -> int:
    """Blobs created now, listable from now on; how many records they hold."""
    rig.emulator.control(publish_late={"seconds_late": 0, "count": count, "records": records,
                                       "content_types": list(content_types)})
    return count * records * len(content_types)


def delivered_once(rig: O365Rig, content_type: str) -> bool:
    """Every record published for ``content_type`` delivered exactly once."""
    published = rig.emulator.published(all=1, contentType=content_type)["ids"]
    delivered = rig.delivered()
    return bool(published) and all(delivered[record] == 1 for record in published)


def network_failures(kind: str) -> float:
    return sum(value for family in metrics.requests.collect() for sample in family.samples
               if sample.name.endswith("_total") and sample.labels == {"kind": kind, "outcome": "network"}
               for value in [sample.value])


# -- silent connections -------------------------------------------------------------------------------------------


def test_a_frozen_management_api_connection_is_given_up_and_replaced(tmp_path, monkeypatch):
    """Every connection open to the API goes silent for good (a NAT that dropped them: no byte, no reset): the
    requests waiting on them end after the read timeout, and new connections carry the rest."""
    with O365Rig(tmp_path, "--blobs", "2", "--records-per-blob", "5") as rig, \
            FaultProxy("127.0.0.1", rig.info["port"]) as api:
        config = rig.trigger_config(content_types=EXCHANGE, management_url=f"https://{api.address}")
        with InProcessTrigger(rig, config, monkeypatch):
            assert rig.wait_complete(60, expected=10), rig.comparison()
            accepted, failures = api.stats.accepted, network_failures("list")
            assert api.freeze() >= 1
            expected = 10 + publish(rig)
            frozen_at = time.monotonic()
            assert rig.wait_complete(60, expected=expected), rig.comparison()
            print(f"delivered {time.monotonic() - frozen_at:.1f} s after the freeze")
        assert api.stats.accepted > accepted  # new connections
        assert network_failures("list") > failures  # a listing waited on a silent connection and was given up
        assert rig.comparison()["duplicates"] == 0


def test_a_silent_connection_the_timeout_allows_is_replaced_by_the_progress_watch(tmp_path, monkeypatch):
    """A read timeout of ten minutes (large blobs on a slow link): blob transfers go silent halfway. The content type
    is behind and makes no progress: after stall_seconds the watch warns once and replaces the connection pool,
    the transfers start again on new connections, and the watch says so."""
    with O365Rig(tmp_path, "--blobs", "3", "--records-per-blob", "200") as rig, \
            FaultProxy("127.0.0.1", rig.info["port"]) as api:
        rig.emulator.control(blob_bytes_per_second=40_000)  # ~280 KB blobs: seven seconds each
        config = rig.trigger_config(content_types=EXCHANGE, management_url=f"https://{api.address}",
                                    request_timeout_seconds=600, stall_seconds=5)
        with InProcessTrigger(rig, config, monkeypatch) as running:
            assert wait_until(lambda: rig.emulator.stats()["requests"].get("blob", 0) >= 3, 60)
            assert wait_until(lambda: api.stats.bytes_down > 100_000, 30)  # bodies on their way
            api.freeze()
            frozen_at = time.monotonic()
            rig.emulator.control(blob_bytes_per_second=0)
            assert rig.wait_complete(90, expected=600), rig.comparison()
            print(f"delivered {time.monotonic() - frozen_at:.1f} s after the freeze")
            assert wait_until(lambda: messages(rig, "progresses again after replacing its connections"), 20)
            stalls = messages(rig, "has made no progress")
            assert len(stalls) == 1 and "Content type Audit.Exchange" in stalls[0], stalls
            assert "replacing its connections to the Management API" in stalls[0]
            assert running.trigger.is_alive()
        assert delivered_once(rig, "Audit.Exchange")


def test_a_blob_that_keeps_arriving_slowly_is_progress_not_a_stall(tmp_path, monkeypatch):
    """A blob taking twice stall_seconds to arrive, a byte every tenth of a second: its bytes are progress, so the
    watch leaves the transfer alone (replacing the connections would start it again from its first byte)."""
    with O365Rig(tmp_path, "--blobs", "1", "--records-per-blob", "300") as rig:
        rig.emulator.control(blob_bytes_per_second=40_000)  # ~400 KB: ten seconds
        config = rig.trigger_config(content_types=EXCHANGE, request_timeout_seconds=600, stall_seconds=5)
        with InProcessTrigger(rig, config, monkeypatch):
            assert rig.wait_complete(60, expected=300), rig.comparison()
            took = rig.emulator.stats()
        assert took["blobs_served"] == 1  # fetched once, not started again
        assert not messages(rig, "has made no progress")
        assert delivered_once(rig, "Audit.Exchange")


def test_a_frozen_entra_connection_is_given_up_and_the_token_renewed_on_a_new_one(tmp_path, monkeypatch):
    """Tokens living 20 s: the renewal goes out on the keep-alive connection to Entra, which went silent. It is
    given up after the read timeout and asked again on a new connection, before the token in hand expires."""
    with O365Rig(tmp_path, "--blobs", "1", "--records-per-blob", "5", "--token-lifetime", "20") as rig, \
            FaultProxy("127.0.0.1", rig.info["port"]) as entra:
        config = rig.trigger_config(content_types=EXCHANGE, login_url=f"https://{entra.address}")
        with InProcessTrigger(rig, config, monkeypatch):
            assert rig.wait_complete(60, expected=5), rig.comparison()
            issued, accepted = rig.emulator.stats()["tokens_issued"], entra.stats.accepted
            assert entra.freeze() >= 1  # MSAL's pooled connection
            expected = 5 + publish(rig)
            assert wait_until(lambda: rig.emulator.stats()["tokens_issued"] > issued, 60)
            assert rig.wait_complete(60, expected=expected), rig.comparison()
        assert entra.stats.accepted > accepted
        assert not rig.emulator.stats()["auth_failures"]  # no request went out with an expired token
        assert rig.comparison()["duplicates"] == 0


# -- the API's clock ------------------------------------------------------------------------------------------------


def test_an_api_clock_fifteen_minutes_ahead_refuses_no_window_and_delays_nothing(tmp_path, monkeypatch):
    """The API's clock 15 minutes ahead of the collector's, with content of the API's last minutes: every record
    arrives within a poll or two (none waits for the collector's clock to reach it), and no window is refused."""
    with O365Rig(tmp_path, "--blobs", "20", "--records-per-blob", "10", "--spread-hours", "0.2",
                 "--clock-offset-seconds", "900") as rig:
        config = rig.trigger_config(content_types=["Audit.Exchange", "Audit.General"])
        with InProcessTrigger(rig, config, monkeypatch):
            assert rig.wait_complete(60, expected=2 * 20 * 10), rig.comparison()
            expected = 2 * 20 * 10 + publish(rig, content_types=["Audit.Exchange", "Audit.General"])
            assert rig.wait_complete(30, expected=expected), rig.comparison()
        assert not rig.emulator.stats()["responses"].get("content_list 400")
        assert not messages(rig, "refused")
        assert rig.comparison()["duplicates"] == 0


def test_a_resume_point_in_the_apis_future_is_said_once_and_listing_starts_again_behind_the_apis_now(
    tmp_path, monkeypatch
):
    """The state says everything up to two hours from now was listed (the collector's clock, or its state, went back
    in time): content of the last hour would never be listed. One warning names both times, and the content the
    trailing re-list window covers arrives."""
    ahead = time.time() + 7200
    write_checkpoint(tmp_path, {"Audit.Exchange": ahead, "Audit.General": ahead})
    with O365Rig(tmp_path, "--blobs", "4", "--records-per-blob", "5", "--spread-hours", "0.5") as rig:
        config = rig.trigger_config(content_types=["Audit.Exchange", "Audit.General"])
        with InProcessTrigger(rig, config, monkeypatch):
            assert rig.wait_complete(60, expected=2 * 4 * 5), rig.comparison()
            expected = 2 * 4 * 5 + publish(rig, content_types=["Audit.Exchange", "Audit.General"])
            assert rig.wait_complete(30, expected=expected), rig.comparison()
        warnings = messages(rig, "ahead of the Management API's clock")
        assert len(warnings) == 1, warnings
        assert "Audit.Exchange" in warnings[0] and "Audit.General" in warnings[0]
        assert time.strftime("%Y-%m-%dT%H", time.gmtime(ahead)) in warnings[0]  # the resume point
        assert time.strftime("%Y-%m-%dT%H", time.gmtime()) in warnings[0]  # the API's now
        checkpoint = orjson.loads((tmp_path / "data" / "state" / "office365_management_api"
                                   / "office365-checkpoint.json").read_bytes())
        assert all(resume < time.time() for resume in checkpoint["resume"].values())
        assert rig.comparison()["duplicates"] == 0


# -- one bad answer, and URLs naming another host ----------------------------------------------------------------------


def test_a_listing_page_that_is_not_json_is_retried_and_ends_nothing(tmp_path, monkeypatch):
    """Listing pages answered 200 with a gateway's HTML page (issue 17): each is a transient error of its content
    type, retried with a backoff; the run goes on (no restart of the other content types), everything arrives."""
    with O365Rig(tmp_path, "--blobs", "2", "--records-per-blob", "5", "--html-answers", "1") as rig:
        config = rig.trigger_config(content_types=["Audit.Exchange", "Audit.General"])
        with InProcessTrigger(rig, config, monkeypatch):
            assert rig.wait_complete(60, expected=2 * 2 * 5), rig.comparison()  # the subscription list was HTML
            rig.emulator.control(html_answers=3)
            expected = 2 * 2 * 5 + publish(rig, content_types=["Audit.Exchange", "Audit.General"])
            assert rig.wait_complete(60, expected=expected), rig.comparison()
            assert rig.emulator.control()["config"]["html_answers"] == 0
        assert rig.emulator.stats()["faults"]["html"] == 1 + 3
        assert not messages(rig, "Collection failed")
        assert rig.comparison()["duplicates"] == 0


def test_urls_naming_another_host_get_no_token(tmp_path, monkeypatch):
    """contentUri and NextPageUri name ``localhost`` (the same emulator, under another name): no request carries the
    token there. The blobs are skipped and counted, each kind of refusal is said, nothing is sent twice."""
    with O365Rig(tmp_path, "--blobs", "2", "--records-per-blob", "5") as rig:
        port = rig.info["port"]
        rig.emulator.control(content_uri_host=f"localhost:{port}")
        config = rig.trigger_config(content_types=EXCHANGE)
        with InProcessTrigger(rig, config, monkeypatch):
            assert wait_until(lambda: gauge_values(metrics.skipped_blobs).get("Audit.Exchange", 0) >= 2, 60)
            assert wait_until(lambda: messages(rig, "names a host other than the Management API's"), 20)
            rig.emulator.control(next_page_host=f"localhost:{port}", page_size=1)
            listed = rig.listing_pages()
            publish(rig, count=2, records=3)
            assert wait_until(lambda: rig.listing_pages() >= listed + 5, 30)  # pages naming the next one elsewhere
        assert rig.emulator.stats()["requests"].get("blob", 0) == 0
        assert rig.delivered_count() == 0
        skipped = messages(rig, "Skipped blob")
        assert len(skipped) == 1, skipped  # once, not per blob
        refused = messages(rig, "naming another host")
        assert len(refused) == 1 and f"(https://localhost:{port})" in refused[0], refused  # once for the host
        assert not messages(rig, "Listing Audit.Exchange was refused")


def test_a_stall_no_step_ends_restarts_the_run_then_reports_the_trigger_unhealthy_until_it_moves(tmp_path, monkeypatch):
    """The Management API's address answers nothing any more (open connections silent, new ones reset): listing
    stops moving. The watch warns once, replaces the connections, then the token client, then restarts the run;
    after that the trigger says it is unhealthy (an orchestrator restarts it). Once the API answers again it
    collects and is healthy again, having lost nothing."""
    monkeypatch.setattr("office365.watch.LISTING_SLACK", 2.0)  # listing counts as behind after 3 s, not 31 s
    with O365Rig(tmp_path, "--blobs", "2", "--records-per-blob", "5") as rig, \
            FaultProxy("127.0.0.1", rig.info["port"]) as api:
        config = rig.trigger_config(content_types=EXCHANGE, management_url=f"https://{api.address}", stall_seconds=5)
        with InProcessTrigger(rig, config, monkeypatch) as running:
            assert rig.wait_complete(60, expected=10), rig.comparison()
            api.refuse(True)
            api.freeze()
            assert wait_until(lambda: not running.trigger.is_alive(), 90)
            assert wait_until(lambda: messages(rig, "still makes no progress"), 20)  # the log pump's lines trail
            said = [message for message in messages(rig, "Audit.Exchange") if "progress" in message]
            assert [step in " ".join(said) for step in ("replacing its connections", "rebuilding its Microsoft Entra",
                                                        "restarting the collection run")] == [True] * 3, said
            assert messages(rig, "Collection failed (StalledRun)")
            api.refuse(False)
            expected = 10 + publish(rig)
            assert rig.wait_complete(60, expected=expected), rig.comparison()
            assert wait_until(running.trigger.is_alive, 30)
        assert rig.comparison()["duplicates"] == 0
