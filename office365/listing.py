"""Listing available content: time windows the API accepts, pages, and the blob references they hold.

The API filters on ``contentCreated`` (``start <= created < end``), refuses windows of 24 h or more and
starts older than 7 days (AF20055), and pages with a ``NextPageUri`` header (``NextPageUrl`` on one docs
page) whose URL keeps the window and adds an opaque ``nextPage``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from office365.client import ApiResponse, ManagementClient, UnreadableAnswer

MAX_WINDOW = timedelta(hours=23, minutes=59)  # strictly under 24 h: exactly 24 h is refused by some tenants
RETENTION = timedelta(days=7)
# Windows are built on the API's clock (its Date header): the margin only covers the pages of the oldest window
# (a refused window restarts at the horizon on the refusal's clock), so content near its 7-day expiry is still listed.
RETENTION_MARGIN = timedelta(minutes=2)
NEXT_PAGE_HEADERS = ("NextPageUri", "NextPageUrl")

Getter = Callable[[str], Awaitable[ApiResponse]]


@dataclass(slots=True, eq=False)
class ContentRef:
    """One blob the API listed."""

    content_type: str
    content_id: str
    uri: str
    created: float  # epoch seconds
    expiration: float  # epoch seconds


def format_time(moment: datetime) -> str:
    """The documented format, ``YYYY-MM-DDTHH:MM:SS`` in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def parse_time(value: str) -> datetime:
    """API timestamps: ``2015-05-23T17:35:00.000Z``, also without zone (UTC) or with an offset."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def floor_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def horizon(now: datetime) -> datetime:
    """The oldest start time the API accepts, with a margin."""
    return floor_second(now - RETENTION + RETENTION_MARGIN)


class RelistSchedule:
    """When to list past time again, recent time more often than old time: late blobs land in windows already
    listed. ``tiers`` are (how far back, every how many seconds); a due tier also does the work of shorter ones."""

    def __init__(self, tiers: list[tuple[timedelta, float]], now: float):
        self.tiers = sorted((span, every) for span, every in tiers if every > 0)
        # A run starts with every tier but the longest due: late blobs may have come while the trigger was away.
        self._last = [-math.inf] * len(self.tiers)
        if len(self.tiers) > 1:
            self._last[-1] = now

    def due(self, now: float) -> timedelta | None:
        """The span to list again now (and mark done), or None."""
        chosen = None
        for index, (span, every) in enumerate(self.tiers):
            if now - self._last[index] >= every:
                chosen = index
        if chosen is None:
            return None
        for index in range(chosen + 1):
            self._last[index] = now
        return self.tiers[chosen][0]

    def wait(self, now: float) -> float:
        """Seconds until the next tier is due."""
        if not self.tiers:
            return math.inf
        return max(0.0, min(last + every - now for last, (_, every) in zip(self._last, self.tiers)))


def windows(start: datetime, end: datetime, max_length: timedelta = MAX_WINDOW) -> list[tuple[datetime, datetime]]:
    """Contiguous ``[start, end)`` windows, each strictly under 24 h, on whole seconds."""
    start, end = floor_second(start), floor_second(end)
    if end <= start:
        return []
    count = math.ceil((end - start) / max_length)
    result, cursor = [], start
    for _ in range(count):
        stop = min(end, cursor + max_length)
        result.append((cursor, stop))
        cursor = stop
    return result


def next_page(response: ApiResponse) -> str | None:
    for name in NEXT_PAGE_HEADERS:
        value = response.headers.get(name)
        if value and value.strip():
            return value.strip()
    return None


def parse_page(
    body: bytes, content_type: str, known: Callable[[str], bool] = lambda content_id: False
) -> tuple[list[ContentRef], int]:
    """References to the blobs of a listing page not ``known`` yet, and how many entries were unusable."""
    data = orjson.loads(body) if body.strip() else []
    if not isinstance(data, list):
        raise ValueError("listing is not a JSON array")
    refs, unusable = [], 0
    for entry in data:
        try:
            content_id = str(entry["contentId"])
            if known(content_id):
                continue  # re-lists see mostly known blobs: skip them before parsing dates
            created = parse_time(entry["contentCreated"])
            expiration_text = entry.get("contentExpiration")
            expiration = parse_time(expiration_text) if expiration_text else created + RETENTION
            refs.append(
                ContentRef(
                    content_type=content_type,
                    content_id=content_id,
                    uri=str(entry["contentUri"]),
                    created=created.timestamp(),
                    expiration=expiration.timestamp(),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            unusable += 1
    return refs, unusable


async def list_pages(
    client: ManagementClient,
    get: Getter,
    content_type: str,
    start: datetime,
    end: datetime,
    known: Callable[[str], bool] = lambda content_id: False,
) -> AsyncIterator[tuple[list[ContentRef], int]]:
    """Every page of one window; ``get`` fetches one URL (with the caller's retries)."""
    url: str | None = client.operation_url(
        "subscriptions/content", contentType=content_type, startTime=format_time(start), endTime=format_time(end)
    )
    while url is not None:
        response = await get(url)
        try:
            page = parse_page(response.body, content_type, known)
        except ValueError as error:  # one bad answer is this content type's transient trouble, not the run's end
            raise UnreadableAnswer(f"a listing page of {content_type}", error) from None
        yield page
        following = next_page(response)
        url = client.given_url(following) if following else None
