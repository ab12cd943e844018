"""Management Activity API: /api/v1.0/{tenant}/activity/feed/... (subscriptions, content listing, blobs)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import os
import time
from email.utils import formatdate

import orjson
from aiohttp import web
from yarl import URL

from .arrival import arrived_at
from .config import CONTENT_TYPES, EmulatorConfig
from .content import EXPIRED, VANISHED, ContentStore
from .entra import ROLES, EntraService, InvalidToken
from .policy import Dropped, RequestPolicy
from .responses import JSON_CONTENT_TYPE, api_error, json_response
from .stats import Stats
from .subscriptions import ADMIN_DISABLED, ENABLED, SubscriptionBook
from .timefmt import now_ms, parse_query_time

FEED = "/api/v1.0/{tenant}/activity/feed"
HOUR_US = 3600 * 1_000_000
DAY_US = 24 * HOUR_US
_CANONICAL_TYPES = {ct.lower(): ct for ct in CONTENT_TYPES}
DLP_SENSITIVE_TYPES = [
    {"id": "50842eb7-edc8-4019-85dd-5a5c1f2bb085", "name": "Credit Card Number"},
    {"id": "a44669fe-0d48-453d-a9b1-2cc83f2cba77", "name": "U.S. Social Security Number (SSN)"},
    {"id": "e7dc4711-11b7-4cb0-b88b-2c394a771f0e", "name": "International Banking Account Number (IBAN)"},
    {"id": "cb353f78-2b72-4c3c-8827-92ebe4f69fdf", "name": "ABA Routing Number"},
    {"id": "0e9b3178-9678-47dd-a509-37222ca96b42", "name": "EU Debit Card Number"},
]


_date = (0, "")  # this second's Date header: formatting one per request (6.5 us) was a fourth of our code per blob


def api_date() -> str:
    """The Date header on the API's clock (clock_offset_seconds), as clients are told to honour it."""
    global _date
    second = now_ms() // 1000
    if _date[0] != second:
        _date = (second, formatdate(second, usegmt=True))
    return _date[1]


