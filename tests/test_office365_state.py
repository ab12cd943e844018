"""Resume points, the ledger of delivered blobs and the record filter: what survives a restart, and how."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from connectors.errors import CorruptStateError
from emulators.process import eventually
from office365.listing import ContentRef
from office365.state import CollectorState, Delivered, RecordFilter, record_hash
from tests.support.held_calls import FirstCallHeld

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
TYPES = ["Audit.Exchange", "DLP.All"]


def ref(
    content_id: str, created: datetime, content_type: str = "Audit.Exchange", expires_in=timedelta(days=7)
) -> ContentRef:
    return ContentRef(
        content_type,
        content_id,
        f"https://x/audit/{content_id}",
        created.timestamp(),
        (created + expires_in).timestamp(),
    )


def state_at(directory, now=NOW, lookback=timedelta(hours=168), capacity=1000) -> CollectorState:
    return CollectorState(directory, TYPES, initial_lookback=lookback, filter_capacity=capacity, now=now)


def test_record_filter_forgets_the_oldest_beyond_its_capacity():
    seen = RecordFilter(3)
    assert [seen.add(key) for key in (1, 2, 1, 3)] == [True, True, False, True]
    seen.add(4)
    assert 1 not in seen and {2, 3, 4} <= set(seen._seen)
    records, keys = seen.admit([b"a", b"b", b"c", b"c"], [4, 5, 6, 6])
    assert records == [b"b", b"c"] and keys == [5, 6]
    assert len(seen) == 3
    off = RecordFilter(0)
    assert off.admit([b"a", b"a"], [1, 1]) == ([b"a", b"a"], [1, 1])


def test_record_hash_is_stable_and_content_based():
    one = orjson.dumps({"Id": "same", "Operation": "DlpRuleMatch"})
    other = orjson.dumps({"Id": "same", "Operation": "DlpRuleUndo"})
    assert record_hash(one) == record_hash(bytes(one)) != record_hash(other)
    assert 0 <= record_hash(one) < 2**63


def test_first_start_resumes_from_the_initial_lookback(tmp_path):
    state = state_at(tmp_path, lookback=timedelta(hours=2))
    assert state.resume_point("Audit.Exchange") == NOW - timedelta(hours=2)
    assert not state.owes_from_resume("Audit.Exchange")


def test_resume_point_waits_for_the_oldest_pending_blob(tmp_path):
    state = state_at(tmp_path, lookback=timedelta(hours=3))
    older, newer = ref("c$1", NOW - timedelta(hours=2)), ref("c$2", NOW - timedelta(hours=1))
    assert state.track(older) and state.track(newer)
    assert not state.track(older)  # already on its way
    state.listed("Audit.Exchange", NOW)
    assert state.resume_point("Audit.Exchange") == NOW - timedelta(hours=2)
    assert state.pending("Audit.Exchange") == (2, older.created)
    state.commit([Delivered(newer, hashes=[1], records=1)])
    assert state.resume_point("Audit.Exchange") == NOW - timedelta(hours=2)  # the older one is not delivered
    state.commit([Delivered(older, hashes=[2], records=1)])
    assert state.resume_point("Audit.Exchange") == NOW
    assert state.pending("Audit.Exchange") == (0, None)
    assert state.is_known("Audit.Exchange", "c$1") and not state.track(older)  # delivered: skipped on re-list
    # DLP.All moves on its own.
    assert state.resume_point("DLP.All") == NOW - timedelta(hours=3)


def test_restart_resumes_exactly_and_remembers_delivered_blobs_and_records(tmp_path):
    state = state_at(tmp_path)
    delivered, pending = ref("c$1", NOW - timedelta(hours=5)), ref("c$2", NOW - timedelta(hours=4))
    state.track(delivered)
    state.track(pending)
    state.listed("Audit.Exchange", NOW)
    state.commit([Delivered(delivered, hashes=[11, 12], records=2)])
    state.close()

    again = state_at(tmp_path, now=NOW + timedelta(minutes=10))
    assert again.owes_from_resume("Audit.Exchange")
    assert again.resume_point("Audit.Exchange") == NOW - timedelta(hours=4)  # the undelivered blob
    assert again.is_known("Audit.Exchange", "c$1")
    assert not again.is_known("Audit.Exchange", "c$2")  # listed again, fetched again
    assert 11 in again.filter and 12 in again.filter


async def test_a_crash_before_the_checkpoint_only_moves_the_resume_point_back(tmp_path, monkeypatch):
    monkeypatch.setattr("office365.state.SAVE_INTERVAL", 3600.0)  # however slow the machine: the checkpoint is not due
    state = state_at(tmp_path)
    blob = ref("c$1", NOW - timedelta(hours=1))
    state.track(blob)
    state.listed("Audit.Exchange", NOW)
    state.save(force=True)
    saved = (tmp_path / "office365-checkpoint.json").read_bytes()
    state.commit([Delivered(blob, hashes=[5], records=1)])  # an acknowledgement: in memory
    state.persist_soon()  # its write, off the loop
    await state.persist()  # (after the one just queued)
    assert (tmp_path / "office365-checkpoint.json").read_bytes() == saved  # the checkpoint lags (1/s)
    state._instance.release()  # the process dies: the kernel drops its lock
    again = state_at(tmp_path)
    assert again.is_known("Audit.Exchange", "c$1")  # the ledger was written: a re-list skips it, no duplicate
    assert again.resume_point("Audit.Exchange") == NOW - timedelta(hours=1)  # moved back, not past anything


async def test_commits_made_while_a_write_runs_join_the_next_one_in_order(tmp_path):
    state = state_at(tmp_path)
    blobs = [ref(f"c${index}", NOW - timedelta(minutes=50 - index)) for index in range(6)]
    for index, blob in enumerate(blobs):
        state.track(blob)
        state.commit([Delivered(blob, hashes=[index], records=1)])
        state.persist_soon()
        await asyncio.sleep(0)  # the write may be in its thread now
    await state.persist()
    lines = (tmp_path / "office365-ledger.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["c"] for line in lines] == [blob.content_id for blob in blobs]
    state.close()


async def test_a_write_cancelled_midway_keeps_the_next_one_waiting_until_its_thread_returned(tmp_path):
    """The monitor is cancelled at every stop, possibly while its write runs in a thread that a cancel cannot stop;
    the last acknowledgements then write too. The second write waits for the first thread: never two writers on
    the same files (a shared temporary file, a journal handle closed under an append)."""
    state = state_at(tmp_path)
    state._write = writers = FirstCallHeld(state._write)
    first, second = ref("c$1", NOW - timedelta(hours=2)), ref("c$2", NOW - timedelta(hours=1))
    state.track(first)
    state.track(second)
    state.listed("Audit.Exchange", NOW)
    state.commit([Delivered(first, hashes=[1], records=1)])
    monitor = asyncio.create_task(state.persist(force=True))
    try:
        assert await eventually(lambda: writers.calls == 1, 10, 0.01)
        monitor.cancel()  # the stop, while the thread writes
        state.commit([Delivered(second, hashes=[2], records=1)])  # the last acknowledgement
        state.persist_soon()
        # A second writer would start as soon as the cancelled one let the lock go: give it every chance to.
        await eventually(lambda: writers.calls > 1 or monitor.done(), 1.0, 0.01)
        assert writers.calls == 1 and not monitor.done()  # the cancelled write still holds the lock
    finally:
        writers.release()
    with pytest.raises(asyncio.CancelledError):
        await monitor  # the cancel is raised, once the thread returned
    assert await eventually(lambda: state._persisting is None, 10, 0.01)
    await state.persist(force=True)
    assert writers.most == 1 and writers.calls >= 2
    checkpoint = orjson.loads((tmp_path / "office365-checkpoint.json").read_bytes())
    assert checkpoint["resume"]["Audit.Exchange"] == NOW.timestamp()
    lines = (tmp_path / "office365-ledger.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["c"] for line in lines] == ["c$1", "c$2"]  # each once: the first write counted
    assert not list(tmp_path.glob(".*.tmp"))
    state.close()
    again = state_at(tmp_path)
    assert again.is_known("Audit.Exchange", "c$1") and again.is_known("Audit.Exchange", "c$2")
    assert again.resume_point("Audit.Exchange") == NOW
    again.close()


def test_skip_to_gives_up_content_past_the_retention(tmp_path):
    state = state_at(tmp_path)
    old = ref("c$old", NOW - timedelta(days=7, hours=1))
    state.track(old)
    state.skip_to("Audit.Exchange", NOW - timedelta(days=7) + timedelta(minutes=10))
    assert state.pending("Audit.Exchange") == (0, None)
    assert state.resume_point("Audit.Exchange") == NOW - timedelta(days=7) + timedelta(minutes=10)


def test_expired_ledger_entries_are_dropped_at_start(tmp_path):
    state = state_at(tmp_path)
    short = ref("c$1", NOW - timedelta(days=6), expires_in=timedelta(days=6, hours=1))
    state.track(short)
    state.commit([Delivered(short, hashes=[1], records=1)])
    state.close()
    later = NOW + timedelta(hours=3)  # past expiry and the ledger's grace hour
    again = state_at(tmp_path, now=later)
    assert not again.is_known("Audit.Exchange", "c$1")
    assert again.ledger_size == 0
    assert (tmp_path / "office365-ledger.jsonl").read_bytes() == b""


def test_filter_is_rebuilt_with_the_most_recent_hashes(tmp_path):
    state = state_at(tmp_path)
    for index in range(10):
        blob = ref(f"c${index}", NOW - timedelta(minutes=60 - index))
        state.track(blob)
        state.commit([Delivered(blob, hashes=[index * 10 + 1, index * 10 + 2], records=2)])
    state.close()
    again = state_at(tmp_path, capacity=4)
    assert len(again.filter) == 4
    assert 92 in again.filter and 1 not in again.filter


@pytest.mark.parametrize(
    "name, content",
    [
        ("office365-checkpoint.json", b"{not json"),
        ("office365-checkpoint.json", b'{"resume": {"Audit.Exchange": "yesterday"}}'),
        ("office365-ledger.jsonl", b'{"c": "x", "x": 1}\n{garbage\n{"c": "y", "x": 2}\n'),
        ("office365-ledger.jsonl", b'{"no": "id"}\n'),
    ],
)
def test_corrupt_state_is_never_silently_reset(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CorruptStateError):
        state_at(tmp_path)


def test_a_torn_last_ledger_line_is_ignored(tmp_path):
    expires = int((NOW + timedelta(days=1)).timestamp())
    (tmp_path / "office365-ledger.jsonl").write_bytes(
        orjson.dumps({"c": "c$1", "x": expires, "h": [7]}) + b'\n{"c": "c$2", "x'
    )
    state = state_at(tmp_path)
    assert state.is_known("Audit.Exchange", "c$1") and not state.is_known("Audit.Exchange", "c$2")


def test_checkpoint_saves_are_rate_limited_but_forced_at_stop(tmp_path, monkeypatch):
    monkeypatch.setattr("office365.state.SAVE_INTERVAL", 3600.0)  # "within the interval" whatever the machine's load
    state = state_at(tmp_path)
    state.listed("Audit.Exchange", NOW)
    state.save(force=True)
    first = (tmp_path / "office365-checkpoint.json").read_bytes()
    state.listed("Audit.Exchange", NOW + timedelta(minutes=1))
    state.save()  # within a second of the last save
    assert (tmp_path / "office365-checkpoint.json").read_bytes() == first
    state.close()
    saved = orjson.loads((tmp_path / "office365-checkpoint.json").read_bytes())
    assert saved["resume"]["Audit.Exchange"] == (NOW + timedelta(minutes=1)).timestamp()


def test_ledger_is_compacted_when_mostly_expired(tmp_path, monkeypatch):
    import office365.state as module

    state = state_at(tmp_path, now=datetime.now(UTC))
    now = datetime.now(UTC)
    expired = [ref(f"old${i}", now - timedelta(days=7), expires_in=timedelta(hours=-2)) for i in range(1500)]
    state.commit([Delivered(item) for item in expired])
    fresh = ref("new$1", now)
    monkeypatch.setattr(module, "COMPACT_CHECK_INTERVAL", 0.0)
    state._last_compact_check = time.monotonic() - 1
    state.commit([Delivered(fresh)])
    state.save()
    lines = (tmp_path / "office365-ledger.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["c"] for line in lines] == ["new$1"]
    assert state.ledger_size == 1


def test_a_restart_before_any_listing_owes_only_what_the_api_still_keeps(tmp_path):
    state = state_at(tmp_path)  # initial lookback: the whole retention
    state.skip_to("Audit.Exchange", NOW - timedelta(days=7) + timedelta(minutes=2))
    state.close()  # a fault stopped the run before any window was listed
    again = state_at(tmp_path, now=NOW + timedelta(hours=1))
    assert not again.owes_from_resume("Audit.Exchange")  # no gap to report: nothing was promised yet
    again.listed("Audit.Exchange", NOW)
    again.close()
    third = state_at(tmp_path, now=NOW + timedelta(hours=2))
    assert third.owes_from_resume("Audit.Exchange") and not third.owes_from_resume("DLP.All")


def test_a_second_instance_on_the_same_state_is_refused_with_one_clear_message(tmp_path):
    from connectors.errors import ConfigurationError

    first = state_at(tmp_path)
    with pytest.raises(ConfigurationError) as refused:
        state_at(tmp_path)
    assert "another instance" in str(refused.value) and str(tmp_path) in str(refused.value)
    first.close()
    state_at(tmp_path).close()  # released at stop
