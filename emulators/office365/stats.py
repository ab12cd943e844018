"""Counters for GET /_emulator/stats."""

from __future__ import annotations

import time
from collections import Counter, deque

from aiohttp import web


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.since = time.time()
        self.started = time.monotonic()
        self.requests: Counter[str] = Counter()  # by kind: token, blob, content_list, ...
        self.responses: Counter[str] = Counter()  # "kind status", e.g. "blob 200"
        self.throttled: Counter[str] = Counter()  # by kind
        # When each throttled answer went, in seconds since the reset (the last ones): how a client backs off.
        self.throttled_at: deque[float] = deque(maxlen=1000)
        self.faults: Counter[str] = Counter()  # 500, 503, reset, timeout, token_503, token_reset
        self.publishers: Counter[str] = Counter()  # PublisherIdentifier ("" when absent)
        self.publisher_kinds: Counter[str] = Counter()  # "publisher kind"
        self.tokens_issued: Counter[str] = Counter()  # by credential: client_secret, client_assertion
        self.token_errors: Counter[str] = Counter()  # by AADSTS code
        self.auth_failures: Counter[str] = Counter()  # API 401/AF20010 reasons
        self.blob_bytes = 0
        self.blobs_served = 0
        self.first_request_at: float | None = None  # epoch seconds: the start-up bench's "first request"

    @web.middleware
    async def stamp_first_request(self, request: web.Request, handler):
        if self.first_request_at is None and not request.path.startswith("/_emulator"):
            self.first_request_at = time.time()
        return await handler(request)

    def count_throttled(self, kind: str) -> None:
        self.throttled[kind] += 1
        self.throttled_at.append(round(time.monotonic() - self.started, 3))

    def snapshot(self) -> dict:
        return {
            "since": self.since,
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "responses": dict(self.responses),
            "throttled": dict(self.throttled),
            "throttled_total": sum(self.throttled.values()),
            "throttled_at": list(self.throttled_at),
            "faults": dict(self.faults),
            "faults_total": sum(self.faults.values()),
            "publishers": {k or "(none)": v for k, v in self.publishers.items()},
            "publisher_kinds": dict(self.publisher_kinds),
            "tokens_issued": sum(self.tokens_issued.values()),
            "tokens_issued_by_credential": dict(self.tokens_issued),
            "token_errors": dict(self.token_errors),
            "auth_failures": dict(self.auth_failures),
            "blobs_served": self.blobs_served,
            "blob_bytes": self.blob_bytes,
            "first_request_at": self.first_request_at,
        }
