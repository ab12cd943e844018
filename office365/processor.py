"""From fetched blob bodies to forwarded records, on one thread (the event loop only does I/O).

Per record: the bytes orjson gives back, a 63-bit hash for the record filter, done. Blobs are acknowledged
in groups (a few thousand records, or half a second): the group's acknowledgement runs on the forwarder's
delivery thread once the runtime confirmed every record of the group, and commits it to the ledger with one
fsync - instead of one fsync per blob.
"""

from __future__ import annotations

import functools
import hashlib
import queue
import threading
import time
from collections.abc import Callable

from connectors.delivery import Forwarder
from office365 import metrics
from office365.blobs import INVALID_UTF8, parse_blob
from office365.fetcher import Fetched
from office365.state import CollectorState, Delivered

GROUP_RECORDS = 5000
GROUP_SECONDS = 0.5
SKIP_EXPLANATIONS = {
    "expired": "the API says it expired (AF20051) before it could be fetched",
    "vanished": "the API says it does not exist any more (AF20050)",
    "invalid_id": "the API refused its content id (AF20052)",
}
_STOP = object()


class SampledLog:
    """At most one line per key and minute; the next line says how many were not logged in between."""

    def __init__(self, log: Callable[[str, str], None], interval: float = 60.0):
        self._log = log
        self._interval = interval
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def __call__(self, key: str, message: str, level: str = "warning") -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._interval) < self._interval:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return
        quiet = self._quiet.pop(key, 0)
        self._last[key] = now
        self._log(message + (f" ({quiet} more like it since the last report)" if quiet else ""), level)


class Processor:
    def __init__(
        self,
        forwarder: Forwarder,
        state: CollectorState,
        log: Callable[[str, str], None],
        done: Callable[[], None],
    ):
        self.forwarder = forwarder
        self.state = state
        self._log = log
        self._sampled = SampledLog(log)
        self._done = done  # one call per item taken (frees a slot for the fetchers)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="o365-process", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, item: Fetched) -> None:
        self._queue.put(item)

    def stop(self, timeout: float = 10.0) -> bool:
        """Finish the blob at hand, queue the acknowledgement of what was added, drop the rest (fetched again later)."""
        self._stopping = True
        if not self._thread.is_alive():
            return True  # never started (the run failed before collecting) or already done
        self._queue.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- thread ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        group: list[Delivered] = []
        records = 0
        started = 0.0
        while True:
            try:
                item = self._queue.get(timeout=0.05 if group else 0.5)
            except queue.Empty:
                item = None
            if item is _STOP or self._stopping:
                break
            if item is not None:
                try:
                    delivered = self._process(item)
                except Exception as error:  # noqa: BLE001 - one blob must not stop the collection
                    # Not acknowledged: the blob stays pending (the resume point waits) and is listed again at the
                    # next start.
                    self._log(
                        f"Processing blob {item.ref.content_id} of {item.ref.content_type} failed: {error!r}", "error"
                    )
                    delivered = None
                finally:
                    self._done()
                if delivered is not None:
                    if not group:
                        started = time.monotonic()
                    group.append(delivered)
                    records += delivered.records
            if group and (item is None or records >= GROUP_RECORDS or time.monotonic() - started >= GROUP_SECONDS):
                self._acknowledge(group)
                group, records = [], 0
            if item is None:  # nothing more fetched for now: send what is buffered instead of at its max age
                self.forwarder.flush()
        if group:
            self._acknowledge(group)

    def _acknowledge(self, group: list[Delivered]) -> None:
        self.forwarder.add((), ack=functools.partial(self._commit, group))

    def _commit(self, group: list[Delivered]) -> None:
        """On the delivery thread, once the runtime confirmed every record of the group."""
        self.state.commit(group)
        for item in group:
            if not item.skipped:
                metrics.blobs_forwarded.labels(item.ref.content_type).inc()
                if item.records:
                    metrics.records_forwarded.labels(item.ref.content_type).inc(item.records)

    def _process(self, item: Fetched) -> Delivered:
        ref = item.ref
        if item.skipped:
            metrics.skipped_blobs.labels(ref.content_type, item.skipped).inc()
            self._sampled(
                f"skip:{ref.content_type}:{item.skipped}",
                f"Skipped blob {ref.content_id} of {ref.content_type}: "
                f"{SKIP_EXPLANATIONS.get(item.skipped, item.skipped)}; its records cannot be collected",
            )
            return Delivered(ref, skipped=item.skipped)
        parsed = parse_blob(item.body or b"")
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
        # Hot path: one hash and one set lookup per record.
        sha1, from_bytes = hashlib.sha1, int.from_bytes
        keys = [from_bytes(sha1(record, usedforsecurity=False).digest()[:8], "big") >> 1 for record in parsed.records]
        events, hashes = self.state.filter.admit(parsed.records, keys)
        duplicates = len(parsed.records) - len(events)
        if duplicates:
            metrics.duplicate_records.labels(ref.content_type).inc(duplicates)
        if events:
            self.forwarder.add(events, origin=f"{ref.content_type} blob {ref.content_id}")
        return Delivered(ref, hashes=hashes, records=len(events))
