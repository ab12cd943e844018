"""What the collection does when its own parts fail or its view of the API's clock is off, against the real HTTPS
emulator: the API's clock learnt from quick answers only, a window refused as too old costs only its unreachable
minutes (and says so), a failing forwarder or blob never stalls the processing task, a dead task fails the run."""

from __future__ import annotations

import asyncio
import time

import pytest

from connectors.metrics import gauge_values
from emulators.process import eventually, wait_until
from office365 import metrics
from office365.listing import RETENTION
from tests.o365_fixtures import o365_emulator_factory  # noqa: F401
from tests.o365_helpers import GAP_WORDS, InProcessTrigger, O365Rig, first_blob, run_with_client, write_checkpoint

pytestmark = pytest.mark.timeout(240)


def messages(rig: O365Rig, words: str) -> list[str]:
    return [str(entry.get("message")) for entry in rig.logs() if words in str(entry.get("message"))]


# -- the API's clock -------------------------------------------------------------------------------------------


def test_the_apis_clock_is_read_when_the_headers_arrive_not_after_a_slow_body(o365_emulator_factory):  # noqa: F811
    emulator, info = o365_emulator_factory(blobs=1, records_per_blob=300, subscribed=["Audit.Exchange"],
                                           clock_offset_seconds=3600.0)
    size = len(emulator.store.body(emulator.store.blobs["Audit.Exchange"][0]))

    async def body(client):
        ref = await first_blob(client)
        emulator.control(blob_bytes_per_second=size / 4)  # four seconds for the body after its headers
        started = time.monotonic()
        await client.get(client.given_url(ref.uri), "blob")
        return time.monotonic() - started, client.clock_offset

    took, learned = run_with_client(info, body)
    assert took >= 3.0  # the body did come slowly
    assert abs(learned - 3600.0) < 1.5  # read after the body, the offset was off by the transfer time


def test_a_date_header_that_came_slowly_does_not_move_the_clock(o365_emulator_factory):  # noqa: F811
    emulator, info = o365_emulator_factory(blobs=0, subscribed=["Audit.Exchange"], clock_offset_seconds=3600.0)

    async def body(client):
        url = client.operation_url("subscriptions/list")
        await client.get(url, "subscription")
        quick = client.clock_offset
        # Headers two seconds late, on a clock a minute further ahead: not a sample the offset can rest on.
        emulator.control(latency_ms=2000, clock_offset_seconds=3660.0)
        await client.get(url, "subscription")
        slow = client.clock_offset
        emulator.control(latency_ms=0)
        await client.get(url, "subscription")
        return quick, slow, client.clock_offset

    quick, slow, again = run_with_client(info, body)
    assert abs(quick - 3600.0) < 1.5
    assert slow == quick
    assert abs(again - 3660.0) < 1.5  # the next quick answer brings the change


# -- a window refused as too old --------------------------------------------------------------------------------


