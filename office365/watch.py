"""Each content type's progress watched against the API (``connectors.progress.StallWatch``), and the recovery
steps the watch asks for when one stalls.

- Behind: blobs listed and not delivered yet (those waiting for a timed retry aside), or new content not listed for
  longer than a poll takes.
- Progress: blobs committed (the runtime confirmed their records, or they were skipped for good), or listing that
  moved forward; or, while its blobs wait for the fetchers that every content type shares, blobs of any content type
  committed or blob bytes arriving (a large blob that keeps coming slowly).
- Time until loss: until the oldest undelivered blob leaves the API's 7-day retention.

Not a stall: a content type waiting for its permission, nor any while the API throttles or the runtime does not
confirm deliveries, nor for ``stall_seconds`` after (the pace is theirs: a new connection to the API changes nothing).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from connectors.metrics import gauge_values
from connectors.progress import StallWatch
from office365 import metrics
from office365.auth import TokenProvider
from office365.client import ManagementClient
from office365.listing import RETENTION
from office365.state import CollectorState

READING = "content type"
STEPS = (
    "replacing its connections to the Management API",
    "rebuilding its Microsoft Entra token client, with new connections to Entra and to the Management API",
    "restarting the collection run",
)
LISTING_SLACK = 30.0  # seconds a poll may take beyond the poll interval before new content counts as unlisted
RENEWAL_SPACING = 5.0  # content types stalled together share one recovery step


class StalledRun(Exception):
    """The last recovery step: the run ends and the trigger starts a new one."""


class ContentTypeProgress:
    """Tells the watch, at every monitor tick of one run, what moved and what the API holds for each content type."""

    def __init__(self, watch: StallWatch, state: CollectorState, content_types: list[str], poll_interval: float):
        self.watch = watch
        self.state = state
        self.content_types = content_types
        self._overdue = timedelta(seconds=poll_interval + LISTING_SLACK)
        self.waiting: Counter[str] = Counter()  # blobs waiting for a timed retry, per content type
        self.idle: set[str] = set()  # content types not collected for now (their permission is missing)
        self._committed: dict[str, float] = {}
        self._listed: dict[str, datetime] = {}
        self._throttled: int | None = None  # the pacer's count of throttled answers at the last tick
        self._blob_bytes: int | None = None  # blob bytes received by the last tick (None: no tick yet)
        self._total = 0  # blobs committed, every content type, by the last tick
        self._held_at = -math.inf  # when the API or the runtime last held the collection back

    def tick(self, now: datetime, throttled: int, delivery_down: bool, blob_bytes: int = 0) -> None:
        """``now`` on the API's clock; ``throttled``: throttled answers so far; ``delivery_down``: the runtime fails
        to confirm deliveries; ``blob_bytes``: blob bytes received so far."""
        clock = time.monotonic()
        if (self._throttled is not None and throttled != self._throttled) or delivery_down:
            self._held_at = clock
        self._throttled = throttled
        paced = clock - self._held_at < self.watch.stall_seconds
        committed = Counter(gauge_values(metrics.blobs_forwarded))
        committed.update(gauge_values(metrics.skipped_blobs))
        total = sum(committed[content_type] for content_type in self.content_types)
        fetching = self._blob_bytes is not None and (blob_bytes > self._blob_bytes or total > self._total)
        self._blob_bytes, self._total = blob_bytes, total
        for content_type in self.content_types:
            count, oldest = self.state.pending(content_type)
            listed = self.state.listed_until(content_type)
            # A run's first tick only takes its bearings: the counters are the process's, the state the last run's.
            before = self._committed.get(content_type, committed[content_type])
            moved = committed[content_type] > before or listed > self._listed.get(content_type, listed)
            if moved or (fetching and count > self.waiting[content_type]):
                self.watch.progressed(content_type)
            self._committed[content_type], self._listed[content_type] = committed[content_type], listed
            behind = count > self.waiting[content_type] or now - listed > self._overdue
            self.watch.behind(content_type, behind and content_type not in self.idle and not paced)
            self.watch.until_loss(
                content_type, None if oldest is None else max(0.0, oldest + RETENTION.total_seconds() - now.timestamp())
            )


class Recovery:
    """``StallWatch.recover`` for one run: called from the heartbeat on the run's loop, starts the step and returns."""

    def __init__(self, client: ManagementClient, tokens: TokenProvider, restart: Callable[[str], None]):
        self.client = client
        self.tokens = tokens
        self.restart = restart
        self._taken: dict[int, float] = {}

    def __call__(self, content_type: str, index: int) -> None:
        if index >= 2:
            self.restart(content_type)
            return
        now = time.monotonic()
        if now - self._taken.get(index, -math.inf) < RENEWAL_SPACING:
            return
        self._taken[index] = now
        if index == 1:
            self.tokens.reset()
        self.client.renew_session()
