"""From fetched blob bodies to forwarded records: one task on the trigger's event loop, a blob at a time.

Per record: the record's bytes as the blob holds them (cut out by ``connectors.codec``), its key for the record
filter, done (a few microseconds). A body only the codec's slow exact path reads, or a very large one, is cut in a
thread, and records are admitted a slice at a time, so the loop's other work never waits long behind one blob. A
body is let go once cut: its room goes back to the fetchers while its records wait for the delivery's. Each blob
is acknowledged with its records: the acknowledgement runs on the loop once the runtime confirmed them and
everything before; it commits the blob in memory, and the ledger is written off the loop as soon as no write is
running, with every commit made meanwhile (``CollectorState.persist_soon``): a crash sends again what was
unconfirmed, and what the store's latency held.

Nothing stops the task: a blob that fails is fetched again later (a few times, then skipped with an error that
names it), a forwarder that fails is tried again. Should it die all the same, the pipeline fails the run (the
trigger restarts it) instead of beating the heartbeat over a stall.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from datetime import UTC, datetime

from connectors.delivery import Forwarder
from connectors.logs import LogFunction, SampledLog
from connectors.retry import Backoff, RetryOn, retrying
from connectors.stopping import Stopping
from office365 import metrics
from office365.blobs import INVALID_UTF8, parse_blob
from office365.fetcher import Fetched
from office365.listing import ContentRef
from office365.state import CollectorState, Delivered

# Where a body is cut into records: on the loop when the codec's fast path takes it (about 1 ms a MB) up to
# FAST_ON_LOOP_BYTES, or its exact path (about 30 ms a MB) up to EXACT_ON_LOOP_BYTES; else in a thread. On the loop
# rather than in a thread whenever that is short: a thread's records come from an allocator arena of its own, which
# keeps the memory they leave. Records are admitted to the filter ADMIT_SLICE at a time, the loop free in between
# (about 10 ms of keys each).
FAST_ON_LOOP_BYTES = 16 << 20
EXACT_ON_LOOP_BYTES = 1 << 20
ADMIT_SLICE = 2000
# A blob whose processing fails is fetched again after 30 s, 1 min, 2 min, 4 min; then it is skipped, by name.
BLOB_ATTEMPTS = 5
RETRY_BASE = 30.0
RETRY_CAP = 600.0
TROUBLE_PAUSE = 1.0  # after the forwarder failed: no busy loop, the group is handed over again
SKIP_EXPLANATIONS = {
    "expired": "the API says it expired (AF20051) before it could be fetched",
    "vanished": "the API says it does not exist any more (AF20050)",
    "invalid_id": "the API refused its content id (AF20052)",
    "foreign_host": "its contentUri names a host other than the Management API's, where the access token is not sent",
}


class Processor:
    def __init__(
        self,
        forwarder: Forwarder,
        state: CollectorState,
        log: LogFunction,
        done: Callable[[Fetched], None],
        retry: Callable[[ContentRef, float], None] = lambda ref, delay: None,
    ):
        self.forwarder = forwarder
        self.state = state
        self._log = log
        self._sampled = SampledLog(log)
        self._done = done  # one call per item taken (frees its room for the fetchers)
        self._retry = retry  # fetch this blob again after so many seconds
        self._failures: dict[str, Backoff] = {}  # content id -> its retry steps, while it keeps failing
        self._queue: asyncio.Queue[Fetched | None] = asyncio.Queue()  # bounded by the fetchers' slots; None: stop
        self._stopping = False
        self._holding: Fetched | None = None  # the blob at hand until its body is let go

    def put(self, item: Fetched) -> None:
        self._queue.put_nowait(item)

    def stop(self) -> None:
        """Finish the blob at hand, acknowledge what was added, leave the rest (fetched again at the next start)."""
        self._stopping = True
        self._queue.put_nowait(None)  # wakes a task waiting for a blob

    async def run(self) -> None:
        # The forwarder sends what it buffers once nothing more was added for a moment (its idle flush).
        while not self._stopping:
            item = await self._queue.get()
            if item is None or self._stopping:
                break
            skipped = await self._take(item)
            del item  # its body, while waiting for the next one
            if skipped is not None:
                await self._acknowledge(skipped)

    async def _take(self, item: Fetched) -> Delivered | None:
        """Process one fetched blob; a failure schedules another fetch of it, or skips it once it failed enough.
        Returns a blob skipped, which is acknowledged after everything added before it."""
        ref = item.ref
        self._holding = item
        try:
            delivered = await self._process(item)
            self._failures.pop(ref.content_id, None)
            return delivered
        except Exception as error:  # noqa: BLE001 - one blob must not stop the collection
            return self._failed(ref, error)
        finally:
            self._let_go()

    def _let_go(self) -> None:
        """The blob at hand's body is no longer needed (its records are cut out, or it failed): its room goes back
        to the fetchers and the body is dropped, not kept while its records wait for the delivery's room."""
        item, self._holding = self._holding, None
        if item is not None:
            self._done(item)
            item.body = None

    def _failed(self, ref: ContentRef, error: Exception) -> Delivered | None:
        steps = self._failures.setdefault(ref.content_id, Backoff(base=RETRY_BASE, cap=RETRY_CAP))
        if steps.attempts + 1 < BLOB_ATTEMPTS:
            delay = steps.next_delay()
            self._log(
                f"Processing blob {ref.content_id} of {ref.content_type} failed ({error!r}): fetching it again in "
                f"{delay:.0f}s (retry {steps.attempts} of {BLOB_ATTEMPTS - 1})",
                "error",
            )
            try:
                self._retry(ref, delay)
                return None  # pending meanwhile: the resume point waits for it
            except Exception as retry_error:  # noqa: BLE001 - the loop is closing: the next start lists it again
                self._log(f"Blob {ref.content_id} of {ref.content_type} waits for the next start: {retry_error!r}",
                          "warning")
                return None
        del self._failures[ref.content_id]
        # Skipped, not left pending: it would pin the resume point (and every restart would fail on it again).
        created = datetime.fromtimestamp(ref.created, UTC).isoformat()
        self._log(
            f"Blob {ref.content_id} of {ref.content_type} (created {created}) failed {BLOB_ATTEMPTS} times "
            f"({error!r}): skipped, its records are not collected (the API keeps the blob until 7 days after its "
            "creation, for a fetch by hand)",
            "error",
        )
        metrics.skipped_blobs.labels(ref.content_type, "failed").inc()
        return Delivered(ref, skipped="failed")

    async def _acknowledge(self, skipped: Delivered) -> None:
        """Queue a skipped blob's acknowledgement behind the records before it; a forwarder that fails is tried
        again, until a stop (then it is not acknowledged: fetched again at the next start)."""

        def failed(error: BaseException, _: int) -> None:
            self._sampled("forwarder", f"Handing records to the forwarder failed, trying again: {error!r}", "error")

        async def pause(delay: float) -> None:
            if self._stopping:
                raise Stopping()
            await asyncio.sleep(delay)

        try:
            await retrying(lambda: self.forwarder.add((), ack=functools.partial(self._commit, skipped)),
                           RetryOn(Exception, delay=lambda *_: TROUBLE_PAUSE),
                           backoff=Backoff, pause=pause, on_failure=failed)
        except Stopping:
            pass

    def _commit(self, item: Delivered) -> None:
        """On the loop, once the runtime confirmed every record of the blob (and all before it)."""
        self.state.commit([item])
        self.state.persist_soon()
        if not item.skipped:
            metrics.blobs_forwarded.labels(item.ref.content_type).inc()
            if item.records:
                metrics.records_forwarded.labels(item.ref.content_type).inc(item.records)

    async def _process(self, item: Fetched) -> Delivered | None:
        """A skipped blob back (to acknowledge), or None: the blob's records and acknowledgement were handed over."""
        ref = item.ref
        if item.skipped:
            metrics.skipped_blobs.labels(ref.content_type, item.skipped).inc()
            self._sampled(
                f"skip:{ref.content_type}:{item.skipped}",
                f"Skipped blob {ref.content_id} of {ref.content_type}: "
                f"{SKIP_EXPLANATIONS.get(item.skipped, item.skipped)}; its records cannot be collected",
            )
            return Delivered(ref, skipped=item.skipped)
        body = item.body or b""
        parsed = parse_blob(body, len(body) <= EXACT_ON_LOOP_BYTES) if len(body) <= FAST_ON_LOOP_BYTES else None
        if parsed is None:
            parsed = await asyncio.to_thread(parse_blob, body)
        del body  # the records are copies: the body goes now, its records are what the delivery's room bounds
        self._let_go()
        if parsed.problems:
            for kind, count in parsed.problems.items():
                metrics.bad_content.labels(ref.content_type, kind).inc(count)
            self._log(
                f"Blob {ref.content_id} of {ref.content_type} holds unusable content: {parsed.describe_problems()}; "
                f"its {len(parsed.records)} valid records are forwarded",
                "warning",
            )
        if parsed.invalid_utf8:
            metrics.bad_content.labels(ref.content_type, INVALID_UTF8).inc(parsed.invalid_utf8)
            self._sampled(
                f"utf8:{ref.content_type}",
                f"Blob {ref.content_id} of {ref.content_type} holds {parsed.invalid_utf8} bytes that are not UTF-8: "
                "its records are forwarded with each such byte written \\xNN",
            )
        events, keys = await self._admit(parsed.records)
        duplicates = len(parsed.records) - len(events)
        if duplicates:
            metrics.duplicate_records.labels(ref.content_type).inc(duplicates)
        delivered = Delivered(ref, keys=keys, records=len(events))
        try:
            await self.forwarder.add(events, ack=functools.partial(self._commit, delivered),
                                     origin=f"{ref.content_type} blob {ref.content_id}")
        except BaseException:
            self.state.filter.forget(keys)  # fetched again: its records must not look like duplicates then
            raise
        return None

    async def _admit(self, records: list[bytes]) -> tuple[list[bytes], list[int]]:
        """The records the filter lets through, and their keys; the hot path (one key and one lookup a record)."""
        admit = self.state.filter.admit
        if len(records) <= ADMIT_SLICE:
            return admit(records)
        events: list[bytes] = []
        keys: list[int] = []
        for start in range(0, len(records), ADMIT_SLICE):
            fresh, fresh_keys = admit(records[start : start + ADMIT_SLICE])
            events += fresh
            keys += fresh_keys
            await asyncio.sleep(0)
        return events, keys
