"""Events over the intake's 250,000-byte limit, met as they are added: sent shortened (``connectors.truncation``,
marked ``sekoia_truncated``) so that they still reach detection, their originals kept locally, logged once each."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from sekoia_automation.constants import EVENT_BYTES_MAX_SIZE

from connectors import metrics
from connectors.delivery.control import LogFunction
from connectors.delivery.refusals import SetAside
from connectors.setaside import Kept
from connectors.truncation import shorten


class Oversize:
    def __init__(self, set_aside: SetAside, log: LogFunction, *, trigger: str):
        self.set_aside = set_aside
        self.log = log
        self.trigger = trigger
        self.shortened = 0

    async def fit(self, events: Iterable[bytes], origin: str) -> Sequence[bytes]:
        """``events`` with those over the intake's limit shortened (off the loop); their originals kept (one write
        per call). The caller's list is never changed."""
        if not isinstance(events, (list, tuple)):
            events = list(events)
        if not events or max(map(len, events)) <= EVENT_BYTES_MAX_SIZE:
            return events
        oversize = [index for index, event in enumerate(events) if len(event) > EVENT_BYTES_MAX_SIZE]
        events = list(events)
        shortened = await asyncio.to_thread(
            lambda: [shorten(events[index], EVENT_BYTES_MAX_SIZE) for index in oversize])
        originals, lines = [], []
        for index, short in zip(oversize, shortened):
            event = events[index]
            events[index] = short.event
            originals.append(Kept(event, origin, "oversize", sent=True))
            cut = ", ".join(short.fields[:5]) + (f" and {len(short.fields) - 5} more" if len(short.fields) > 5 else "")
            lines.append(
                f"Event of {len(event)} bytes from {origin or 'unknown origin'} is over the intake limit of "
                f"{EVENT_BYTES_MAX_SIZE} bytes: sent shortened to {len(short.event)} bytes "
                f"({f'cut: {cut}' if cut else 'text cut'}, marked `sekoia_truncated`); the full event (sha256 "
                f"{short.sha256}) is ")
        where = await self.set_aside.keep_originals(originals)
        self.shortened += len(oversize)
        metrics.oversize_events.labels(self.trigger).inc(len(oversize))
        for line in lines:
            self.log(line + where, "warning")
        return events
