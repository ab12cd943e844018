"""The HTTP client of the Management Activity API: one aiohttp connection pool, every call paced and classified.

Every request passes the ``Gate`` (adaptive concurrency + quota pace), carries a fresh token (401 → renew
once, retry), and ``PublisherIdentifier`` (it picks the throttling pool, blob fetches included). Answers are
sorted into what the caller can act on: throttled, transient (5xx, 408, resets, timeouts), or an API error
with its ``AFxxxxx`` code.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import orjson
from yarl import URL

from connectors import proxy
from connectors.retry import parse_retry_after
from connectors.tls import ssl_context
from office365 import metrics
from office365.auth import TokenProvider
from office365.pacing import Gate

THROTTLE_CODES = {"AF429"}
# A Date header is a clock sample when its answer's headers came within this long of the request: a slower one
# says little about when the API stamped it (unless nothing better was seen yet).
CLOCK_SAMPLE_SECONDS = 1.0


class ApiError(Exception):
    """An answer the caller must act on; ``code`` is the API's AFxxxxx code when there is one."""

    def __init__(self, status: int, code: str = "", message: str = "", retry_after: float | None = None):
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"HTTP {status} {code} {message[:200]}".strip())


class Throttled(ApiError):
    pass


class TransientError(ApiError):
    """Worth retrying: 5xx, 408, connection reset, timeout (status 0 when there was no answer), and an answer 200
    whose body is not what the operation returns (an HTML error page from a gateway)."""


class UnreadableAnswer(TransientError):
    """An answer 200 whose body is not what the operation returns (an HTML error page from a gateway, a cut body)."""

    def __init__(self, what: str, error: Exception):
        super().__init__(200, "", f"{what} is not readable JSON ({str(error)[:100]})")


class ForeignUrl(ApiError):
    """A URL handed back by the API (contentUri, NextPageUri) that names a host other than the Management API's: no
    request is sent to it, so the bearer token never leaves for it."""

    def __init__(self, url: str):
        scheme, host, port = _origin(url)  # never the URL's user info, nor its path and query
        self.host = f"{scheme}://{host}" + (f":{port}" if port is not None else "")
        super().__init__(0, "foreign-host", f"the API named another host ({self.host})")


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) as compared: case-insensitive, the scheme's default port made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1  # a malformed port matches no origin
    return scheme, (parts.hostname or "").lower(), port or {"https": 443, "http": 80}.get(scheme)


@dataclass(slots=True)
class ApiResponse:
    status: int
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    body: bytes

    def json(self):
        return orjson.loads(self.body)


