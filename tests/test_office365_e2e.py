"""The trigger as the container runs it, ``python main.py office365_management_api``, against the emulator and
the runtime stub: every published record delivered once, whatever the API does."""

from __future__ import annotations

from pathlib import Path
from urllib.request import urlopen

import orjson
import pytest

from connectors.delivery import STOP_GRACE_SECONDS
from emulators import fixtures
from emulators.process import wait_until
from emulators.runtime.harness import complete_lines
from tests.o365_helpers import O365Rig

pytestmark = pytest.mark.timeout(240)



def skipped_total(metrics: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("symphony_module_microsoft_o365_skipped_blobs_total"))

def scrape(port: str) -> str:
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def no_secret_anywhere(rig: O365Rig, *secrets: str) -> None:
    texts = [path.read_text(errors="replace") for path in rig.workdir.glob("*.log")]
    texts.append(Path(rig.runtime.info["logs_out"]).read_text() if Path(rig.runtime.info["logs_out"]).exists() else "")
    for secret in secrets:
        assert all(secret not in text for text in texts)


def test_certificate_auth_and_paging_deliver_every_fixture_record_once(tmp_path):
    with O365Rig(tmp_path, "--page-size", "2", "--next-page-header", "NextPageUrl") as rig:
        config = rig.trigger_config(auth="certificate")
        env = rig.env(config)
        proc = rig.start_trigger(config)
        try:
            assert rig.wait_complete(90), rig.comparison()
            metrics = scrape(env["METRICS_PORT"])
        finally:
            assert rig.stop_trigger(proc) == 0
        comparison = rig.comparison()
        assert comparison["published"] == 118 and comparison["lost"] == 0 and comparison["duplicates"] == 0
        stats = rig.emulator.stats()
        # 118 records in 20 blobs of up to 7, listed 2 per page: at least 10 pages followed.
        assert stats["responses"]["content_list 200"] >= stats["responses"]["blob 200"] / 2 >= 10
        assert "symphony_module_microsoft_o365_records_forwarded_total" in metrics
        assert 'symphony_module_microsoft_o365_lag_seconds{content_type="DLP.All"}' in metrics
        no_secret_anywhere(rig, Path(rig.info["private_key_file"]).read_text().splitlines()[1])


def test_faults_duplicates_late_expired_vanished_and_malformed_blobs(tmp_path):
    args = (
        "--blobs",
        "16",
        "--records-per-blob",
        "10",
        "--page-size",
        "5",
        "--duplicate-rate",
        "0.3",
        "--fault-rate",
        "0.12",
        "--fault-kinds",
        "5xx,reset,timeout",
        "--hang-seconds",
        "20",
        "--late-blobs",
        "2",
        "--late-after",
        "6",
        "--expired-blobs",
        "1",
        "--vanished-blobs",
        "1",
        "--malformed-blobs",
        "4",
    )
    with O365Rig(tmp_path, *args) as rig:
        config = rig.trigger_config(relist_interval_minutes=0.05, request_timeout_seconds=2)
        env = rig.env(config)
        proc = rig.start_trigger(config)
        try:
            # The late blobs appear in windows the trigger already listed: complete means it found them too.
            assert wait_until(
                lambda: all(blob["visible"] for blob in rig.emulator.blobs() if blob["role"] == "late"), 30
            )
            assert rig.wait_complete(120), rig.comparison()
            # Bad blobs deliver nothing the ground truth counts: wait until each was seen (it logs them).
            malformed = [blob["contentId"] for blob in rig.emulator.blobs() if blob["state"] == "malformed"]
            trigger_log = tmp_path / "trigger.log"
            assert wait_until(lambda: all(cid in trigger_log.read_text() for cid in malformed), 60)
            # Re-lists (every 3 s) bring nothing twice: counted once two more went by.
            pages = rig.listing_pages()
            assert wait_until(lambda: rig.listing_pages() >= pages + 2 * 5, 60)
            # An expired or vanished blob is counted once its last fetch answered, which faults may delay.
            assert wait_until(lambda: skipped_total(scrape(env["METRICS_PORT"])) >= 10, 60)
            metrics = scrape(env["METRICS_PORT"])
        finally:
            assert rig.stop_trigger(proc) == 0
        comparison = rig.comparison()
        assert comparison["lost"] == 0 and comparison["duplicates"] == 0, comparison
        repeated = sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("symphony_module_microsoft_o365_duplicate_records_total")
        )
        assert repeated > 0  # records repeated verbatim in later blobs were there, and forwarded once
        assert skipped_total(metrics) == 10  # 5 expired + 5 vanished, counted once each
        stats = rig.emulator.stats()
        assert sum(stats["faults"].values()) > 0
        blobs = rig.emulator.blobs()
        late = [blob for blob in blobs if blob["role"] == "late"]
        assert len(late) == 10 and all(blob["visible"] for blob in late)
        messages = [entry["message"] for entry in rig.logs()]
        assert len(malformed) == 20
        for content_id in malformed:  # each logged once, with its contentId
            assert sum(1 for message in messages if content_id in message and "unusable" in message) == 1
        assert any("expired (AF20051)" in message for message in messages)
        assert any("does not exist any more (AF20050)" in message for message in messages)
        assert "Traceback" not in (tmp_path / "trigger.log").read_text()