def test_a_window_refused_as_too_old_loses_only_its_unreachable_minutes_and_reports_them(tmp_path, monkeypatch):
    """The API's clock jumps 90 minutes ahead right after the subscriptions started: the poller's first window,
    built on the clock it knew, starts before what the API accepts (7 days, and an hour of tolerance, in the
    emulator). A blob created two hours after that start is still within the retention: it is delivered (halving
    the refused window would have skipped twelve hours), and the unreachable minutes before it are reported."""
    from office365.subscriptions import Subscriptions

    resume = time.time() - RETENTION.total_seconds() + 600  # owed, listable on the clock the trigger starts with
    write_checkpoint(tmp_path, {"Audit.Exchange": resume})
    with O365Rig(tmp_path, "--blobs", "1", "--records-per-blob", "2") as rig:
        reachable = rig.emulator.control(
            publish_late={"seconds_late": RETENTION.total_seconds() - 600 - 7200, "records": 3,
                          "content_types": ["Audit.Exchange"]}
        )["applied"]["publish_late"]
        ensure = Subscriptions.ensure

        async def ensure_then_jump(self, content_types):
            denied = await ensure(self, content_types)
            await asyncio.to_thread(rig.emulator.control, clock_offset_seconds=5400.0)
            return denied

        monkeypatch.setattr(Subscriptions, "ensure", ensure_then_jump)
        with InProcessTrigger(rig, rig.trigger_config(content_types=["Audit.Exchange"]), monkeypatch):
            assert rig.wait_complete(90, expected=2 + 3), rig.comparison()
            assert wait_until(lambda: messages(rig, GAP_WORDS), 30), "\n".join(str(e) for e in rig.logs())
        late = [blob for blob in rig.emulator.blobs("Audit.Exchange", ids=1) if blob["contentId"] in reachable]
        assert len(late) == 1 and all(rig.delivered()[i] == 1 for i in late[0]["ids"])
        refusals = messages(rig, "refused the listing window")
        assert len(refusals) == 1
        gaps = messages(rig, GAP_WORDS)
        assert len(gaps) == 1 and "Audit.Exchange" in gaps[0] and "refused" in gaps[0]
        assert rig.comparison()["duplicates"] == 0


# -- the processing task -----------------------------------------------------------------------------------------


def test_a_forwarder_failing_for_a_while_does_not_stop_the_processing(tmp_path, monkeypatch):
    """The forwarder raises OSError (a set-aside file on a full disk) when handed a blob's records and its
    acknowledgement: the blob is fetched again, every record still arrives once, and the failure is logged."""
    from connectors.delivery import Forwarder

    failures = {"add": 2}
    add = Forwarder.add

    async def failing_add(self, events, ack=None, origin=""):
        if ack is not None and events and failures["add"] > 0:
            failures["add"] -= 1
            raise OSError(28, "No space left on device")
        return await add(self, events, ack=ack, origin=origin)

    monkeypatch.setattr(Forwarder, "add", failing_add)
    monkeypatch.setattr("office365.processor.RETRY_BASE", 0.1)
    with O365Rig(tmp_path, "--blobs", "4", "--records-per-blob", "5") as rig:
        with InProcessTrigger(rig, rig.trigger_config(content_types=["Audit.Exchange"]), monkeypatch):
            assert rig.wait_complete(60, expected=4 * 5), rig.comparison()
            assert failures == {"add": 0}
            # The acknowledgements went through in the end: every blob committed, the resume point free to move.
            assert wait_until(lambda: gauge_values(metrics.pending_blobs).get("Audit.Exchange") == 0, 20)
            assert wait_until(lambda: messages(rig, "No space left on device"), 10), rig.logs()
        assert rig.comparison()["duplicates"] == 0


def test_a_dead_processing_task_fails_the_run_which_is_restarted(tmp_path, monkeypatch):
    from office365.processor import Processor

    deaths = {"left": 1}
    run = Processor.run

    async def dying_run(self):
        if deaths["left"] > 0:
            deaths["left"] -= 1
            raise MemoryError("a bug in the processing loop")
        return await run(self)

    monkeypatch.setattr(Processor, "run", dying_run)
    with O365Rig(tmp_path, "--blobs", "3", "--records-per-blob", "4") as rig:
        with InProcessTrigger(rig, rig.trigger_config(content_types=["Audit.Exchange"]), monkeypatch):
            assert rig.wait_complete(90, expected=3 * 4), rig.comparison()
        assert messages(rig, "Collection failed (MemoryError); restarting")
        assert rig.comparison()["duplicates"] == 0


