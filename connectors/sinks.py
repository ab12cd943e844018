"""The two ways a batch reaches the Sekoia runtime, and what the runtime's answers mean.

``IntakeSink`` POSTs to the intake's ``/batch`` API; ``PlaybookSink`` writes a records file in the data path and
sends a playbook event pointing at it. ``post`` (aiohttp, on the trigger's event loop) turns an answer into confirmed
(returns) or an exception saying what to do: ``RetryableError`` (try again), ``Refused`` (never as it is: split),
``Misdirected`` (configuration). Preparing a request is CPU only for the intake (done on the loop); the playbook
sink writes a file, so it says ``local_writes`` and the forwarder prepares and cleans up off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson
from sekoia_automation.constants import INTAKE_PAYLOAD_BYTES_MAX_SIZE

from connectors import proxy
from connectors.errors import ConfigurationError
from connectors.retry import parse_retry_after
from connectors.state import open_private, private_directory
from connectors.tls import ssl_context

_ENVELOPE_BYTES = 1024  # room for the `{"intake_key": ..., "jsons": [...]}` around the events
RETRIED_STATUSES = frozenset({408, 425, 429})
CONFIGURATION_STATUSES = frozenset({401, 403, 404, 405})


class RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Refused(Exception):
    """The runtime refused a request for good (400, 413...): sending it again as it is cannot succeed."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class Misdirected(Exception):
    """The runtime refused the credentials or has no such endpoint (401, 403, 404, 405, a redirect)."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class ProxyRefused(Misdirected):
    """The proxy between us and the runtime refused the tunnel for good (407, 403): its configuration, not ours."""

    def __init__(self, refusal: proxy.ProxyRefusal):
        super().__init__(refusal.status, str(refusal))
        self.refusal = refusal


@dataclass
class Request:
    """One HTTP call to the runtime: events ``[start, stop)`` of the list given to ``prepare``."""

    url: str
    body: bytes
    headers: dict[str, str]
    start: int
    stop: int
    cleanup: Path | None = None


class Sink(Protocol):
    url: str  # where its requests go
    local_writes: bool  # prepare writes files (run it off the loop; clean_up removes them)

    def prepare(self, events: list[bytes]) -> list[Request]: ...

    def configuration_error(self, refusal: Misdirected) -> ConfigurationError: ...


async def post(session: aiohttp.ClientSession, request: Request, timeout: aiohttp.ClientTimeout) -> None:
    """Confirmed, or raises what the answer means: RetryableError, Refused or Misdirected."""
    try:
        # A redirected POST turns into a GET that "succeeds": redirects are answers, not followed.
        async with session.post(request.url, data=request.body, headers=request.headers, timeout=timeout,
                                allow_redirects=False) as response:
            status = response.status
            body = await response.read()  # read whole: the connection goes back to the pool
            retry_after = response.headers.get("Retry-After")
            location = response.headers.get("Location", "?")
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        refused = proxy.refusal(error, request.url)
        if refused is not None and refused.fatal:
            raise ProxyRefused(refused) from None
        if refused is not None:  # a 502, or the proxy down: retried, and said with what the proxy answered
            raise RetryableError(f"runtime unreachable: {refused.message()}") from None
        raise RetryableError(f"runtime unreachable: {type(error).__name__}") from None
    if status < 300:
        return
    detail = body[:400].decode("utf-8", "replace")[:200].replace("\n", " ")
    if status >= 500 or status in RETRIED_STATUSES:
        raise RetryableError(f"runtime answered HTTP {status}: {detail}", parse_retry_after(retry_after))
    if status < 400:
        raise Misdirected(status, f"redirects to {location}")
    if status in CONFIGURATION_STATUSES:
        raise Misdirected(status, detail)
    raise Refused(status, detail)


def client_session(connections: int, url: str) -> aiohttp.ClientSession:
    """The session delivery posts through to ``url`` (made on the loop): ``connections`` kept open to the runtime,
    one per sender. Certificates are always checked, against the authorities ``requests`` trusted
    (``connectors.tls``: ``REQUESTS_CA_BUNDLE`` for a private CA or a TLS-inspecting proxy, else certifi's). A proxy
    from the environment (``HTTPS_PROXY``, ``NO_PROXY``), as ``requests`` honoured, is looked up once here:
    aiohttp's ``trust_env`` would look it up, and read ``~/.netrc``, in a thread at every request."""
    connector = aiohttp.TCPConnector(limit=max(1, connections), ssl=ssl_context())
    return aiohttp.ClientSession(connector=connector, **proxy.session_proxy(url))


class IntakeSink:
    """POSTs ``{"intake_key": KEY, "jsons": [str, ...]}`` to ``{intake}/batch``, in chunks under the payload limit."""

    local_writes = False

    def __init__(self, intake_url: str, intake_key: str, user_agent: str):
        self.url = intake_url.rstrip("/") + "/batch"
        self._prefix = b'{"intake_key":' + orjson.dumps(intake_key) + b',"jsons":['
        self._headers = {"Content-Type": "application/json", "User-Agent": user_agent}

    def prepare(self, events: list[bytes]) -> list[Request]:
        limit = INTAKE_PAYLOAD_BYTES_MAX_SIZE - _ENVELOPE_BYTES
        if not events:
            return []
        # The usual case, one request: a single orjson call for the whole list costs far less than one call per
        # event, and gives the same bytes as the chunked path below.
        whole = orjson.dumps([event.decode("utf-8") for event in events])
        if len(whole) <= limit:
            # One copy into the body (concatenating would make one per operand): batches are megabytes.
            body = b"".join((self._prefix, memoryview(whole)[1:], b"}"))
            return [Request(self.url, body, self._headers, 0, len(events))]
        del whole
        # Each event travels as a JSON string, appended to the body at once: orjson's output holds at least 4 KB
        # whatever its length, so a list of them would hold thousands of times that.
        requests_, body, size, start = [], bytearray(self._prefix), 0, 0
        for index, event in enumerate(events):
            encoded = orjson.dumps(event.decode("utf-8"))
            if index > start and size + len(encoded) + 1 > limit:
                requests_.append(self._request(body, start, index))
                body, size, start = bytearray(self._prefix), 0, index
            if index > start:
                body += b","
            body += encoded
            size += len(encoded) + 1
        requests_.append(self._request(body, start, len(events)))
        return requests_

    def _request(self, body: bytearray, start: int, stop: int) -> Request:
        body += b"]}"
        return Request(self.url, bytes(body), self._headers, start, stop)

    def configuration_error(self, refusal: Misdirected) -> ConfigurationError:
        if isinstance(refusal, ProxyRefused):
            return refusal.refusal.configuration_error()
        if refusal.status in (401, 403):
            return ConfigurationError(
                "intake_key", f"the intake at {_origin(self.url)} refused it (HTTP {refusal.status}): copy the key "
                "shown on the intake's page in Sekoia.io")
        return ConfigurationError(
            "intake_server", f"{self.url} is not an intake batch API ({refusal}): set it to the intake's base URL "
            "(e.g. https://intake.sekoia.io), or leave it empty to use the runtime's")


class PlaybookSink:
    """Writes the records to a file in the data path and sends a playbook event pointing at it (SDK's send_records)."""

    local_writes = True
    # A request's directory goes once the runtime confirmed it. One left by a request abandoned at a stop (the
    # runtime may still be reading it) or by a crash is removed this long after, at the next run's first batch.
    ABANDONED_AFTER = 3600.0

    def __init__(self, callback_url: str, token: str, data_path: Path, trigger_name: str):
        self.url = callback_url
        self.data_path = Path(data_path)
        self.trigger_name = trigger_name
        self._headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        self._swept = False

    def prepare(self, events: list[bytes]) -> list[Request]:
        """In a thread (``local_writes``): writes the records file."""
        # Audit records: private whatever the process's umask (both levels, like the state directory).
        parent = private_directory(self.data_path / f"{self.trigger_name}_events")
        if not self._swept:
            self._swept = True
            self._sweep(parent)
        directory = private_directory(parent / str(uuid.uuid4()))
        with open_private(directory / "event.json", os.O_WRONLY | os.O_TRUNC) as handle:
            handle.write(b"[" + b",".join(events) + b"]")
        body = orjson.dumps(
            {
                "name": f"{self.trigger_name}-{len(events)}-records",
                "event": {"records_path": "event.json"},
                "directory": str(directory.relative_to(self.data_path)),
                "request_id": str(uuid.uuid4()),
            }
        )
        return [Request(self.url, body, self._headers, 0, len(events), cleanup=directory)]

    def _sweep(self, parent: Path) -> None:
        """Audit records must not pile up in the data path: remove the abandoned requests' directories."""
        before = time.time() - self.ABANDONED_AFTER
        for entry in os.scandir(parent):
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove: left as it is
                if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < before:
                    shutil.rmtree(entry.path)

    def configuration_error(self, refusal: Misdirected) -> ConfigurationError:
        if isinstance(refusal, ProxyRefused):
            return refusal.refusal.configuration_error()
        # Without an intake key, events go to the playbook through the runtime's callback URL and token.
        return ConfigurationError(
            "intake_key", f"without it, records go to the playbook, but the runtime refused the trigger's callback "
            f"({_origin(self.url)}, {refusal}): the playbook was deleted or its token revoked; restart the playbook, "
            "or set `intake_key` to send to an intake")


def clean_up(requests_: list[Request]) -> None:
    for request in requests_:
        if request.cleanup is not None:
            shutil.rmtree(request.cleanup, ignore_errors=True)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
