import time

import orjson
import pytest

from connectors.errors import CorruptStateError
from connectors.state import Journal, JournalBusy, StateFile, thread_to_its_end
from emulators.process import python_child, wait_until


def test_state_file_round_trip_and_default(tmp_path):
    state = StateFile(tmp_path / "a" / "checkpoint.json")
    assert state.load({"start": True}) == {"start": True}
    state.save({"offset": 42, "ids": ["x"]})
    assert StateFile(state.path).load() == {"offset": 42, "ids": ["x"]}
    assert not list(state.path.parent.glob(".*.tmp"))


async def test_thread_to_its_end_settles_then_returns_or_raises():
    settled: list[bool] = []
    assert await thread_to_its_end(lambda value: value * 2, 21, settle=settled.append) == 42

    def broken():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await thread_to_its_end(broken, settle=settled.append)
    assert settled == [True, False]  # settled before the error reached the caller


def test_two_saves_that_overlap_each_use_their_own_temporary_file(tmp_path, monkeypatch):
    """Both saves have written their temporary file before either renames it: with one shared name, the second
    would have truncated the first's data and its rename would find no file."""
    import os
    import stat
    import threading

    both_written = threading.Barrier(2, timeout=30)
    fsync = os.fsync

    def fsync_after_both_wrote(fd):
        fsync(fd)
        if stat.S_ISREG(os.fstat(fd).st_mode):  # the temporary file (not the directory)
            both_written.wait()

    monkeypatch.setattr(os, "fsync", fsync_after_both_wrote)
    state = StateFile(tmp_path / "checkpoint.json")
    values = [{"writer": 1, "pad": "x" * 5000}, {"writer": 2}]
    errors: list[BaseException] = []

    def save(value):
        try:
            state.save(value)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=save, args=(value,)) for value in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert state.load() in values  # whole, one or the other
    assert not list(tmp_path.glob(".*.tmp"))
    assert (state.path.stat().st_mode & 0o777) == 0o600


def test_a_failed_save_leaves_the_file_and_no_temporary_file(tmp_path, monkeypatch):
    import os

    state = StateFile(tmp_path / "checkpoint.json")
    state.save({"offset": 1})

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        state.save({"offset": 2})
    monkeypatch.undo()
    assert state.load() == {"offset": 1}
    assert not list(tmp_path.glob(".*.tmp"))


def test_corrupt_state_file_is_an_error_not_a_reset(tmp_path):
    path = tmp_path / "checkpoint.json"
    path.write_bytes(b'{"offset": 4')
    with pytest.raises(CorruptStateError) as raised:
        StateFile(path).load({"offset": 0})
    assert str(path) in str(raised.value) and "delete it" in str(raised.value)
    assert path.read_bytes() == b'{"offset": 4'  # left as found, for the operator


def test_journal_appends_replays_and_drops_a_torn_tail(tmp_path):
    journal = Journal(tmp_path / "ledger.jsonl")
    journal.append([{"id": 1}, {"id": 2}])
    journal.append([{"id": 3}])
    journal.close()
    with open(journal.path, "ab") as handle:
        handle.write(b'{"id": 4')  # an append cut by a crash
    replayed = Journal(journal.path)
    assert replayed.replay() == [{"id": 1}, {"id": 2}, {"id": 3}]
    replayed.append([{"id": 5}])
    assert Journal(journal.path).replay() == [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 5}]


def test_journal_corrupt_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b'{"id": 1}\nnot json\n{"id": 3}\n')
    with pytest.raises(CorruptStateError):
        Journal(path).replay()


def test_journal_rewrite_compacts(tmp_path):
    journal = Journal(tmp_path / "ledger.jsonl")
    journal.append([{"id": i} for i in range(10)])
    journal.rewrite([{"id": 9}])
    journal.append([{"id": 10}])
    assert Journal(journal.path).replay() == [{"id": 9}, {"id": 10}]


