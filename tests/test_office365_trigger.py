"""The trigger in the test process (built as ``Module.run`` builds it) against the emulator and the runtime stub."""

from __future__ import annotations

from collections import Counter
import time

import pytest
from prometheus_client import REGISTRY

from connectors.trigger import CollectorTrigger
from emulators.process import wait_until
from office365.config import CONTENT_TYPES
from tests.o365_helpers import InProcessTrigger, O365Rig

pytestmark = pytest.mark.timeout(180)

PREFIX = "symphony_module_microsoft_o365_"


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(PREFIX + name, labels) or 0.0


def forwarded_by_type() -> dict[str, float]:
    return {ct: metric("records_forwarded_total", content_type=ct) for ct in CONTENT_TYPES}


def test_fixture_records_of_all_five_content_types_delivered_once_and_a_restart_adds_nothing(tmp_path, monkeypatch):
    with O365Rig(tmp_path) as rig:
        config = rig.trigger_config()
        before = forwarded_by_type()
        with InProcessTrigger(rig, config, monkeypatch) as running:
            assert rig.wait_complete(60), rig.comparison()
            assert wait_until(lambda: sum(forwarded_by_type().values()) - sum(before.values()) == 118, 10)
        comparison = rig.comparison()
        assert comparison["published"] == 118
        assert comparison["lost"] == 0 and comparison["duplicates"] == 0, comparison
        counts = rig.emulator.published(all=1, ids=0)["by_content_type"]
        after = forwarded_by_type()
        assert {ct: after[ct] - before[ct] for ct in CONTENT_TYPES} == counts
        assert all(counts[ct] > 0 for ct in CONTENT_TYPES)

        # Records as the API returned them: the same objects, one per line.
        delivered = rig.delivered_records()
        assert all(isinstance(record, dict) and "Id" in record for record in delivered)
        assert running.trigger.fatal_error is None
        state_files = {path.name for path in running.trigger.state_dir.iterdir()}
        assert {"office365-checkpoint.json", "office365-state.sqlite3"} <= state_files

        # Every call carried PublisherIdentifier (default: the tenant id), blob fetches included.
        publishers = rig.emulator.stats()["publishers"]
        assert set(publishers) == {config["tenant_id"]}

        # A restart lists again (the trailing re-list) and delivers nothing twice: checked once it listed every
        # content type twice over, then stopped (what it had handed over is delivered by then).
        pages, fetched = rig.listing_pages(), rig.emulator.stats()["responses"].get("blob 200")
        with InProcessTrigger(rig, config, monkeypatch):
            assert wait_until(lambda: rig.listing_pages() >= pages + 2 * len(CONTENT_TYPES), 60)
        assert rig.comparison()["duplicates"] == 0
        assert rig.emulator.stats()["responses"].get("blob 200") == fetched  # delivered blobs are not fetched again


def test_admin_disabled_subscription_oversize_records_and_short_lived_tokens(tmp_path, monkeypatch):
    args = (
        "--subscribed",
        "all",
        "--disabled-by-admin",
        "Audit.Exchange",
        "--oversize-records",
        "1",
        "--token-lifetime",
        "10",
    )
    with O365Rig(tmp_path, *args) as rig:
        config = rig.trigger_config(content_types=["Audit.Exchange", "Audit.General"])
        throttled_before = metric("throttled_responses_total")
        started = time.monotonic()
        with InProcessTrigger(rig, config, monkeypatch) as running:
            published = rig.emulator.published(all=1, contentType="Audit.Exchange,Audit.General")
            # One 300 KB record per content type is over the intake's limit: it arrives shortened.
            assert wait_until(lambda: rig.delivered_count() >= published["count"], 60), rig.delivered_count()
            # An administrator disables a subscription while the trigger runs: it is started again, and said.
            rig.emulator.control(disabled_by_admin=["Audit.Exchange"])
            assert wait_until(lambda: any("AF20023" in entry["message"] for entry in rig.logs()), 20)
            # Two renewals more, at least one past the life of a token: each before its token expired.
            tokens = rig.emulator.stats()["requests"]["token"]
            assert wait_until(lambda: rig.emulator.stats()["requests"]["token"] >= tokens + 2, 30)
            originals = lambda: list(running.trigger.state_dir.glob("shortened-originals-*.jsonl"))  # noqa: E731
            assert wait_until(originals, 10)
        ran = time.monotonic() - started
        delivered = rig.delivered()
        kept = [line for path in originals() for line in path.read_bytes().splitlines()]
        assert len(kept) == 2  # kept whole, and sent shortened
        assert delivered == Counter(published["ids"])
        assert set(Counter(rig_id(line) for line in kept)) <= set(delivered)

        messages = [entry["message"] for entry in rig.logs()]
        assert any("was disabled; starting it" in message and "Audit.Exchange" in message for message in messages)
        assert any("disabled by an administrator" in message and "Audit.Exchange" in message for message in messages)
        assert any("over the intake limit" in message for message in messages)
        stats = rig.emulator.stats()
        # Tokens living 10 s over a run of several lives: renewed before they expire (at 80% of the 9 s sure to be
        # left, the stated life being whole seconds: 1.8 s to spare for a loaded client), not on every request.
        assert 2 <= stats["requests"]["token"] <= ran / 7.2 + 2, (stats["requests"], ran)
        # No request arrived with an expired token. The emulator judges a token when its request's bytes came in,
        # not after its own queueing (however loaded it is); renewing only after a 401 would meet one per renewal.
        assert stats["auth_failures"] == {}, stats["auth_failures"]
        assert metric("throttled_responses_total") == throttled_before


def rig_id(line: bytes) -> str:
    import orjson

    return orjson.loads(orjson.loads(line)["event"])["Id"]


def test_unknown_tenant_is_one_critical_configuration_error(tmp_path, monkeypatch):
    with O365Rig(tmp_path) as rig:
        config = rig.trigger_config(tenant_id="00000000-1111-2222-3333-444444444444")
        with InProcessTrigger(rig, config, monkeypatch) as running:
            assert wait_until(lambda: not running.trigger.running, 30)
        assert "tenant_id" in (CollectorTrigger.fatal_error or "")
        assert wait_until(lambda: any(entry["level"] == "critical" for entry in rig.logs()), 10)
        critical = [entry for entry in rig.logs() if entry["level"] == "critical"]
        assert len(critical) == 1 and "`tenant_id`" in critical[0]["message"]
        assert rig.delivered_count() == 0
        CollectorTrigger.fatal_error = None
