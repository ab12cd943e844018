"""Per-request misbehaviour: added latency, throttling quota, and injected faults."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque

from aiohttp import web

from .config import EmulatorConfig
from .responses import api_error, reset_connection
from .stats import Stats

WINDOW_SECONDS = 60.0
# Method names used in AF429 messages, by request kind.
THROTTLE_METHODS = {
    "blob": "GetBlob",
    "content_list": "ListContent",
    "notifications": "ListNotifications",
    "subscriptions_start": "StartSubscription",
    "subscriptions_stop": "StopSubscription",
    "subscriptions_list": "ListSubscriptions",
    "dlp_sensitive_types": "GetDlpSensitiveTypes",
}


HTML_KINDS = ("content_list", "subscriptions_list")
GATEWAY_PAGE = "<html><head><title>Service Unavailable</title></head><body><h1>Service Unavailable</h1></body></html>"


class Dropped(Exception):
    """The connection was reset on purpose: the handler must not answer."""


class RequestPolicy:
    def __init__(self, config: EmulatorConfig, stats: Stats):
        self.config = config
        self.stats = stats
        self.rng = random.Random(config.seed ^ 0xFA17)
        self._windows: dict[tuple[str, str], deque] = {}

    async def add_latency(self) -> None:
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000.0)

    def throttle(self, kind: str, tenant: str, publisher: str) -> web.Response | None:
        """Sliding 60 s window per tenant+publisher; answered requests count, throttled ones do not."""
        quota = self.config.quota_per_minute
        if quota <= 0:
            return None
        now = time.monotonic()
        window = self._windows.setdefault((tenant, publisher), deque())
        while window and window[0] <= now - WINDOW_SECONDS:
            window.popleft()
        if len(window) < quota:
            window.append(now)
            return None
        self.stats.count_throttled(kind)
        message = f"Too many requests. Method={THROTTLE_METHODS.get(kind, kind)}, PublisherId={publisher or tenant}"
        if self.config.throttle_status == 429:
            retry_after = max(1, math.ceil(window[0] + WINDOW_SECONDS - now))
            return api_error(429, "AF429", message, {"Retry-After": str(retry_after)})
        return api_error(403, "AF429", message)

    def html_answer(self, kind: str) -> web.Response | None:
        """While html_answers > 0: a listing page or subscription list answered 200 with a gateway's HTML page."""
        if self.config.html_answers <= 0 or kind not in HTML_KINDS:
            return None
        self.config.html_answers -= 1
        self.stats.faults["html"] += 1
        return web.Response(status=200, text=GATEWAY_PAGE, content_type="text/html")

    async def inject_fault(self, request: web.Request) -> web.Response | None:
        """With probability fault_rate: a 500/503 answer, a connection reset, or a hang then a reset."""
        if self.config.fault_rate <= 0 or self.rng.random() >= self.config.fault_rate:
            return None
        kind = self.rng.choice(self.config.fault_kinds)
        if kind == "5xx":
            if self.rng.random() < 0.5:
                self.stats.faults["500"] += 1
                return api_error(500, "AF50000", "An internal server error occurred. Please retry the request.")
            self.stats.faults["503"] += 1
            return api_error(503, "AF50005", "The service is temporarily unavailable. Please retry the request.")
        self.stats.faults[kind] += 1
        if kind == "timeout":
            await asyncio.sleep(self.config.hang_seconds)  # cancelled early if the client gives up
        reset_connection(request)
        raise Dropped()
