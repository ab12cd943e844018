"""A batch's requests, and what the runtime refuses for good (400, 413, 422...: any 4xx but the configuration's).

A refused request is split in halves, each sent again, until the refused events are alone; a lone event refused
with 413 is sent once more shortened to half its size. The events still refused are set aside: kept in a local
file (``connectors.setaside``, one write per request) while the disk has room, counted, logged in one line per
request with where they came from; the rest goes on, and the resume point never waits on one event. Two limits:
without a set-aside file, a refused event is never acknowledged past (the batch is unconfirmed and the trigger
stops as on a configuration error); many requests refused in a row with none confirmed in between mean the runtime
refuses everything (``intake_server`` points at something else): a configuration error, instead of one request
per event.
"""

from __future__ import annotations

import asyncio

from connectors import metrics
from connectors.delivery.control import Control, DeliveryAborted
from connectors.delivery.transport import Transport
from connectors.errors import ConfigurationError
from connectors.setaside import Kept, SetAsideStore
from connectors.sinks import Misdirected, Refused, Request, clean_up
from connectors.state import thread_to_its_end
from connectors.truncation import digest, shorten

# Requests refused in a row, none confirmed in between, whatever their size: the runtime refuses everything (a proxy
# answering 400), not a run of bad records. Splitting a batch around k neighbouring bad records costs about
# 14 + 2k refusals in a row (an envelope of bad records is such a run): stopping on those would stall the trigger
# on its data at every restart, so the bar is high; refusing everything costs this many requests, not one per event.
REFUSES_EVERYTHING_REQUESTS = 100
ORIGINS_NAMED = 3  # origins named in a line about several events