WRITER = """
import sys
from connectors.state import StateFile, Journal
state, journal = StateFile(sys.argv[1]), Journal(sys.argv[2])
journal.replay()  # repairs a torn tail left by the previous kill
i = state.load({"i": 0})["i"]
while True:
    i += 1
    state.save({"i": i, "pad": "x" * 5000})
    journal.append([{"i": i}])
"""


def test_state_survives_sigkill_at_random_moments(tmp_path):
    state_path, journal_path = tmp_path / "state.json", tmp_path / "journal.jsonl"
    for round_ in range(8):
        written = journal_path.stat().st_size if journal_path.exists() else 0
        writer = python_child("-c", WRITER, str(state_path), str(journal_path))
        # Killed while it writes: once it appended (its start-up takes a varying time), a varying moment later.
        assert wait_until(lambda: journal_path.exists() and journal_path.stat().st_size > written, 30)
        time.sleep(0.01 * round_)
        writer.kill()
        saved = StateFile(state_path).load()  # never torn: the old or the new version
        assert saved is not None and saved["pad"] == "x" * 5000
        entries = Journal(journal_path).replay()
        # State is saved before the journal append: the journal is at most one step behind, never ahead.
        numbers = [e["i"] for e in entries]
        assert numbers == sorted(set(numbers))
        assert saved["i"] - numbers[-1] in (0, 1)
    assert orjson.loads(state_path.read_bytes())["i"] > 8


def test_state_files_and_their_directories_are_private_whatever_the_umask(tmp_path):
    import os
    import stat

    from connectors.state import private_directory

    def mode(path):
        return stat.S_IMODE(os.stat(path).st_mode)

    previous = os.umask(0o022)  # a library user's usual umask: files 0644 unless we say otherwise
    try:
        state = StateFile(tmp_path / "state" / "trigger" / "checkpoint.json")
        state.save({"resume": 1})
        journal = Journal(tmp_path / "ledger" / "ledger.jsonl")
        journal.append([{"c": "blob"}])
        journal.rewrite([{"c": "blob"}])  # compaction: a new file replaces the old one
        journal.append([{"c": "other"}])
        old = tmp_path / "old" / "ledger.jsonl"  # written by an earlier version, world-readable
        old.parent.mkdir(mode=0o755)
        old.write_bytes(b'{"c": "x"}\n')
        old.chmod(0o644)
        Journal(old).append([{"c": "y"}])
        private_directory(old.parent)
        assert (mode(state.path), mode(state.path.parent)) == (0o600, 0o700)
        assert (mode(journal.path), mode(journal.path.parent)) == (0o600, 0o700)
        assert (mode(old), mode(old.parent)) == (0o600, 0o700)
        assert Journal(old).replay() == [{"c": "x"}, {"c": "y"}]
    finally:
        os.umask(previous)


def test_a_journal_write_left_running_keeps_the_journal_from_a_second_thread(tmp_path, monkeypatch):
    """The end of a run leaves a write stuck in its fsync (RunExecutor's bound); the trigger then closes its state
    from another thread: that write is not made alongside the stuck one on the same handle, and the handle is not
    closed under it. Once the stuck write returned, the journal works again."""
    import os
    import threading

    stuck, entered = threading.Event(), threading.Event()
    fsync = os.fsync

    def fsync_held_in_the_stuck_thread(fd):
        if threading.current_thread().name == "stuck-write":
            entered.set()
            assert stuck.wait(30)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_held_in_the_stuck_thread)
    journal = Journal(tmp_path / "ledger.jsonl")
    journal.busy_wait = 0.2
    writer = threading.Thread(target=journal.append, args=([{"n": 1}],), name="stuck-write")
    writer.start()
    try:
        assert entered.wait(30)
        with pytest.raises(JournalBusy):
            journal.append([{"n": 2}])  # the state's close, from the trigger's thread
        with pytest.raises(JournalBusy):
            journal.rewrite([{"n": 3}])
        journal.close()  # returns, leaving the handle to the stuck write
        assert journal._handle is not None
    finally:
        stuck.set()
        writer.join(30)
    journal.append([{"n": 4}])
    journal.close()
    assert Journal(tmp_path / "ledger.jsonl").replay() == [{"n": 1}, {"n": 4}]