def error_details(body: bytes) -> tuple[str, str]:
    """(code, message) of ``{"error": {"code", "message"}}`` and its variants; empty strings when unreadable."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", body[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("code") or error.get("Code") or ""), str(
                error.get("message") or error.get("Message") or ""
            )
        return str(error), str(data.get("message") or data.get("error_description") or "")
    return "", ""


class ManagementClient:
    def __init__(
        self,
        feed: str,
        publisher_identifier: str,
        tokens: TokenProvider,
        gate: Gate,
        *,
        timeout: float = 30.0,
        pool_size: int = 64,
        user_agent: str = "sekoiaio-connector/office365",
        rewrite_origin: bool = False,
        api_hosts: tuple[str, ...] = (),
        on_throttling: Callable[[str], None] | None = None,
        on_foreign_url: Callable[[str], None] | None = None,
    ):
        self.feed = feed.rstrip("/")
        self.publisher_identifier = publisher_identifier
        self.tokens = tokens
        self.gate = gate
        # ``timeout`` bounds silence, not duration: a 27 MB blob arriving at 600 KB/s takes 45 s and is kept, a
        # peer that sends nothing for ``timeout`` seconds (headers or body) is given up on.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=min(timeout, 10.0), sock_read=timeout)
        self._pool_size = pool_size
        self._user_agent = user_agent
        # URLs the API hands back go to the feed's origin only: the token is for the Management API alone. With a
        # management_url override (proxy, emulator), URLs naming the cloud's own API host (``api_hosts``, e.g.
        # https://manage.office.com) are sent to the override's origin; any other host is refused (ForeignUrl).
        self._origin = urlsplit(self.feed)[:2]
        self._origin_prefix = "{}://{}/".format(*self._origin)
        self._own = _origin(self.feed)
        self._rewritten = {_origin(host) for host in api_hosts} - {self._own} if rewrite_origin else set()
        self._session: aiohttp.ClientSession | None = None
        self._users: dict[aiohttp.ClientSession, int] = {}  # requests under way on each pool, the retired ones too
        self._closing: set[asyncio.Task] = set()
        self._replaced_at = -float("inf")
        self._in_flight: set[asyncio.Future] = set()  # each request's exchange with the API
        self._abandoned: set[asyncio.Future] = set()  # ended by renew_session: retried as a network failure
        self._counters: dict = {}
        self._on_throttling = on_throttling  # told once per episode, with what the pacer does about it
        self._on_foreign_url = on_foreign_url  # told once per host refused
        self._refused_hosts: set[str] = set()
        self.received: Counter[str] = Counter()  # bytes of answer bodies received, by kind of request
        self.clock_offset = 0.0  # the API's clock minus ours, in seconds, from its latest quick Date header
        self._clock_round_trip = float("inf")  # of the sample clock_offset comes from, at least CLOCK_SAMPLE_SECONDS
        self._date: tuple[str, float | None] = ("", None)  # the last Date header read, and its epoch time

    def now(self) -> datetime:
        """The API's time: windows built on it are judged by the API's clock, not by a skewed local one."""
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset)

    async def __aenter__(self) -> ManagementClient:
        self._session = self._new_session()
        return self

    async def __aexit__(self, *exc) -> None:
        sessions = {*self._users, *([self._session] if self._session is not None else [])}
        self._session = None
        self._users.clear()
        await asyncio.gather(*(session.close() for session in sessions), *self._closing, return_exceptions=True)

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, ssl=ssl_context(), ttl_dns_cache=300, keepalive_timeout=30
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={"User-Agent": self._user_agent, "Accept": "application/json"},
            json_serialize=lambda value: orjson.dumps(value).decode(),
            **proxy.session_proxy(self.feed),  # HTTPS_PROXY unless NO_PROXY names the API host
        )

    def renew_session(self) -> None:
        """A new connection pool, and the requests under way ended at once (retried on new connections): those that
        wait on a silent connection the read timeout has not ended yet."""
        self._replace_pool()
        for exchange in self._in_flight:
            self._abandoned.add(exchange)
            exchange.cancel()

    def _replace_pool(self) -> None:
        """New requests go out on a new pool; the old one is closed once the requests under way on it ended."""
        if self._session is None:
            return
        old, self._session = self._session, self._new_session()
        self._replaced_at = time.monotonic()
        if not self._users.get(old):
            self._close_later(old)

    def _release(self, session: aiohttp.ClientSession) -> None:
        users = self._users[session] = self._users.get(session, 1) - 1
        if users <= 0 and session is not self._session:
            self._close_later(session)

    def _close_later(self, session: aiohttp.ClientSession) -> None:
        self._users.pop(session, None)
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _silent(self) -> None:
        """A request got no byte for the read timeout: the pool's idle connections went the same way and may be as
        dead (a NAT or firewall that dropped them sends no reset), so new requests get a new pool, once a timeout."""
        if time.monotonic() - self._replaced_at >= (self._timeout.sock_read or 0):
            self._replace_pool()

    # -- URLs ------------------------------------------------------------------------------------------------

    def operation_url(self, operation: str, **params: str) -> str:
        params = {key: value for key, value in params.items() if value is not None}
        params["PublisherIdentifier"] = self.publisher_identifier
        return f"{self.feed}/{operation}?{urlencode(params)}"

    def given_url(self, url: str) -> str:
        """A URL from the API (contentUri, NextPageUri), kept byte for byte but for our origin and publisher; raises
        ``ForeignUrl`` when it names another host."""
        if not url.startswith(self._origin_prefix):
            origin = _origin(url)
            if origin in self._rewritten:
                parts = urlsplit(url)
                url = urlunsplit((*self._origin, parts.path, parts.query, parts.fragment))
            elif origin != self._own:
                refused = ForeignUrl(url)
                if refused.host not in self._refused_hosts and self._on_foreign_url is not None:
                    self._refused_hosts.add(refused.host)
                    self._on_foreign_url(
                        f"The Management API handed back a URL naming another host ({refused.host}): nothing is sent "
                        f"there (the access token goes to {self._origin_prefix} only); blobs it names are skipped, "
                        "listing pages it names are not listed"
                    )
                raise refused
        if "publisheridentifier=" not in url.lower():
            url += ("&" if "?" in url else "?") + "PublisherIdentifier=" + self.publisher_identifier
        return url

    # -- calls -----------------------------------------------------------------------------------------------

    async def get(self, url: str, what: str) -> ApiResponse:
        return await self.request("GET", url, what)

    async def post(self, url: str, what: str, json: dict | None = None) -> ApiResponse:
        return await self.request("POST", url, what, json=json)

    async def request(self, method: str, url: str, what: str, json: dict | None = None) -> ApiResponse:
        renewed = False
        while True:
            response, token = await self._send(method, url, what, json)
            if response.status == 401 and not renewed:
                renewed = True
                await self.tokens.renew_after_rejection(token)
                continue
            if response.status < 300:
                return response
            code, message = error_details(response.body)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if response.status == 429 or code in THROTTLE_CODES:
                raise Throttled(response.status, code or "AF429", message, retry_after)
            if response.status >= 500 or response.status == 408:
                raise TransientError(response.status, code, message, retry_after)
            raise ApiError(response.status, code, message, retry_after)

    async def _send(self, method: str, url: str, what: str, json: dict | None) -> tuple[ApiResponse, str]:
        started = await self.gate.acquire()
        try:
            # Taken once through the gate: a request paced for a while does not leave with a token about to expire.
            token = await self.tokens.token()
            # A task of its own, so that renew_session can end it: closing a pool does not wake a read that waits
            # on one of its silent connections.
            exchange = asyncio.ensure_future(self._exchange(method, url, what, json, token))
            self._in_flight.add(exchange)
            try:
                response = await exchange
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if exchange not in self._abandoned or (current is not None and current.cancelling()):
                    raise
                self._count(what, "network")
                raise TransientError(0, "", "connection replaced") from None
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
                refused = proxy.refusal(error, url)
                if refused is not None and refused.fatal:
                    raise refused.configuration_error() from None  # 403, 407: retrying cannot help
                self._trouble(started)
                self._count(what, "network")
                if isinstance(error, asyncio.TimeoutError):
                    self._silent()
                detail = "timeout" if isinstance(error, asyncio.TimeoutError) else type(error).__name__
                raise TransientError(0, "", refused.message() if refused else detail) from None
            finally:
                self._in_flight.discard(exchange)
                self._abandoned.discard(exchange)
        finally:
            self.gate.release()
        self._account(response, what, started)
        return response, token

    async def _exchange(self, method: str, url: str, what: str, json: dict | None, token: str) -> ApiResponse:
        session = self._session
        assert session is not None, "use the client as an async context manager"
        self._users[session] = self._users.get(session, 0) + 1
        try:
            sent = time.time()
            async with session.request(
                method,
                URL(url, encoded=True),
                json=json,
                headers={"Authorization": f"Bearer {token}"},
            ) as raw:
                # When the headers arrive, not after the body: a blob may take minutes to come.
                self._learn_clock(raw.headers.get("Date"), sent, time.time())
                chunks = []
                async for chunk in raw.content.iter_any():  # counted as it comes: a slow transfer is progress
                    chunks.append(chunk)
                    self.received[what] += len(chunk)
                return ApiResponse(raw.status, raw.headers, b"".join(chunks))
        finally:
            self._release(session)

    def _learn_clock(self, header: str | None, sent: float, arrived: float) -> None:
        """The API stamped Date between ``sent`` and ``arrived`` (our clock): taken as the middle, the sample is
        off by at most half the round trip, so only quick ones count (the best one until a quick one came)."""
        round_trip = arrived - sent
        if not header or round_trip > max(CLOCK_SAMPLE_SECONDS, self._clock_round_trip):
            return
        if header != self._date[0]:  # whole seconds: most answers repeat the last one, parsed once
            try:
                moment = parsedate_to_datetime(header)
            except (TypeError, ValueError):
                moment = None
            self._date = (header, moment.timestamp() if moment is not None and moment.tzinfo is not None else None)
        stamped = self._date[1]
        if stamped is not None:
            # Whole seconds, truncated: the API's time was within [Date, Date + 1 s).
            self.clock_offset = stamped + 0.5 - (sent + arrived) / 2
            self._clock_round_trip = max(CLOCK_SAMPLE_SECONDS, round_trip)

    def _account(self, response: ApiResponse, what: str, started: float) -> None:
        status = response.status
        throttled = status == 429 or (status == 403 and b"AF429" in response.body[:500])
        if throttled:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            pacer = self.gate.pacer
            if pacer.on_throttled(retry_after, sent=started) and self._on_throttling is not None:
                self._on_throttling(
                    f"The Management API throttles this tenant (HTTP {status} AF429: its quota of requests per minute, "
                    f"shared by every application of the publisher): pacing at {pacer.per_minute or 0:.0f} "
                    "requests/minute and retrying, nothing is skipped"
                )
            metrics.throttled.inc()
            self._count(what, "throttled")
            metrics.quota_pace.set(pacer.per_minute or 0)
            return
        if status >= 500 or status == 408:
            self._count(what, "server_error")
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if status == 503 and retry_after:
                self.gate.pacer.hold(retry_after)
            self._trouble(started)
            return
        if self.gate.pacer.on_accepted():
            metrics.quota_pace.set(self.gate.pacer.per_minute or 0)
        before = self.gate.limit.current
        self.gate.limit.on_success()
        if self.gate.limit.current != before:
            self.gate.wake()
            metrics.concurrency.set(self.gate.limit.current)
        self._count(what, "ok" if status < 400 else "client_error")

    def _count(self, what: str, outcome: str) -> None:
        counter = self._counters.get((what, outcome))
        if counter is None:
            counter = self._counters[(what, outcome)] = metrics.requests.labels(what, outcome)
        counter.inc()

    def _trouble(self, started: float) -> None:
        if self.gate.limit.on_trouble(started):
            metrics.concurrency.set(self.gate.limit.current)
