"""Log helpers: secret values never reach a log line, whoever writes it (our code, the SDK or a client library);
a condition is said once, not at every attempt (``OnceLogger``); logging never waits on the runtime (``LogPump``)."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from connectors.proxy import refusal
from connectors.retry import Backoff

LogFunction = Callable[[str, str], None]  # (message, level): how every part of the module logs

MASK = "***"
# Credentials embedded in connection strings and URLs are secrets of their own.
_EMBEDDED = re.compile(r"(?i)(SharedAccessKey|AccountKey|SharedAccessSignature|sig|client_secret)=([^;&\s\"']+)")
_MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words


class Redactor:
    """Replaces every known secret value (and key=value credentials of connection strings) by ``***``."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets: set[str] = set()
        self._pattern: re.Pattern | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str | None]) -> None:
        for secret in secrets:
            if not secret or len(secret) < _MIN_SECRET_LENGTH:
                continue
            self._secrets.add(secret)
            for _, value in _EMBEDDED.findall(secret):
                if len(value) >= _MIN_SECRET_LENGTH:
                    self._secrets.add(value)
            # A PEM key is logged line by line by some libraries: each base64 line is secret too.
            if "-----BEGIN" in secret:
                self._secrets.update(line for line in secret.splitlines() if len(line) > 16 and "-----" not in line)
        if self._secrets:
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(secret) for secret in ordered))

    def discard(self, secrets: Iterable[str]) -> None:
        """Forget values that are no longer secret (an expired access token), so a months-long run keeps a
        short list."""
        self._secrets.difference_update(secrets)
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(secret) for secret in ordered)) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return _EMBEDDED.sub(lambda m: f"{m.group(1)}={MASK}", text)


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redactor(message)
        if redacted != message or record.exc_info:
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.redactor(record.exc_text)
            record.msg, record.args = redacted, None
        return True


