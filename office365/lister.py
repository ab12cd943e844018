"""Listing, one content type at a time, for the life of a run: which time windows, and what to do with the ones the
API refuses (as Beats' o365audit splits its poller and its listing from its content transactions).

Each content type has a poller and a re-lister. The poller lists from where the last poll ended and, with it, the
last hour again (blobs up to an hour late come within a poll); it alone moves the resume point. The re-lister lists
older time again, less often. Every listed blob not known yet goes on the fetchers' queue; listing waits while too
many blobs of the content type are pending.
"""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import datetime, timedelta

from connectors.logs import LogFunction, SampledLog
from connectors.retry import Backoff, RetryOn, retrying
from connectors.stopping import pause_or_stop, sleep_or_stop
from office365.client import (
    ApiError,
    ForeignUrl,
    ManagementClient,
    Throttled,
    TransientError,
    UnreadableAnswer,
)
from office365.config import Office365Configuration
from office365.fetcher import Stopping, get_with_retries
from office365.listing import RETENTION, RelistSchedule, floor_second, horizon, list_pages, windows
from office365.state import CollectorState
from office365.subscriptions import RESTART_CODES, MissingDlpPermission, Subscriptions, fatal
from office365.watch import ContentTypeProgress

POLL_OVERLAP = timedelta(minutes=5)  # blobs often show up a little after their creation time
RECENT_RELIST = timedelta(hours=1)  # listed again at every poll: blobs up to an hour late come within a poll
FIRST_STEP = timedelta(minutes=1)  # a refused window's start moves on by 1, 2, 4... minutes past the API's horizon
FIRST_RELIST_WAIT = 60.0
PERMISSION_RECHECK = 3 * 3600.0  # a content type the app may not read: warn, and look again, this often
AF_BAD_NEXT_PAGE = "AF20031"
AF_BAD_WINDOW = ("AF20055", "AF20030")
UNREADABLE_ATTEMPTS = 5  # a window whose pages keep coming back unreadable is left to the next poll
RELIST_BACKOFF = functools.partial(Backoff, base=1.0, cap=30.0)
RELISTED = (
    RetryOn(UnreadableAnswer, UNREADABLE_ATTEMPTS),
    RetryOn(ApiError, 3, delay=None, when=lambda error: error.code == AF_BAD_NEXT_PAGE),
)
FUTURE_TOLERANCE = timedelta(minutes=1)  # a resume point this far past the API's now is not the clock's jitter