class BadRequest(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def api_call(kind: str):
    """Shared prelude of every API request: stats, latency, bearer token, quota, injected faults."""

    def decorate(handler):
        @functools.wraps(handler)
        async def wrapper(self: "ActivityApi", request: web.Request) -> web.StreamResponse:
            params = {key.lower(): value for key, value in request.query.items()}
            publisher = params.get("publisheridentifier", "")
            stats = self.stats
            stats.requests[kind] += 1
            stats.publishers[publisher] += 1
            stats.publisher_kinds[f"{publisher or '(none)'} {kind}"] += 1
            try:
                await self.policy.add_latency()
                tenant = request.match_info["tenant"]
                response = (
                    self._authorize(request, tenant)
                    or self.policy.throttle(kind, tenant, publisher)
                    or await self.policy.inject_fault(request)
                    or self.policy.html_answer(kind)
                )
                if response is None:
                    try:
                        response = await handler(self, request, tenant, params)
                    except BadRequest as exc:
                        response = api_error(exc.status, exc.code, exc.message)
            except Dropped:
                raise asyncio.CancelledError() from None  # connection already reset: send nothing
            stats.responses[f"{kind} {response.status}"] += 1
            if not response.prepared:
                response.headers["Date"] = api_date()
            return response

        return wrapper

    return decorate


class ActivityApi:
    def __init__(
        self,
        config: EmulatorConfig,
        store: ContentStore,
        subscriptions: SubscriptionBook,
        entra: EntraService,
        policy: RequestPolicy,
        stats: Stats,
    ):
        self.config = config
        self.store = store
        self.subscriptions = subscriptions
        self.entra = entra
        self.policy = policy
        self.stats = stats
        self._page_secret = os.urandom(16)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{FEED}/subscriptions/start", self.start_subscription),
            web.post(f"{FEED}/subscriptions/stop", self.stop_subscription),
            web.get(f"{FEED}/subscriptions/list", self.list_subscriptions),
            web.get(f"{FEED}/subscriptions/content", self.list_content),
            web.get(f"{FEED}/subscriptions/notifications", self.list_notifications),
            web.get(f"{FEED}/audit/{{content_id}}", self.get_blob),
            web.get(f"{FEED}/resources/dlpSensitiveTypes", self.dlp_sensitive_types),
        ]

    # ------------------------------------------------------------------ auth
    def _authorize(self, request: web.Request, tenant: str) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        reason = None
        if scheme.lower() != "bearer" or not token.strip():
            reason = "no bearer token in the Authorization header"
        else:
            try:
                claims = self.entra.validate_access_token(token.strip(), arrived_at(request))
            except InvalidToken as exc:
                reason = str(exc)
        if reason:
            self.stats.auth_failures[reason.split(" (")[0]] += 1
            challenge = (
                f'Bearer authorization_uri="https://{request.host}/common/oauth2/authorize", '
                f'error="invalid_token", error_description="{reason}"'
            )
            return api_error(
                401,
                "InvalidToken",
                f"Authorization has been denied for this request: {reason}.",
                {"WWW-Authenticate": challenge},
            )
        if str(claims.get("tid", "")).lower() != tenant.lower():
            self.stats.auth_failures["tenant mismatch"] += 1
            return api_error(
                401,
                "AF20010",
                f"The tenant ID passed in the URL ({tenant}) does not match the tenant ID passed in the access "
                f"token ({claims.get('tid')}).",
            )
        roles = claims.get("roles", [])
        if ROLES[0] not in roles:
            return api_error(
                401, "AF10001", "The permission set sent in the request does not include ActivityFeed.Read."
            )
        if self._concerns_dlp(request) and (ROLES[1] not in roles or not self.config.dlp_permission):
            self.stats.auth_failures["no ActivityFeed.ReadDlp"] += 1
            return api_error(
                401, "AF10001", "The permission set sent in the request does not include ActivityFeed.ReadDlp."
            )
        return None

    @staticmethod
    def _concerns_dlp(request: web.Request) -> bool:
        """DLP.All content needs ActivityFeed.ReadDlp: its subscription, listings and blobs."""
        content_type = next((v for k, v in request.query.items() if k.lower() == "contenttype"), "")
        return content_type.lower() == "dlp.all" or "$dlp_all$" in request.match_info.get("content_id", "")

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _content_type(params: dict) -> str:
        raw = params.get("contenttype")
        if not raw:
            raise BadRequest("AF20001", "Missing parameter: contentType.")
        content_type = _CANONICAL_TYPES.get(raw.lower())
        if content_type is None:
            raise BadRequest("AF20020", f"Invalid content type: {raw}. Expected one of {', '.join(CONTENT_TYPES)}.")
        return content_type

    def _require_subscription(self, content_type: str) -> None:
        state = self.subscriptions.state(content_type)
        if state == ADMIN_DISABLED:
            raise BadRequest(
                "AF20023", f"The subscription for {content_type} was disabled by the tenant administrator."
            )
        if state != ENABLED:
            raise BadRequest("AF20022", f"No subscription found for the specified content type: {content_type}.")

    def _window(self, params: dict, content_type: str) -> tuple[int, int, int]:
        """(start_us, end_us, first list position) from startTime/endTime and nextPage."""
        start_raw, end_raw = params.get("starttime"), params.get("endtime")
        if bool(start_raw) != bool(end_raw):
            raise BadRequest("AF20055", "StartTime and EndTime must both be specified (or both omitted).")
        page_token = params.get("nextpage")
        explicit = None
        if start_raw:
            try:
                explicit = parse_query_time(start_raw), parse_query_time(end_raw)
            except ValueError:
                raise BadRequest("AF20055", f"Invalid StartTime or EndTime: {start_raw!r}, {end_raw!r}.") from None
            self._check_window(*explicit)
        if page_token:
            start_us, end_us, index = self._decode_page_token(page_token, content_type)
            if explicit and explicit != (start_us, end_us):
                raise BadRequest("AF20031", f"Invalid nextPage Input: {page_token} (it belongs to another window).")
            return start_us, end_us, index
        if explicit:
            return explicit[0], explicit[1], 0
        end_us = now_ms() * 1000
        return end_us - DAY_US, end_us, 0

    def _check_window(self, start_us: int, end_us: int) -> None:
        if end_us < start_us:
            raise BadRequest("AF20055", "EndTime must not be earlier than StartTime.")
        span = end_us - start_us
        if span > DAY_US or (self.config.strict_24h and span == DAY_US):
            limit = "less than" if self.config.strict_24h else "at most"
            raise BadRequest("AF20055", f"StartTime and EndTime must be {limit} 24 hours apart.")
        if start_us < now_ms() * 1000 - 7 * DAY_US - HOUR_US:
            raise BadRequest("AF20055", "StartTime must be within the last 7 days.")

    def _page_mac(self, content_type: str, start_us: int, end_us: int, index: int) -> str:
        message = f"{content_type}|{start_us}|{end_us}|{index}".encode()
        return hmac.new(self._page_secret, message, hashlib.sha256).hexdigest()[:16]

    def _encode_page_token(self, content_type: str, start_us: int, end_us: int, index: int) -> str:
        return f"{start_us:x}R{end_us:x}R{index:x}R{self._page_mac(content_type, start_us, end_us, index)}"

    def _decode_page_token(self, token: str, content_type: str) -> tuple[int, int, int]:
        try:
            start_hex, end_hex, index_hex, mac = token.split("R")
            start_us, end_us, index = int(start_hex, 16), int(end_hex, 16), int(index_hex, 16)
        except ValueError:
            raise BadRequest("AF20031", f"Invalid nextPage Input: {token}.") from None
        if not hmac.compare_digest(mac, self._page_mac(content_type, start_us, end_us, index)):
            raise BadRequest("AF20031", f"Invalid nextPage Input: {token}.")
        return start_us, end_us, index

    def _listing(self, request: web.Request, tenant: str, params: dict, notifications: bool) -> web.Response:
        content_type = self._content_type(params)
        self._require_subscription(content_type)
        start_us, end_us, index = self._window(params, content_type)
        blobs, next_index = self.store.page(content_type, start_us, end_us, index, self.config.page_size)
        base = f"https://{self.config.content_uri_host or request.host}/api/v1.0/{tenant}/activity/feed"
        entries = [self.store.listing_entry(blob, base) for blob in blobs]
        if notifications:
            for entry in entries:
                entry.update(notificationSent=entry["contentCreated"], notificationStatus="Success")
        headers = None
        if next_index is not None:
            query = [(k, v) for k, v in request.query.items() if k.lower() != "nextpage"]
            query.append(("nextPage", self._encode_page_token(content_type, start_us, end_us, next_index)))
            url = request.url.with_query(query)
            if self.config.next_page_host:
                url = URL(f"https://{self.config.next_page_host}{url.raw_path_qs}", encoded=True)
            headers = {self.config.next_page_header: str(url)}
        return json_response(entries, headers=headers)

    # ------------------------------------------------------------------ operations
    @api_call("subscriptions_start")
    async def start_subscription(self, request, tenant, params):
        content_type = self._content_type(params)
        webhook = None
        raw = await request.read()
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise BadRequest("AF20001", "The request body is not valid JSON.") from None
            webhook = body.get("webhook") if isinstance(body, dict) else None
            if webhook is not None and not isinstance(webhook, dict):
                raise BadRequest("AF20001", "webhook must be an object.")
        subscription = self.subscriptions.start(content_type, webhook)
        if subscription is None:
            raise BadRequest("AF20024", "The subscription is already enabled. No property change.")
        return json_response(subscription.as_json())

    @api_call("subscriptions_stop")
    async def stop_subscription(self, request, tenant, params):
        content_type = self._content_type(params)
        if not self.subscriptions.stop(content_type):
            raise BadRequest("AF20022", f"No subscription found for the specified content type: {content_type}.")
        return web.Response(status=200)

    @api_call("subscriptions_list")
    async def list_subscriptions(self, request, tenant, params):
        return json_response(self.subscriptions.listing())

    @api_call("content_list")
    async def list_content(self, request, tenant, params):
        return self._listing(request, tenant, params, notifications=False)

    @api_call("notifications")
    async def list_notifications(self, request, tenant, params):
        return self._listing(request, tenant, params, notifications=True)

    @api_call("blob")
    async def get_blob(self, request, tenant, params):
        content_id = request.match_info["content_id"]
        parts = content_id.split("$")
        if len(parts) != 5 or not (parts[0].isdigit() and parts[1].isdigit()):
            raise BadRequest("AF20052", f"Invalid content id: {content_id}.")
        blob = self.store.lookup(content_id)
        if blob is None or not self.store.is_visible(blob, time.monotonic()):
            raise BadRequest("AF20050", "The requested content does not exist.", status=404)
        if blob.state == VANISHED:
            raise BadRequest("AF20050", "The requested content does not exist.", status=404)
        if blob.state == EXPIRED:
            raise BadRequest("AF20051", f"The requested content has expired: {content_id}.")
        body = self.store.body(blob)
        self.stats.blobs_served += 1
        self.stats.blob_bytes += len(body)
        if self.config.blob_bytes_per_second > 0:
            return await self._trickle(request, body)
        return json_response(body)

    async def _trickle(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """A slow transfer that keeps arriving: a tenth of a second's worth of bytes every tenth of a second."""
        response = web.StreamResponse(headers={"Content-Type": JSON_CONTENT_TYPE, "Date": api_date()})
        response.content_length = len(body)
        await response.prepare(request)
        view = memoryview(body)
        while view:
            chunk = max(1, int(self.config.blob_bytes_per_second / 10))
            await response.write(bytes(view[:chunk]))
            view = view[chunk:]
            if view:
                await asyncio.sleep(0.1)
        await response.write_eof()
        return response

    @api_call("dlp_sensitive_types")
    async def dlp_sensitive_types(self, request, tenant, params):
        return json_response(DLP_SENSITIVE_TYPES)