def test_throttled_answers_slow_the_trigger_down_and_it_finishes(tmp_path):
    with O365Rig(tmp_path, "--blobs", "64", "--records-per-blob", "1", "--quota-per-minute", "300") as rig:
        config = rig.trigger_config(poll_interval_seconds=30)
        env = rig.env(config)
        proc = rig.start_trigger(config)
        try:
            # The requests in flight when the quota ran out are throttled together; then it holds back (1 s, 2 s,
            # 4 s...) and probes, while the quota's window drains. A client retrying at once never pauses.
            assert wait_until(lambda: len(bursts(rig)) >= 3, 60), bursts(rig)
            # On the emulator's clock: after the first burst, each pause ends with a probe or two, not a storm.
            assert all(len(burst) <= 3 for burst in bursts(rig)[1:]), bursts(rig)
            metrics = scrape(env["METRICS_PORT"])
            assert "symphony_module_microsoft_o365_throttled_responses_total" in metrics
            pace = [
                line for line in metrics.splitlines() if line.startswith("symphony_module_microsoft_o365_quota_pace")
            ]
            assert 250 <= float(pace[0].split()[-1]) <= 300, pace  # under the quota it saw (0.95 x 300)
            # The quota's minute would end the wait anyway; lifting it keeps the test short. The trigger keeps
            # its pace (it does not know the quota went away): the 40-odd blobs left take about 10 s.
            rig.emulator.control(quota_per_minute=0)
            assert rig.wait_complete(60), rig.comparison()
        finally:
            assert rig.stop_trigger(proc) == 0
        comparison = rig.comparison()
        assert comparison["lost"] == 0 and comparison["duplicates"] == 0, comparison


def bursts(rig: O365Rig, pause: float = 0.5) -> list[list[float]]:
    """The emulator's throttled answers (seconds on its clock), grouped where the client paused ``pause`` or more."""
    groups: list[list[float]] = []
    for at in rig.emulator.stats()["throttled_at"]:
        if groups and at - groups[-1][-1] < pause:
            groups[-1].append(at)
        else:
            groups.append([at])
    return groups