class Lister:
    """The listing of every content type of one run; ``collect`` runs for each."""

    def __init__(
        self,
        config: Office365Configuration,
        state: CollectorState,
        log: LogFunction,
        stopping: asyncio.Event,
        progress: ContentTypeProgress | None = None,
    ):
        self.config = config
        self.state = state
        self._log = log
        self._sampled = SampledLog(log)
        self.stopping = stopping
        self.progress = progress
        self._gaps_reported: set[str] = set()
        # Spans the poller could not list (refused windows), per content type: reported if they expire unlisted.
        self._skipped: dict[str, list[tuple[datetime, datetime]]] = {}

    def rewind_future_resume_points(self, now: datetime) -> None:
        """A resume point past the API's now (the collector's clock, or its state, went back in time) would hide
        content created between the API's now and it: listing starts again from the trailing re-list window."""
        ahead = [ct for ct in self.config.content_types if self.state.listed_until(ct) > now + FUTURE_TOLERANCE]
        if not ahead:
            return
        restart = floor_second(now - self._recent_span())
        latest = max(self.state.listed_until(ct) for ct in ahead)
        self._log(
            f"The resume point of {', '.join(ahead)} ({latest.isoformat()}) is ahead of the Management API's clock "
            f"({now.isoformat()}): the collector's clock or its state went back in time. Listing again from "
            f"{restart.isoformat()} (content already delivered is not sent again)",
            "warning",
        )
        for content_type in ahead:
            self.state.rewind(content_type, restart)

    def _recent_span(self) -> timedelta:
        """What each poll lists again behind its resume point."""
        return RECENT_RELIST + timedelta(seconds=self.config.poll_interval_seconds) + POLL_OVERLAP

    # -- listing --------------------------------------------------------------------------------------------

    async def collect(
        self,
        content_type: str,
        client: ManagementClient,
        subscriptions: Subscriptions,
        queue: asyncio.Queue,
        denied: bool,
    ) -> None:
        """List one content type for the life of the run; while the app may not read it, say so every few hours
        and look again (a permission granted later is picked up without a restart)."""
        while True:
            if denied:
                if self.progress is not None:
                    self.progress.idle.add(content_type)
                await self._wait_for_permission(content_type, subscriptions)
                if self.progress is not None:
                    self.progress.idle.discard(content_type)
            polled = asyncio.Event()
            poller = asyncio.create_task(self._poll(content_type, client, subscriptions, queue, polled))
            poller.add_done_callback(lambda _: polled.set())  # the re-lister waits for the first poll, however it ends
            relister = asyncio.create_task(self._relister(content_type, client, queue, polled))
            try:
                done, _ = await asyncio.wait([poller, relister], return_when=asyncio.FIRST_EXCEPTION)
            finally:
                poller.cancel()
                relister.cancel()
                await asyncio.gather(poller, relister, return_exceptions=True)
            problem = next((task.exception() for task in done if not task.cancelled() and task.exception()), None)
            if problem is None:
                return  # stopping
            if not isinstance(problem, MissingDlpPermission):
                raise problem
            denied = True  # withdrawn while running

    async def _wait_for_permission(self, content_type: str, subscriptions: Subscriptions) -> None:
        while True:
            others = [ct for ct in self.config.content_types if ct != content_type]
            self._log(
                f"{content_type} is not collected: the app lacks the application permission ActivityFeed.ReadDlp of "
                f"the Office 365 Management API (AF10001); {', '.join(others) or 'no other content type'} still "
                "collected. Grant ActivityFeed.ReadDlp with admin consent (picked up within "
                f"{PERMISSION_RECHECK / 3600:g} h, no restart needed), or remove {content_type} from content_types",
                "warning",
            )
            if await sleep_or_stop(PERMISSION_RECHECK, self.stopping):
                raise Stopping()
            try:
                await subscriptions.start(content_type, "ActivityFeed.ReadDlp is granted now")
            except MissingDlpPermission:
                continue
            except (Throttled, TransientError):
                continue  # not a refusal: try listing, it retries on its own
            self._log(f"ActivityFeed.ReadDlp is granted now: collecting {content_type}", "info")
            return

    async def _poll(
        self,
        content_type: str,
        client: ManagementClient,
        subscriptions: Subscriptions,
        queue: asyncio.Queue,
        polled: asyncio.Event,
    ) -> None:
        """Each poll lists from where the last one ended and, with it, the last hour again (blobs up to an hour
        late are listed within a poll); it alone moves the resume point forward. ``polled``: set once the first
        poll ended."""
        recent = self._recent_span()
        restarts = 0
        while not self.stopping.is_set():
            now = client.now()
            earliest = horizon(now)
            resume = self.state.resume_point(content_type)
            if resume < earliest:
                self._report_gap(content_type, resume, earliest)
                self.state.skip_to(content_type, earliest)
            self._report_skipped(content_type, earliest)
            start = min(self.state.listed_until(content_type) - POLL_OVERLAP, now - recent)
            try:
                await self._list_range(content_type, client, queue, max(start, earliest), now, advance=True)
                restarts = 0
            except (Throttled, TransientError) as error:
                self._sampled(f"list:{content_type}", f"Listing {content_type} failed, retrying later: {error}")
            except ApiError as error:
                if error.code in RESTART_CODES and restarts < 3:
                    restarts += 1
                    await subscriptions.restart(content_type, error)
                    continue
                problem = fatal(error, content_type)
                if problem is not None:
                    raise problem from None
                if not isinstance(error, ForeignUrl):  # that one the client says once per host
                    self._sampled(
                        f"list:{content_type}", f"Listing {content_type} was refused, retrying later: {error}", "error"
                    )
            polled.set()
            await sleep_or_stop(self.config.poll_interval_seconds, self.stopping)

    async def _relister(
        self, content_type: str, client: ManagementClient, queue: asyncio.Queue, polled: asyncio.Event
    ) -> None:
        """Older time again, less often: the last day every ``relist_interval_minutes``, the whole retention every
        ``deep_relist_minutes`` (see the README for what it costs). Known blobs are skipped, so a re-list costs
        listing pages only. Runs beside the poller: a long re-list never delays new content. Its first re-list
        waits for the first poll (for a minute at most: a backlog's first poll can take hours): at start the two
        would list the same recent windows side by side, and the poll's blobs reach the fetchers first."""
        try:
            await asyncio.wait_for(polled.wait(), FIRST_RELIST_WAIT)
        except asyncio.TimeoutError:
            pass
        config = self.config
        schedule = RelistSchedule(
            [
                (
                    timedelta(hours=config.relist_hours, minutes=config.relist_interval_minutes) + POLL_OVERLAP,
                    config.relist_interval_minutes * 60,
                ),
                (RETENTION, config.deep_relist_minutes * 60),
            ],
            time.monotonic(),
        )
        while not self.stopping.is_set():
            span = schedule.due(time.monotonic())
            if span is not None:
                now = client.now()
                # Up to what the poller listed: beyond it is new content, the poller's (and the resume point's).
                end = min(now, self.state.listed_until(content_type))
                try:
                    await self._list_range(content_type, client, queue, max(now - span, horizon(now)), end)
                except (Throttled, TransientError) as error:
                    self._sampled(f"relist:{content_type}", f"Re-listing {content_type} failed: {error}")
                except ApiError as error:
                    problem = fatal(error, content_type)
                    if problem is not None:
                        raise problem from None
                    # The poller meets the same answer and deals with it (subscription restarts included).
                    if not isinstance(error, ForeignUrl):
                        self._sampled(f"relist:{content_type}", f"Re-listing {content_type} was refused: {error}")
            if await sleep_or_stop(min(schedule.wait(time.monotonic()), 60.0), self.stopping):
                return

    async def _list_range(
        self,
        content_type: str,
        client: ManagementClient,
        queue: asyncio.Queue,
        start: datetime,
        end: datetime,
        advance: bool = False,
    ) -> None:
        """List [start, end) window by window, the first page of every window at once: seven days at start cost one
        round trip, not eight in a row. Further pages wait for every older window to be listed, so a backlog is
        still listed (and fetched) oldest first: content near its 7-day expiry is not held back by newer content.
        Outcomes are taken in time order, so a window counts as listed only with every window before it. A window
        the API refuses is narrowed, never retried in a loop that would hold back the newer ones. ``advance``:
        record each window as listed (the poller)."""
        spans = windows(start, end)
        # What the poller skips was owed once a window was listed: before this range only for its first window.
        owed = [advance and (index > 0 or self.state.owes_from_resume(content_type)) for index in range(len(spans))]
        turns = [asyncio.Event() for _ in spans]  # set once every older window is listed
        if turns:
            turns[0].set()
        tasks = [
            asyncio.create_task(self._list_or_narrow(content_type, client, queue, window_start, window_end, owes, turn))
            for (window_start, window_end), owes, turn in zip(spans, owed, turns)
        ]
        try:
            for index, ((window_start, window_end), task) in enumerate(zip(spans, tasks)):
                if await task:
                    self._listed_span(content_type, window_start, window_end)
                if advance:
                    self.state.listed(content_type, window_end)
                if index + 1 < len(turns):
                    turns[index + 1].set()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _list_or_narrow(
        self,
        content_type: str,
        client: ManagementClient,
        queue: asyncio.Queue,
        start: datetime,
        end: datetime,
        owed: bool,
        turn: asyncio.Event,
    ) -> bool:
        """One window; True when it was listed whole, False when the API refused it and it was narrowed."""
        try:
            await self._list_window(content_type, client, queue, start, end, turn)
            return True
        except ApiError as error:
            if error.code not in AF_BAD_WINDOW:
                raise
            await self._refused_window(content_type, client, queue, start, end, error, owed, turn)
            return False

    async def _refused_window(
        self,
        content_type: str,
        client: ManagementClient,
        queue: asyncio.Queue,
        start: datetime,
        end: datetime,
        error: ApiError,
        owed: bool,
        turn: asyncio.Event | None = None,
    ) -> None:
        """The API refused [start, end) although it was built on the API's clock (a start too old by the API's
        own reckoning). Start again from the horizon on the clock the refusal's Date header just gave, then 1, 2,
        4... minutes later: what is skipped is the unreachable minutes, not half a window. The skipped span is
        kept (``owed``) and reported if it expires unlisted; the whole-retention re-list may still list it."""
        step = FIRST_STEP
        cursor = max(floor_second(start + step), horizon(client.now()))
        accepted = end
        while cursor < end:
            try:
                await self._list_window(content_type, client, queue, cursor, end, turn)
                accepted = cursor
                break
            except ApiError as again:
                if again.code not in AF_BAD_WINDOW:
                    raise
            cursor = max(floor_second(cursor + step), horizon(client.now()))
            step *= 2
        if owed:
            self._skipped.setdefault(content_type, []).append((start, accepted))
        what = "skipped it" if accepted == end else f"listed it from {accepted.isoformat()}"
        self._sampled(
            f"window:{content_type}",
            f"The API refused the listing window {start.isoformat()} - {end.isoformat()} of {content_type} ({error}); "
            f"{what} and went on with newer windows. Content of {content_type} created between {start.isoformat()} "
            f"and {accepted.isoformat()} is collected only if a later re-list is accepted",
            "error",
        )

    def _listed_span(self, content_type: str, start: datetime, end: datetime) -> None:
        """[start, end) was listed: no longer part of a skipped span."""
        spans = self._skipped.get(content_type)
        if not spans:
            return
        left = []
        for first, last in spans:
            if first < start:
                left.append((first, min(last, start)))
            if last > end:
                left.append((max(first, end), last))
        self._skipped[content_type] = left

    def _report_skipped(self, content_type: str, earliest: datetime) -> None:
        """A skipped span whose content starts expiring: said once, then forgotten."""
        spans = self._skipped.get(content_type)
        if not spans:
            return
        for first, last in [span for span in spans if span[0] < earliest]:
            self._log(
                f"Content of {content_type} created between {first.isoformat()} and {last.isoformat()} could not be "
                "listed (the API refused its window as too old) and is past the API's 7-day retention: it was not "
                "collected",
                "error",
            )
        self._skipped[content_type] = [span for span in spans if span[0] >= earliest]

    async def _list_window(
        self,
        content_type: str,
        client: ManagementClient,
        queue: asyncio.Queue,
        start: datetime,
        end: datetime,
        turn: asyncio.Event | None = None,
    ) -> None:
        """Every page of one window; past the first, only once ``turn`` is set (see ``_list_range``)."""

        def get(url: str):
            return get_with_retries(client, url, "list", self.stopping)

        async def list_all() -> None:
            known = functools.partial(self.state.is_known, content_type)
            async for refs, unusable in list_pages(client, get, content_type, start, end, known):
                if unusable:
                    self._sampled(f"entries:{content_type}", f"{unusable} listing entries of {content_type} unreadable")
                for ref in refs:
                    if self.state.track(ref):
                        queue.put_nowait(ref)
                # Bound what is listed ahead of delivery (memory, and a fair share between content types).
                while self.state.pending(content_type)[0] >= self.config.max_pending_blobs:
                    if await sleep_or_stop(0.2, self.stopping):
                        raise Stopping()
                if turn is not None:
                    await turn.wait()

        # Listed again from its first page (known blobs are skipped): after a pause when its pages came unreadable
        # (the poll says the rest), at once when the page token went stale.
        await retrying(list_all, *RELISTED, backoff=RELIST_BACKOFF, pause=pause_or_stop(self.stopping))

    def _report_gap(self, content_type: str, resume: datetime, earliest: datetime) -> None:
        # Only content that was owed and is now out of the API's reach: not the initial lookback's oldest part
        # when no window was listed yet (a restart after an early fault), not a blob still listable.
        if content_type in self._gaps_reported or not self.state.owes_from_resume(content_type):
            return
        self._gaps_reported.add(content_type)
        self._log(
            f"Content of {content_type} created between {resume.isoformat()} and {earliest.isoformat()} is past the "
            "API's 7-day retention and was not collected (the trigger was stopped or behind for too long)",
            "error",
        )
