"""Resume points, the ledger of delivered blobs and the record filter: what survives a restart, and how."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from connectors.errors import CorruptStateError
from emulators.process import eventually
from office365.ledger import FILE_NAME
from office365.listing import ContentRef
from office365.record_filter import RecordFilter, record_key
from office365.state import CollectorState, Delivered
from tests.support.held_calls import FirstCallHeld

STATE_1X = Path(__file__).parent / "support" / "office365_state_1x"

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


def records(*values: dict) -> list[bytes]:
    return [orjson.dumps(value) for value in values]


def stored(directory) -> tuple[list[tuple], list[int]]:
    """The ledger's rows and the filter keys, as the store holds them (oldest keys first)."""
    connection = sqlite3.connect(directory / FILE_NAME)
    try:
        rows = connection.execute("SELECT blob, expires, records FROM ledger").fetchall()
        chunks = connection.execute("SELECT keys FROM filter_keys ORDER BY chunk").fetchall()
    finally:
        connection.close()
    keys = [int.from_bytes(data[i : i + 8], "little") for (data,) in chunks for i in range(0, len(data), 8)]
    return rows, keys


def test_record_filter_forgets_the_oldest_beyond_its_capacity():
    seen = RecordFilter(3)
    one, two, three, four = records({"n": 1}, {"n": 2}, {"n": 3}, {"n": 4})
    assert seen.admit([one, two, one])[0] == [one, two]  # a repeat within the batch too
    assert seen.admit([three, four])[0] == [three, four]
    assert len(seen) == 3 and record_key(one) not in seen
    assert seen.admit([one, four])[0] == [one]
    off = RecordFilter(0)
    assert off.admit([one, one]) == ([one, one], [])


def test_forgotten_keys_never_evict_a_live_key_early():
    """A blob that failed is forgotten, fetched again and admitted again: the stale entry of its first admission
    leaves the order long before the live one, and must not take the live key with it."""
    seen = RecordFilter(4)
    failed = records({"Id": "a"})
    _, keys = seen.admit(failed)
    seen.forget(keys)
    assert seen.admit(records({"Id": "b"}, {"Id": "c"}))[0]
    assert seen.admit(failed)[0] == failed  # the retry: forwarded, remembered again
    seen.admit(records({"Id": "d"}))  # the stale entry comes out here
    assert keys[0] in seen
    assert seen.admit(failed)[0] == []  # a copy in a later blob is still a duplicate


def test_a_record_is_known_by_what_it_is_not_how_it_is_spelt():
    record = {"Id": "d5a0e7d9", "Operation": "DlpRuleMatch", "Parameters": [{"Name": "a", "Value": 1.5}], "n": 2**70}
    spelt = json.dumps(record, separators=(",", ":")).encode()
    reordered = b'{"n": 1180591620717411303424, "Parameters": [{"Value": 1.50, "Name": "a"}],\n "Operation": ' \
        b'"DlpRule\\u004datch", "Id": "d5a0e7d9"}'
    assert record_key(spelt) == record_key(reordered)
    for other in ({**record, "Operation": "DlpRuleUndo"}, {**record, "n": 2**70 + 1}, {**record, "Parameters": []}):
        assert record_key(json.dumps(other).encode()) != record_key(spelt)  # the same Id, other content
    lone = b'{"a": "\\ud800", "b": 1}'  # msgspec refuses it: the standard library canonicalizes it
    assert record_key(lone) == record_key(b'{"b":1,"a":"\\ud800"}') != record_key(b'{"b":1,"a":"\\ud801"}')
    assert 0 <= record_key(spelt) < 2**63


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
    state.commit([Delivered(newer, keys=[1], records=1)])
    assert state.resume_point("Audit.Exchange") == NOW - timedelta(hours=2)  # the older one is not delivered
    state.commit([Delivered(older, keys=[2], records=1)])
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
    state.commit([Delivered(delivered, keys=[11, 12], records=2)])
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
    state.commit([Delivered(blob, keys=[5], records=1)])  # an acknowledgement: in memory
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
        state.commit([Delivered(blob, keys=[index], records=1)])
        state.persist_soon()
        await asyncio.sleep(0)  # the write may be in its thread now
    await state.persist()
    rows, keys = stored(tmp_path)
    assert len(rows) == len(blobs) and keys == list(range(len(blobs)))  # every commit, in commit order
    state.close()
    again = state_at(tmp_path)
    assert all(again.is_known("Audit.Exchange", blob.content_id) for blob in blobs)


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
    state.commit([Delivered(first, keys=[1], records=1)])
    monitor = asyncio.create_task(state.persist(force=True))
    try:
        assert await eventually(lambda: writers.calls == 1, 10, 0.01)
        monitor.cancel()  # the stop, while the thread writes
        state.commit([Delivered(second, keys=[2], records=1)])  # the last acknowledgement
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
    rows, keys = stored(tmp_path)
    assert len(rows) == 2 and keys == [1, 2]  # each once: the first write counted
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
    state.commit([Delivered(short, keys=[1], records=1)])
    state.close()
    later = NOW + timedelta(hours=3)  # past expiry and the ledger's grace hour
    again = state_at(tmp_path, now=later)
    assert not again.is_known("Audit.Exchange", "c$1")
    assert again.ledger_size == 0
    again.close()
    assert stored(tmp_path)[0] == []