def test_a_processing_task_dying_mid_run_fails_the_run_which_is_restarted_and_loses_nothing(tmp_path, monkeypatch):
    """It dies after some blobs were delivered and committed, with one taken and not processed: the run fails, the
    trigger restarts it, what was committed is not fetched again and the rest is delivered, each record once."""
    from office365.processor import Processor

    take = Processor._take
    taken: dict[Processor, list[str]] = {}  # content ids taken by each run's processing task, in run order
    death: dict[str, int] = {}

    async def dying_take(self, item):
        ids = taken.setdefault(self, [])
        if not death and len(ids) == 3:  # the fourth blob of the first run
            # Dies once the runtime confirmed some blobs, as a bug could at any moment.
            assert await eventually(lambda: self.state.ledger_size >= 2, 60), "no blob was committed"
            death["committed"] = self.state.ledger_size
            raise MemoryError("a bug in the processing loop")
        ids.append(item.ref.content_id)
        return await take(self, item)

    monkeypatch.setattr(Processor, "_take", dying_take)
    with O365Rig(tmp_path, "--blobs", "8", "--records-per-blob", "4") as rig:
        with InProcessTrigger(rig, rig.trigger_config(content_types=["Audit.Exchange"]), monkeypatch):
            assert rig.wait_complete(90, expected=8 * 4), rig.comparison()
        assert death["committed"] >= 2 and len(taken) >= 2, taken
        assert messages(rig, "Collection failed (MemoryError); restarting")
        runs = list(taken.values())
        first_run, later = set(runs[0]), {content_id for run in runs[1:] for content_id in run}
        assert len(first_run) == 3 and len(first_run - later) >= death["committed"]  # committed: not taken again
        published = [i for blob in rig.emulator.blobs("Audit.Exchange", ids=1) for i in blob["ids"]]
        delivered = rig.delivered()
        assert len(published) == 8 * 4 and all(delivered[i] == 1 for i in published), rig.comparison()
        assert rig.comparison()["duplicates"] == 0


def test_a_blob_whose_processing_fails_is_fetched_again_and_delivered(tmp_path, monkeypatch):
    """Its first processing fails: without a retry it would stay pending (and pin the resume point) until a
    restart. It is fetched again after a delay and delivered in the same run; the resume point moves past it."""
    import office365.processor as module

    parse = module.parse_blob
    failed: list[bytes] = []

    def parse_failing_once(data: bytes, exact: bool = True):
        if not failed:
            failed.append(data)
            raise ValueError("a body this parser version cannot read")
        return parse(data, exact)

    monkeypatch.setattr(module, "parse_blob", parse_failing_once)
    monkeypatch.setattr(module, "RETRY_BASE", 0.5)
    with O365Rig(tmp_path, "--blobs", "3", "--records-per-blob", "4") as rig:
        with InProcessTrigger(rig, rig.trigger_config(content_types=["Audit.Exchange"]), monkeypatch):
            assert rig.wait_complete(60, expected=3 * 4), rig.comparison()
            assert messages(rig, "fetching it again in")
        assert failed and rig.comparison()["duplicates"] == 0


# -- start-up steps unless stopping -------------------------------------------------------------------------------


def test_a_start_up_step_ends_with_its_caller_cancelled_stopped_or_done():
    """``unless_stopping`` (the pipeline's token and subscription steps): the step never outlives its caller."""
    from connectors.stopping import Stopping, unless_stopping

    async def main():
        ended: list[str] = []

        async def step(name: str, seconds: float) -> str:
            try:
                await asyncio.sleep(seconds)
                return name
            finally:
                ended.append(name)

        stopping = asyncio.Event()
        assert await unless_stopping(step("quick", 0), stopping) == "quick"
        caller = asyncio.create_task(unless_stopping(step("cancelled", 60), stopping))
        await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert ended == ["quick", "cancelled"]  # ended with its caller, not left running
        stopped = asyncio.create_task(unless_stopping(step("stopped", 60), stopping))
        await asyncio.sleep(0)
        stopping.set()
        with pytest.raises(Stopping):
            await stopped
        return ended

    assert asyncio.run(main()) == ["quick", "cancelled", "stopped"]