class UnkeptRefusal(ConfigurationError):
    """Events the runtime refused could not be kept locally (no set-aside file): acknowledging past them would lose
    them, so the trigger stops (like a configuration error: exit code 2)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)
        self.field = "set-aside file"
        self.expected = message


def count_of(kept: list[Kept]) -> str:
    return "an event" if len(kept) == 1 else f"{len(kept)} events"


def origins_of(kept: list[Kept]) -> str:
    """The first few distinct origins, and how many more."""
    names = list(dict.fromkeys(entry.origin or "unknown origin" for entry in kept))
    more = len(names) - ORIGINS_NAMED
    return ", ".join(names[:ORIGINS_NAMED]) + (f" and {more} more" if more > 0 else "")


class SetAside:
    """Writes to the set-aside files, off the loop, one at a time (producers and senders both keep events)."""

    def __init__(self, store: SetAsideStore | None):
        self.store = store
        self._keeping = asyncio.Lock()

    async def keep(self, kept: list[Kept]) -> None:
        """OSError: the disk refused the write."""
        if self.store is None or not kept:
            return
        async with self._keeping:
            # Held until the thread returns, even for a cancelled caller: the store allows one writer at a time.
            await thread_to_its_end(self.store.keep, kept)

    async def keep_originals(self, originals: list[Kept]) -> str:
        """Keep the originals of events sent shortened: a copy, so a write the disk refuses is said, not retried
        (the shortened events still go). Where they are, for the log line."""
        if self.store is None:
            return "not kept (no set-aside file)"
        try:
            await self.keep(originals)
        except OSError as error:
            return f"not kept (the originals file cannot be written: {error})"
        return f"kept in {self.store.where(sent=True)}"


class Refusals:
    """Sends a batch's requests through the transport; isolates and sets aside what the runtime refuses."""

    def __init__(self, transport: Transport, control: Control, set_aside: SetAside, *, trigger: str):
        self.transport = transport
        self.sink = transport.sink
        self.control = control
        self.set_aside = set_aside
        self.trigger = trigger
        self.shortened = 0  # sent shortened after a 413 (the forwarder adds those shortened at add)
        self.refused = 0
        self._refused_in_a_row = 0  # requests the runtime refused since it last confirmed one, across senders

    async def send(self, events: list[bytes], origins: list[str]) -> int:
        """Deliver a batch; the events the runtime refuses are isolated and set aside, one write per request.
        Returns how many were not sent."""
        if not events:
            return 0
        try:
            requests_ = await self.control.locally(lambda: self._prepare(events))
        except ValueError as error:  # an event the sink cannot encode (not UTF-8): find it like a refused one
            kept: list[Kept] = []
            await self._isolate(events, origins, Refused(0, f"cannot be encoded: {type(error).__name__}"), kept)
            return await self._set_aside(kept)
        refused = 0
        try:
            for request in requests_:
                span = slice(request.start, request.stop)
                kept = []
                await self._post_or_isolate(request, events[span], origins[span], kept)
                refused += await self._set_aside(kept)
        finally:
            await self._clean_up(requests_)
        return refused

    async def _prepare(self, events: list[bytes]) -> list[Request]:
        """The sink's requests: on the loop when it only encodes (CPU), off it when it writes files."""
        if self.sink.local_writes:
            return await asyncio.to_thread(self.sink.prepare, events)
        return self.sink.prepare(events)

    async def _clean_up(self, requests_: list[Request]) -> None:
        if any(request.cleanup is not None for request in requests_):
            await asyncio.to_thread(clean_up, requests_)

    async def _confirmed(self, request: Request) -> None:
        """Sent until confirmed; a refusal is counted, and many in a row are a configuration error."""
        try:
            await self.transport.send_until_confirmed(request)
        except Refused as refusal:
            self._refused_in_a_row += 1
            if self._refused_in_a_row >= REFUSES_EVERYTHING_REQUESTS:
                raise Misdirected(refusal.status, f"{self._refused_in_a_row} requests in a row refused, none "
                                                  f"confirmed in between: {refusal.detail}") from None
            raise
        self._refused_in_a_row = 0

    async def _try(self, events: list[bytes], origins: list[str], kept: list[Kept]) -> None:
        """Deliver part of a refused request; what is refused again goes on being isolated into ``kept``."""
        try:
            requests_ = await self.control.locally(lambda: self._prepare(events))
        except ValueError as error:
            if len(events) == 1:
                kept.append(Kept(events[0], origins[0], f"refused: cannot be encoded: {type(error).__name__}"))
                return
            await self._isolate(events, origins, Refused(0, f"cannot be encoded: {type(error).__name__}"), kept)
            return
        try:
            for request in requests_:
                span = slice(request.start, request.stop)
                await self._post_or_isolate(request, events[span], origins[span], kept)
        finally:
            await self._clean_up(requests_)

    async def _post_or_isolate(self, request: Request, events: list[bytes], origins: list[str],
                               kept: list[Kept]) -> None:
        try:
            await self._confirmed(request)
        except Refused as refusal:
            await self._isolate(events, origins, refusal, kept)

    async def _isolate(self, events: list[bytes], origins: list[str], refusal: Refused, kept: list[Kept]) -> None:
        """``events`` were refused together: halves are sent again until the refused events are alone."""
        if len(events) == 1:
            await self._refused_alone(events[0], origins[0], refusal, kept)
            return
        half = len(events) // 2
        await self._try(events[:half], origins[:half], kept)
        await self._try(events[half:], origins[half:], kept)

    async def _refused_alone(self, event: bytes, origin: str, refusal: Refused, kept: list[Kept]) -> None:
        """A lone event refused: too large for this intake (413), it goes once more shortened to half its size."""
        if refusal.status == 413:
            short = (await asyncio.to_thread(shorten, event, len(event) // 2)).event
            requests_ = await self.control.locally(lambda: self._prepare([short]))
            try:
                for request in requests_:
                    await self._confirmed(request)
                kept.append(Kept(event, origin, f"too large for the intake (HTTP 413): sent shortened to "
                                                f"{len(short)} bytes", sent=True))
                return
            except Refused as again:
                refusal = again
            finally:
                await self._clean_up(requests_)
        if refusal.status:
            kept.append(Kept(event, origin, f"refused: {refusal}"))
        else:
            kept.append(Kept(event, origin, f"refused: {refusal.detail}"))

    async def _set_aside(self, kept: list[Kept]) -> int:
        """Keep the events of one request the runtime would not take as they were (one write, one line per kind);
        returns how many were not sent. Refused events are kept while the disk has room (a write it refuses is
        retried, nothing past them acknowledged meanwhile); without a set-aside file they stop everything (raises
        DeliveryAborted)."""
        if not kept:
            return 0
        refused = [entry for entry in kept if not entry.sent]
        shortened = [entry for entry in kept if entry.sent]
        store = self.set_aside.store
        if refused and store is None:
            self.control.fail(UnkeptRefusal(
                f"The runtime refused {count_of(refused)} ({refused[0].reason}) from {origins_of(refused)}, and "
                "they cannot be kept: no set-aside file. They were not marked as read and delivery stopped. Look at "
                "why the runtime refuses them, then restart: they will be collected again"))
            raise DeliveryAborted("refused events cannot be kept")
        await self.control.locally(lambda: self.set_aside.keep(refused))
        log = self.control.log
        if shortened:
            where = await self.set_aside.keep_originals(shortened)
            self.shortened += len(shortened)
            metrics.oversize_events.labels(self.trigger).inc(len(shortened))
            log(f"The runtime refused {count_of(shortened)} as too large (HTTP 413) from {origins_of(shortened)}: "
                f"sent shortened to half their size (marked `sekoia_truncated`); the full events are {where}",
                "warning")
        if refused:
            self.refused += len(refused)
            metrics.refused_events.labels(self.trigger).inc(len(refused))
            hashes = ", ".join(digest(entry.event) for entry in refused[:ORIGINS_NAMED])
            log(f"The runtime refused {count_of(refused)} ({refused[0].reason.removeprefix('refused: ')}) from "
                f"{origins_of(refused)}: not sent, kept in {store.path} (sha256 {hashes}"  # type: ignore[union-attr]
                f"{', ...' if len(refused) > ORIGINS_NAMED else ''}); delivery goes on", "warning")
        return len(refused)
