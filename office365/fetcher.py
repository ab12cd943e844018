"""Fetching content blobs (and listing pages) with retries that respect the API's pace.

Throttled and transient answers are retried: the shared ``Gate`` already slows every request down (quota pace,
fewer in flight), so a retry only adds a small jittered backoff, or what ``Retry-After`` asked for. A blob that
keeps failing is deferred, not dropped: it stays pending (the resume point waits for it) and is tried again
later. Only the API's own "this content is gone" answers (AF20050/51/52) skip a blob, and each is counted; so does
a contentUri naming a host other than the Management API's (the access token is sent nowhere else).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

from connectors.retry import Backoff, RetryOn, retrying
from connectors.stopping import Stopping, pause_or_stop
from office365.client import (
    ApiError,
    ApiResponse,
    ForeignUrl,
    ManagementClient,
    Throttled,
    TransientError,
)
from office365.listing import ContentRef
from office365.subscriptions import MissingDlpPermission, fatal

SKIP_CODES = {"AF20050": "vanished", "AF20051": "expired", "AF20052": "invalid_id"}
TRANSIENT_ATTEMPTS = 6
THROTTLED_ATTEMPTS = 30
PERMISSION_WAIT = 3600.0
GET_BACKOFF = functools.partial(Backoff, base=0.5, cap=30.0)
RETRIED = (
    # The pacer holds the gate for as long as the API asks: a throttled retry only adds a short step.
    RetryOn(Throttled, THROTTLED_ATTEMPTS, delay=lambda backoff, _: min(backoff.next_delay(), 2.0)),
    RetryOn(TransientError, TRANSIENT_ATTEMPTS),
)


class Deferred(Exception):
    def __init__(self, reason: str, delay: float):
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


@dataclass(slots=True)
class Fetched:
    ref: ContentRef
    body: bytes | None = None
    skipped: str = ""  # vanished / expired / invalid_id / foreign_host


async def get_with_retries(client: ManagementClient, url: str, what: str, stopping: asyncio.Event) -> ApiResponse:
    """GET, retrying throttled and transient answers; raises the last one when attempts run out."""
    if stopping.is_set():
        raise Stopping()
    return await retrying(functools.partial(client.get, url, what), *RETRIED, backoff=GET_BACKOFF,
                          pause=pause_or_stop(stopping))


async def fetch_blob(client: ManagementClient, ref: ContentRef, stopping: asyncio.Event) -> Fetched:
    try:
        response = await get_with_retries(client, client.given_url(ref.uri), "blob", stopping)
    except (Throttled, TransientError) as error:
        raise Deferred(f"{error} after retries", 30.0) from None
    except ForeignUrl as error:
        return Fetched(ref, skipped="foreign_host")
    except ApiError as error:
        if error.code in SKIP_CODES:
            return Fetched(ref, skipped=SKIP_CODES[error.code])
        if error.status == 404:
            return Fetched(ref, skipped="vanished")
        problem = fatal(error, ref.content_type)
        if isinstance(problem, MissingDlpPermission):
            # Withdrawn after the blob was listed: the lister says so; the blob waits for the permission.
            raise Deferred(str(error), PERMISSION_WAIT) from None
        if problem is not None:
            raise problem from None
        # Unexpected refusal: keep the blob pending and try again much later (the resume point waits for it).
        raise Deferred(str(error), 600.0) from None
    if response.headers.get("Content-Type", "").lower().startswith("text/html"):
        # A gateway's error page with 200, not the blob: its records would be lost as unusable content.
        raise Deferred("an HTML page came instead of the blob", 30.0)
    return Fetched(ref, body=response.body)