def test_stop_and_kill_mid_backlog_lose_nothing(tmp_path):
    # 7,000 records: the stop comes after 2,000, the kill halfway through the rest; the last run delivers the rest.
    # Before each, the emulator holds every new request (HOLD_MS): the stop and the kill land mid-backlog however
    # fast the machine, and a stop that waited for its requests in flight would outlast its budget.
    with O365Rig(tmp_path, "--blobs", "28", "--records-per-blob", "50", "--latency-ms", "40") as rig:
        expected = sum(rig.published().values())
        config = rig.trigger_config(max_concurrency=3, batch_max_events=500)

        # SIGTERM: ends promptly (exit code 0 within the stop's budget, not killed after it: stop_trigger), with
        # requests still held: everything it handed over delivered and checkpointed.
        proc = rig.start_trigger(config, "trigger-1.log")
        assert wait_until(lambda: rig.delivered_count() > 2000, 60)
        rig.emulator.control(latency_ms=HOLD_MS)
        assert rig.stop_trigger(proc, STOP_BUDGET) == 0
        after_stop = rig.delivered_count()
        assert after_stop < expected and rig.comparison()["duplicates"] == 0

        # A restart resumes exactly: still no duplicate.
        rig.emulator.control(latency_ms=40)
        proc = rig.start_trigger(config, "trigger-2.log")
        assert wait_until(lambda: rig.delivered_count() > after_stop + (expected - after_stop) // 2, 60)
        assert rig.comparison()["duplicates"] == 0

        # SIGKILL at any moment loses nothing: what was not acknowledged is fetched again.
        rig.emulator.control(latency_ms=HOLD_MS)
        proc.kill()
        at_kill = rig.delivered_count()
        assert at_kill < expected  # the kill landed mid-backlog
        rig.emulator.control(latency_ms=40)
        pages = rig.listing_pages()
        proc = rig.start_trigger(config, "trigger-3.log")
        try:
            assert rig.wait_complete(120), rig.comparison()
            # What was in flight at the kill may complete the backlog before this run is up: stop it once it has
            # listed (past its start, its stop handler installed), not while it is still importing.
            assert wait_until(lambda: rig.listing_pages() > pages, 60)
        finally:
            assert rig.stop_trigger(proc) == 0
        comparison = rig.comparison()
        assert comparison["lost"] == 0, comparison
        assert comparison["delivered"] == expected + comparison["duplicates"]
        assert comparison["duplicates"] <= at_kill - after_stop  # at most what was in flight since the restart


# Longer than any wait of these tests: a request the emulator holds is never answered while they look.
HOLD_MS = 300_000
# A stop's budget: the delivery's grace and the process's exit, with room for a loaded machine.
STOP_BUDGET = STOP_GRACE_SECONDS + 20.0


def test_wrong_secret_is_one_clear_critical_log_and_exit_code_2(tmp_path):
    with O365Rig(tmp_path) as rig:
        secret = "Wrong~secret.value-4242424242"
        proc = rig.start_trigger(rig.trigger_config(client_secret=secret))
        try:
            assert proc.wait(60) == 2
        finally:
            rig.stop_trigger(proc)
        assert wait_until(lambda: any(entry["level"] == "critical" for entry in rig.logs()), 10)
        critical = [entry["message"] for entry in rig.logs() if entry["level"] == "critical"]
        assert len(critical) == 1, critical
        assert "`client_secret`" in critical[0] and "AADSTS7000215" in critical[0]
        assert "Traceback" not in (tmp_path / "trigger.log").read_text()
        assert rig.delivered_count() == 0
        no_secret_anywhere(rig, secret)


@pytest.mark.slow
def test_a_larger_backlog_with_faults_and_kills(tmp_path):
    """Longer: a backlog of 25,000 records, 5% faults, three SIGKILLs."""
    with O365Rig(
        tmp_path,
        "--blobs",
        "100",
        "--records-per-blob",
        "50",
        "--fault-rate",
        "0.05",
        "--fault-kinds",
        "5xx,reset",
        "--duplicate-rate",
        "0.1",
        "--latency-ms",
        "10",
    ) as rig:
        config = rig.trigger_config(max_concurrency=8)
        for round_ in range(3):
            proc = rig.start_trigger(config, f"trigger-{round_}.log")
            target = rig.delivered_count() + 4000
            assert wait_until(lambda: rig.delivered_count() > target, 90)
            proc.kill()
        proc = rig.start_trigger(config, "trigger-last.log")
        try:
            assert rig.wait_complete(180), rig.comparison()
        finally:
            rig.stop_trigger(proc)
        comparison = rig.comparison()
        assert comparison["lost"] == 0, comparison
        # What arrived is what the API served: its records only, each a recorded one with the Id and time the
        # emulator gave it (nothing added, nothing cut), and a record delivered twice the same bytes both times.
        delivered = [(orjson.loads(line), line) for line in complete_lines(rig.out)]
        assert {record["Id"] for record, _ in delivered} == set(rig.published())
        recorded = {shape(orjson.loads(line)) for line in fixtures.o365_lines()}
        assert all(shape(record) in recorded for record, _ in delivered)
        first: dict[str, bytes] = {}
        assert all(first.setdefault(record["Id"], line) == line for record, line in delivered)


def shape(record: dict) -> bytes:
    """A record without what the emulator makes up for each synthetic copy of a recorded one."""
    return orjson.dumps({k: v for k, v in record.items() if k not in ("Id", "CreationTime")},
                        option=orjson.OPT_SORT_KEYS)


def test_token_endpoint_down_at_start_then_back(tmp_path):
    with O365Rig(tmp_path, "--token-down", "503") as rig:
        proc = rig.start_trigger(rig.trigger_config())
        try:
            # Refused, tried again after a pause, and said: waiting for Entra, not dead.
            assert wait_until(lambda: rig.emulator.stats()["requests"].get("token", 0) >= 2, 60)
            assert wait_until(lambda: any("Microsoft Entra failed" in entry["message"] for entry in rig.logs()), 30)
            assert proc.poll() is None and rig.delivered_count() == 0
            rig.emulator.control(token_down="")
            assert rig.wait_complete(60), rig.comparison()
        finally:
            assert rig.stop_trigger(proc) == 0
        assert rig.comparison()["duplicates"] == 0
        messages = [entry["message"] for entry in rig.logs()]
        assert sum("Getting a token from Microsoft Entra failed" in message for message in messages) == 1
        assert sum("Microsoft Entra answered again" in message for message in messages) == 1