def install_redaction(redactor: Redactor) -> None:
    """Filter every handler of the root logger (where the SDK's and the client libraries' records end up)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(redactor))


def format_duration(seconds: float) -> str:
    """``45s``, ``12 min 5s``, ``3 h 20 min``: durations as a person reads them in a log line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60}s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class OnceLogger:
    """Said once per outage: one line when a condition begins, silence while it lasts, one line with how long it
    lasted when it ends.

    For conditions met again at every attempt (an endpoint failing, a store unreachable): ``began`` at every
    failure, ``ended`` at every success; only the first of each is said. ``key`` tells apart conditions that come
    and go independently (one per partition, say). ``remind_every`` says it again while it lasts (with how long
    and how often so far); ``forget_after`` ends, silently, a condition whose end nobody reports (no ``began``
    for that long). Thread-safe: several senders may share one.
    """

    def __init__(
        self,
        log: LogFunction,
        *,
        remind_every: float | None = None,
        forget_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._log = log
        self._remind_every = remind_every
        self._forget_after = forget_after
        self._clock = clock
        self._lock = threading.Lock()
        self._ongoing: dict[str, list[float]] = {}  # key -> [began, last said, last seen, times]

    def began(self, message: str, level: str = "warning", key: str = "", since: float | None = None) -> bool:
        """The condition holds (again), since the clock's ``since`` if known (e.g. when the failed attempt
        started), else now. True when this call said so."""
        now = self._clock()
        with self._lock:
            entry = self._ongoing.get(key)
            if entry is not None and self._forget_after is not None and now - entry[2] >= self._forget_after:
                entry = None
            if entry is None:
                self._ongoing[key] = [now if since is None else since, now, now, 1]
                line = message
            else:
                entry[2], entry[3] = now, entry[3] + 1
                if self._remind_every is None or now - entry[1] < self._remind_every:
                    return False
                entry[1] = now
                line = f"{message} (still so after {format_duration(now - entry[0])}, {entry[3]} times)"
        self._log(line, level)
        return True

    def ended(self, message: str, level: str = "info", key: str = "") -> bool:
        """The condition is over. True when it was ongoing: then the line is said, with how long it lasted."""
        with self._lock:
            entry = self._ongoing.pop(key, None)
        if entry is None:
            return False
        self._log(f"{message} (after {format_duration(self._clock() - entry[0])})", level)
        return True

    def lasting(self, key: str = "") -> float | None:
        """Seconds the condition has lasted; None when it is not ongoing."""
        with self._lock:
            entry = self._ongoing.get(key)
        return None if entry is None else self._clock() - entry[0]


class SampledLog:
    """For events, not conditions (``OnceLogger``): a skipped blob, a refused window. At most one line per key
    and ``interval``; the next line says how many were not logged in between. Thread-safe."""

    def __init__(
        self, log: LogFunction, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ):
        self._log = log
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def __call__(self, key: str, message: str, level: str = "warning") -> None:
        now = self._clock()
        with self._lock:
            if now - self._last.get(key, -math.inf) < self._interval:
                self._quiet[key] = self._quiet.get(key, 0) + 1
                return
            quiet = self._quiet.pop(key, 0)
            self._last[key] = now
        self._log(message + (f" ({quiet} more like it since the last report)" if quiet else ""), level)


_LOW_LEVELS = ("debug", "info")


class LogPump:
    """Log lines for the runtime, sent by one thread: ``put`` never waits, whatever the runtime does.

    The SDK sends logs synchronously and retries for over a minute: from an event loop, that froze every fetcher
    while the runtime was down. Here lines wait in a bounded queue; info and debug lines linger a moment to go in
    batches, warnings and above go at once. While the runtime is away the queue keeps the newest lines: when it
    is full the oldest debug/info line goes first (a warning or an error only when nothing else is left), and
    how many were dropped is said once the runtime answers again. ``flush`` waits, boundedly, for what is queued
    (a critical line before exit).
    """

    def __init__(
        self,
        send: Callable[[list[dict]], None],
        say: LogFunction,
        *,
        capacity: int = 2000,
        batch_size: int = 50,
        linger: float = 0.5,
        backoff: Callable[[], Backoff] = lambda: Backoff(base=1.0, cap=30.0),
        name: str = "runtime-logs",
    ):
        self._send = send
        self._capacity = capacity
        self._batch_size = batch_size
        self._linger = linger
        self._backoff = backoff
        self._name = name
        self._cond = threading.Condition()
        self._low: deque[tuple[int, float, dict]] = deque()
        self._high: deque[tuple[int, float, dict]] = deque()
        self._seq = 0
        self._in_flight = 0
        self._flushing = 0
        self._thread: threading.Thread | None = None
        self._say = say
        self.outage = OnceLogger(say)
        self.dropped: Counter[str] = Counter()  # since the last time it was said

    # -- callers ---------------------------------------------------------------------------------------------

    def put(self, message: str, level: str) -> None:
        entry = {"date": datetime.now(UTC).replace(tzinfo=None).isoformat(), "level": level, "message": message}
        with self._cond:
            self._seq += 1
            (self._low if level in _LOW_LEVELS else self._high).append((self._seq, time.monotonic(), entry))
            if len(self._low) + len(self._high) > self._capacity:
                dropped = (self._low or self._high).popleft()
                self.dropped[dropped[2]["level"]] += 1
            self._cond.notify_all()
            self._start()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued line was sent, for at most ``timeout`` seconds; True when they were."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()  # cuts a linger or a backoff short
            try:
                while self._low or self._high or self._in_flight:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._flushing -= 1

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._low) + len(self._high) + self._in_flight

    # -- the thread ------------------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:  # caller holds the lock
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        backoff = self._backoff()
        batch: list[dict] = []
        retry_at = failed_at = 0.0
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if batch and self._flushing:
                        retry_at = min(retry_at, failed_at + 0.5)  # someone waits: try again soon
                    if batch and now >= retry_at:
                        break
                    if not batch and self._ready(now):
                        batch = self._take()
                        self._in_flight = len(batch)
                        break
                    wake = retry_at if batch else self._linger_until()
                    self._cond.wait(None if wake == math.inf else max(0.001, wake - now))
            attempt = time.monotonic()
            try:
                self._send(batch)
            except Exception as error:  # noqa: BLE001 - any failure: keep the lines and try again
                failed_at = time.monotonic()
                retry_at = failed_at + backoff.next_delay()
                self.outage.began(
                    f"Sending logs to the runtime failed ({describe_error(error)}); they wait here (the newest "
                    f"{self._capacity} lines) and go once it answers", "warning", since=attempt)
                continue
            backoff.reset()
            with self._cond:
                batch, self._in_flight = [], 0
                dropped, self.dropped = self.dropped, Counter()
                self._cond.notify_all()
            lost = f"; {sum(dropped.values())} log lines were dropped meanwhile ({_levels(dropped)})" if dropped else ""
            if not self.outage.ended(f"The runtime accepts logs again{lost}") and dropped:
                self._say(f"{sum(dropped.values())} log lines were dropped, the queue being full ({_levels(dropped)})",
                          "warning")

    def _ready(self, now: float) -> bool:
        """Something to send now (caller holds the lock)."""
        if self._high or self._flushing or len(self._low) >= self._batch_size:
            return True
        return bool(self._low) and now - self._low[0][1] >= self._linger

    def _linger_until(self) -> float:
        return self._low[0][1] + self._linger if self._low else math.inf

    def _take(self) -> list[dict]:
        """The oldest lines, both deques merged in the order they were put (caller holds the lock)."""
        batch = []
        while len(batch) < self._batch_size and (self._low or self._high):
            if not self._high or (self._low and self._low[0][0] < self._high[0][0]):
                batch.append(self._low.popleft()[2])
            else:
                batch.append(self._high.popleft()[2])
        return batch


def _levels(counts: Counter) -> str:
    return ", ".join(f"{count} {level}" for level, count in sorted(counts.items()))


def describe_error(error: BaseException) -> str:
    """A short, secret-free description of a failure: its class, the HTTP status and the service's error code when
    it has them, or what a proxy on the way answered; never a URL (it may hold a token) nor a body."""
    refused = refusal(error, "")
    if refused is not None:
        return refused.message()
    response = getattr(error, "response", None)
    status = getattr(error, "status_code", None) or getattr(response, "status_code", None)
    code = getattr(error, "error_code", None) or getattr(response, "reason", None)
    code = getattr(code, "value", code)
    parts = [type(error).__name__]
    if status:
        parts.append(f"HTTP {status}")
    if code:
        parts.append(str(code))
    if isinstance(error, TimeoutError):
        parts.append("timed out")
    return " ".join(parts)