def test_filter_is_rebuilt_with_the_most_recent_hashes(tmp_path):
    state = state_at(tmp_path)
    for index in range(10):
        blob = ref(f"c${index}", NOW - timedelta(minutes=60 - index))
        state.track(blob)
        state.commit([Delivered(blob, keys=[index * 10 + 1, index * 10 + 2], records=2)])
    state.close()
    again = state_at(tmp_path, capacity=4)
    assert len(again.filter) == 4
    assert 92 in again.filter and 1 not in again.filter


def test_the_store_keeps_the_filter_s_keys_bounded_and_a_start_reads_only_those(tmp_path):
    state = state_at(tmp_path, capacity=100)
    for index in range(40):
        blob = ref(f"c${index}", NOW - timedelta(minutes=60 - index))
        state.track(blob)
        state.commit([Delivered(blob, keys=list(range(index * 30, index * 30 + 30)), records=30)])
        state.save()
    state.close()
    rows, keys = stored(tmp_path)
    assert len(rows) == 40  # the ledger: one row a blob, whatever its records
    assert 100 <= len(keys) < 100 + 30 and keys[-1] == 40 * 30 - 1  # the newest keys, the oldest chunks gone
    again = state_at(tmp_path, capacity=100)
    assert len(again.filter) == 100 and 40 * 30 - 100 in again.filter and 40 * 30 - 101 not in again.filter


def test_a_1x_state_is_migrated_at_first_start_and_nothing_is_sent_again(tmp_path):
    """The checkpoint and the journal ledger 1.x wrote: delivered blobs stay known, the filter's 1.x record
    hashes still stop their records, the resume point is kept; the journal goes."""
    shutil.copytree(STATE_1X, tmp_path, dirs_exist_ok=True)
    delivered = [orjson.loads(line) for line in (tmp_path / "records.jsonl").read_bytes().splitlines()]
    checkpoint = orjson.loads((tmp_path / "office365-checkpoint.json").read_bytes())
    state = state_at(tmp_path, now=NOW + timedelta(hours=3))  # the first blob expired meanwhile
    try:
        assert not (tmp_path / "office365-ledger.jsonl").exists()
        assert not state.is_known("Audit.Exchange", delivered[0]["content_id"])
        for blob in delivered[1:]:
            assert state.is_known("Audit.Exchange", blob["content_id"])
        assert not state.is_known("Audit.Exchange", "2026112599$pending")  # listed again, fetched again
        assert state.resume_point("Audit.Exchange").timestamp() == checkpoint["resume"]["Audit.Exchange"]
        assert not state.owes_from_resume("DLP.All") and state.owes_from_resume("Audit.Exchange")
        republished = [record.encode() for blob in delivered[1:] for record in blob["records"]]  # (live blobs)
        new = records({"Id": "new", "Operation": "Send"})
        assert state.filter.admit(republished + new)[0] == new  # 1.x keys: their records are not sent again
        assert state.ledger_size == len(delivered) - 1
        files = list(tmp_path.glob(f"{FILE_NAME}*"))  # the WAL too: audit data
        assert len(files) > 1 and {oct(path.stat().st_mode & 0o777) for path in files} == {oct(0o600)}
    finally:
        state.close()
    again = state_at(tmp_path, now=NOW + timedelta(hours=4))  # migrated once: the next start reads the store
    assert all(again.is_known("Audit.Exchange", blob["content_id"]) for blob in delivered[1:])
    assert again.filter.admit([delivered[1]["records"][0].encode()])[0] == []
    again.close()


@pytest.mark.parametrize(
    "name, content",
    [
        (FILE_NAME, b"SQLite format 2\x00 this is not a database" * 200),
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


def test_a_torn_last_line_of_a_1x_ledger_is_ignored(tmp_path):
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


def test_expired_ledger_rows_are_deleted_by_a_later_write(tmp_path, monkeypatch):
    import office365.state as module

    state = state_at(tmp_path, now=datetime.now(UTC))
    now = datetime.now(UTC)
    expired = [ref(f"old${i}", now - timedelta(days=7), expires_in=timedelta(hours=-2)) for i in range(1500)]
    state.commit([Delivered(item) for item in expired])
    state.save()
    assert state.ledger_size == 1500  # not due yet
    fresh = ref("new$1", now)
    monkeypatch.setattr(module, "EXPIRY_INTERVAL", 0.0)
    state.commit([Delivered(fresh)])
    state.save()
    assert state.ledger_size == 1 and state.is_known("Audit.Exchange", "new$1")
    state.close()
    assert len(stored(tmp_path)[0]) == 1


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
