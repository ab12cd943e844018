"""One AMQP connection: protocol headers, SASL, open/begin/attach/flow/transfer/detach/end/close.

Everything is in memory, so frames are handled synchronously inside data_received; outgoing
bytes go straight to the transport (a consumer pump writes a whole credit's worth at once).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from . import frames
from .auth import ALL_CLAIMS
from .codec import Array, DecodeError, Described, Symbol, UByte, UInt, ULong, UShort
from .filters import FilterError, parse_selector, selector_from_source
from .frames import field
from .links import RUNTIME_METRIC, ConsumerLink, Link, ReceivingLink, SendingLink, Session
from .management import put_token, read
from .messages import BATCH_FORMAT, parse_request, response

if TYPE_CHECKING:
    from .broker import Broker
    from .server import EventHubEmulator

_LOG = logging.getLogger(__name__)
_SIZE = struct.Struct(">I")
_CHANNEL = struct.Struct(">H")
EPOCH = "com.microsoft:epoch"
SASL_MECHANISMS = ("MSSBCBS", "PLAIN", "ANONYMOUS")
CONTAINER_ID = "eventhub-emulator"


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _terminus(value: Any) -> list:
    return value.value if isinstance(value, Described) and isinstance(value.value, list) else []


def _address(value: Any) -> str:
    return _text(field(_terminus(value), 0)) or ""


def _entity_parts(address: str) -> list[str]:
    path = urlparse(address).path if "://" in address else address
    return [part for part in path.split("/") if part]


def _link_entity(link: Link) -> tuple[str, str] | None:
    """The entity path of a producer or consumer link, and the claim it needs."""
    if isinstance(link, ConsumerLink):
        return f"{link.hub.name}/consumergroups/{link.group.name}/partitions/{link.partition.id}", "Listen"
    if isinstance(link, ReceivingLink) and link.kind == "publish" and link.hub is not None:
        return link.hub.name + (f"/partitions/{link.partition.id}" if link.partition is not None else ""), "Send"
    return None


class LinkRefused(Exception):
    def __init__(self, condition: str, description: str) -> None:
        super().__init__(description)
        self.condition = condition
        self.description = description


class AmqpConnection(asyncio.Protocol):
    def __init__(self, server: EventHubEmulator) -> None:
        self.server = server
        self.broker: Broker = server.broker
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._buffer = bytearray()
        self._expect_header = True
        self._sasl_done = False
        self._opened = False
        self.closed = False
        self.paused = False
        self.max_frame_size = server.max_frame_size
        self.remote_max_frame_size = 512  # until the peer's open says otherwise
        self.sessions: dict[int, Session] = {}
        self._grants: list[tuple[str, float | None, frozenset[str]]] = []
        self._sasl_plain_ok = False
        self._heartbeat: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_heard = self.loop.time()

    # -- transport callbacks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server.connections.add(self)
        stats = self.broker.stats
        stats.connections_opened_at[:] = [*stats.connections_opened_at[-99:], time.time()]  # start-up bench
        stats.connections_total += 1
        stats.connections_open += 1
        _LOG.debug("connection from %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for timer in (self._heartbeat, self._watchdog):
            if timer is not None:
                timer.cancel()
        for session in self.sessions.values():
            session.close_links()
        self.sessions.clear()
        self.server.connections.discard(self)
        self.broker.stats.connections_open -= 1
        _LOG.debug("connection from %s closed", self.peer)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        for session in tuple(self.sessions.values()):
            for link in tuple(session.links.values()):
                if isinstance(link, SendingLink):
                    link.resume()

    def data_received(self, data: bytes) -> None:
        self._last_heard = self.loop.time()
        buffer = self._buffer
        buffer += data
        pos = 0
        try:
            while not self.closed:
                available = len(buffer) - pos
                if self._expect_header:
                    if available < 8:
                        break
                    header = bytes(buffer[pos : pos + 8])
                    pos += 8
                    self._on_header(header)
                    continue
                if available < 8:
                    break
                size = _SIZE.unpack_from(buffer, pos)[0]
                if size < 8 or size > max(self.max_frame_size, 512):
                    self.close(frames.error("amqp:connection:framing-error", f"Invalid frame size {size}."))
                    break
                if available < size:
                    break
                doff = buffer[pos + 4] * 4
                frame_type = buffer[pos + 5]
                channel = _CHANNEL.unpack_from(buffer, pos + 6)[0]
                body = bytes(buffer[pos + doff : pos + size])
                pos += size
                if body:  # an empty body is a heartbeat
                    self._on_frame(frame_type, channel, body)
        except (DecodeError, ValueError, KeyError, IndexError, TypeError) as exc:
            _LOG.warning("%s: malformed input: %r", self.peer, exc)
            self.close(frames.error("amqp:decode-error", f"Malformed frame: {exc}"))
        except Exception as exc:  # noqa: BLE001 - one bad connection must not take the server down
            _LOG.exception("%s: internal error", self.peer)
            self.close(frames.error("amqp:internal-error", f"Emulator error: {exc!r}"))
        finally:
            del buffer[:pos]

    # -- output ---------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def write_chunks(self, chunks: list[bytes]) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(b"".join(chunks))

    def close(self, error: Described | None = None) -> None:
        if self.closed:
            return
        if self._opened and self.transport is not None:
            self.transport.write(frames.frame(0, frames.CLOSE, [error]))
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- authorization (from $cbs put-token) ---------------------------------------------------
    def grant(self, path: str, expires_at: float | None, claims: frozenset[str] = ALL_CLAIMS) -> None:
        self._grants.append((path, expires_at, claims))
        if expires_at is not None:
            # As the service: links whose token lapsed without a renewal are detached.
            self.loop.call_later(max(0.0, expires_at - time.time()) + 0.2, self._detach_unauthorized_links)

    def has_grant(self) -> bool:
        now = time.time()
        return self._sasl_plain_ok or any(exp is None or exp > now for _, exp, _ in self._grants)

    def authorized(self, entity_path: str, claim: str | None = None) -> bool:
        return self._sasl_plain_ok or any(claim is None or claim in claims for claims in self._covering(entity_path))

    def _covering(self, entity_path: str) -> list[frozenset[str]]:
        """The claims of every unexpired grant covering the entity."""
        entity = entity_path.strip("/").lower()
        now = time.time()
        return [claims for path, expires, claims in self._grants
                if (expires is None or expires > now) and (not path or entity == path or entity.startswith(path + "/"))]

    def missing_claim(self, claim: str, path: str) -> str:
        return (f"Unauthorized access. '{claim}' claim(s) are required to perform this operation. "
                f"Resource: '{self._entity_url(path)}'.")

    def _detach_unauthorized_links(self) -> None:
        if self.closed:
            return
        for session in tuple(self.sessions.values()):
            for link in tuple(session.links.values()):
                path_claim = _link_entity(link)
                if path_claim is not None and not self.authorized(*path_claim):
                    self.broker.stats.links_unauthorized += 1
                    self.detach_link(link, frames.error(
                        "amqp:unauthorized-access",
                        f"ExpiredToken: the token authorizing '{self._entity_url(path_claim[0])}' expired and was "
                        "not renewed on $cbs.",
                    ))

    # -- protocol header and SASL -------------------------------------------------------------
    def _on_header(self, header: bytes) -> None:
        if header == frames.SASL_HEADER and not self._sasl_done:
            mechanisms = Array([Symbol(m) for m in SASL_MECHANISMS], Symbol)
            self.write(header + frames.frame(0, frames.SASL_MECHANISMS, [mechanisms], frame_type=frames.FRAME_SASL))
            self._expect_header = False
        elif header == frames.AMQP_HEADER:
            self.write(frames.AMQP_HEADER)
            self._expect_header = False
        else:
            _LOG.warning("%s: unsupported protocol header %r", self.peer, header)
            self.write(frames.SASL_HEADER if not self._sasl_done else frames.AMQP_HEADER)
            self.close()

    def _on_sasl(self, code: int, fields: list) -> None:
        if code != frames.SASL_INIT:
            self.close()
            return
        mechanism = str(field(fields, 0, ""))
        if mechanism == "PLAIN":
            # PLAIN carries the key itself: a valid pair authorizes the whole connection
            response = field(fields, 1, b"") or b""
            parts = bytes(response).split(b"\0")
            if len(parts) == 3:
                name, secret = parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
                self._sasl_plain_ok = self.broker.keys.get(name) == secret
        # other mechanisms (ANONYMOUS, MSSBCBS) defer authentication to $cbs put-token
        self.write(frames.frame(0, frames.SASL_OUTCOME, [UByte(0)], frame_type=frames.FRAME_SASL))
        self._sasl_done = True
        self._expect_header = True

    # -- frames ---------------------------------------------------------------------------------
    def _on_frame(self, frame_type: int, channel: int, body: bytes) -> None:
        code, fields, payload_at = frames.parse_body(body)
        if frame_type == frames.FRAME_SASL:
            self._on_sasl(code, fields)
            return
        if code == frames.TRANSFER:
            session = self.sessions.get(channel)
            if session is None:
                return
            session.next_incoming_id += 1
            link = session.links.get(field(fields, 0))
            if isinstance(link, ReceivingLink):
                link.on_transfer(fields, body[payload_at:])
            return
        if code == frames.FLOW:
            session = self.sessions.get(channel)
            if session is not None:
                session.on_flow(fields)
        elif code == frames.DISPOSITION:
            pass  # everything we send is pre-settled
        elif code == frames.ATTACH:
            session = self.sessions.get(channel)
            if session is not None:
                self._on_attach(session, fields)
        elif code == frames.DETACH:
            self._on_detach(channel, fields)
        elif code == frames.OPEN:
            self._on_open(fields)
        elif code == frames.BEGIN:
            session = Session(self, channel, fields)
            self.sessions[channel] = session
            self.write(session.begin_frame())
        elif code == frames.END:
            session = self.sessions.pop(channel, None)
            if session is not None:
                session.close_links()
                self.write(frames.frame(channel, frames.END, [None]))
        elif code == frames.CLOSE:
            for session in self.sessions.values():
                session.close_links()
            self.sessions.clear()
            self.close()
        else:
            _LOG.debug("%s: ignoring performative 0x%02x", self.peer, code)

    def _on_open(self, fields: list) -> None:
        self.remote_max_frame_size = max(int(field(fields, 2, 0xFFFFFFFF)), 512)
        idle_ms = field(fields, 4)
        own_idle = self.server.idle_timeout
        self.write(
            frames.frame(
                0,
                frames.OPEN,
                [
                    CONTAINER_ID,
                    None,
                    UInt(self.max_frame_size),
                    UShort(0xFFFF),
                    UInt(int(own_idle * 1000)) if own_idle else None,
                    None,
                    None,
                    None,
                    None,
                    {Symbol("product"): "sekoia-eventhub-emulator"},
                ],
            )
        )
        self._opened = True
        if idle_ms:
            self._schedule_heartbeat(idle_ms / 2000.0)
        if own_idle:
            self._watch_silence(own_idle)

    def _schedule_heartbeat(self, period: float) -> None:
        def beat() -> None:
            if not self.closed:
                self.write(frames.EMPTY_FRAME)
                self._heartbeat = self.loop.call_later(period, beat)

        self._heartbeat = self.loop.call_later(period, beat)

    def _watch_silence(self, idle: float) -> None:
        """Close a connection the peer left silent longer than our idle-time-out (the peer sends empty frames at
        a fraction of it while it has nothing to say)."""
        def check() -> None:
            if self.closed:
                return
            if self.loop.time() - self._last_heard > idle:
                _LOG.info("%s: silent for over %.1f s: closing", self.peer, idle)
                self.close(frames.error(
                    "amqp:connection:forced",
                    f"The connection was inactive for more than the allowed {int(idle * 1000)} milliseconds and is "
                    f"closed by container '{CONTAINER_ID}'."))
                return
            self._watchdog = self.loop.call_later(idle / 4, check)

        self._watchdog = self.loop.call_later(idle / 4, check)

    # -- links ------------------------------------------------------------------------------------
    def _on_attach(self, session: Session, fields: list) -> None:
        name = _text(field(fields, 0)) or ""
        handle = int(field(fields, 1, 0))
        role = bool(field(fields, 2, False))
        source, target = field(fields, 5), field(fields, 6)
        properties = field(fields, 13) or {}
        desired = field(fields, 12) or []
        if not isinstance(desired, list):
            desired = [desired]
        old = session.links.pop(handle, None)
        if old is not None:
            old.release()
        error = None
        link: Link | None = None
        try:
            if role == frames.ROLE_SENDER:
                link = self._receiving_link(session, name, handle, source, target)
            else:
                link = self._sending_link(session, name, handle, source, target, properties, desired)
        except LinkRefused as refusal:
            error = frames.error(refusal.condition, refusal.description)
            _LOG.info("%s: link %r refused: %s %s", self.peer, name, refusal.condition, refusal.description)
        we_send = role == frames.ROLE_RECEIVER
        runtime_metric = isinstance(link, ConsumerLink) and link.runtime_metric
        self.write(
            frames.frame(
                session.channel,
                frames.ATTACH,
                [
                    name,
                    UInt(handle),
                    not role,  # our role is the opposite of the peer's
                    UByte(field(fields, 3, 2)),
                    UByte(field(fields, 4, 0)),
                    source,
                    target,
                    None,
                    None,
                    UInt(0) if we_send else None,
                    ULong(self.broker.max_message_size),
                    Array([Symbol(RUNTIME_METRIC)], Symbol) if runtime_metric else None,
                    None,
                    None,
                ],
            )
        )
        if error is not None or link is None:
            self.write(frames.frame(session.channel, frames.DETACH, [UInt(handle), True, error]))
            return
        session.links[handle] = link
        if isinstance(link, ReceivingLink):
            link.grant()
        elif isinstance(link, ConsumerLink):
            link.partition.listeners.add(link)

    def _authorize(self, path: str, claim: str) -> None:
        if self._covering(path) and not self.authorized(path, claim):
            raise LinkRefused("amqp:unauthorized-access", self.missing_claim(claim, path))
        if not self.authorized(path, claim):
            raise LinkRefused(
                "amqp:unauthorized-access",
                f"Unauthorized access to '{path}': put a valid token on $cbs first.",
            )

    def _entity_url(self, *parts: str) -> str:
        return f"sb://{self.server.host}:{self.server.port}/" + "/".join(parts)

    def _receiving_link(self, session: Session, name: str, handle: int, source: Any, target: Any) -> Link:
        address = _address(target)
        if address == "$cbs":
            return ReceivingLink(session, name, handle, source, target, "cbs")
        if address == "$management":
            return ReceivingLink(session, name, handle, source, target, "management")
        parts = _entity_parts(address)
        if not parts:
            raise LinkRefused("amqp:not-found", f"No entity in target address {address!r}.")
        hub = self.broker.hub(parts[0])
        if hub is None:
            raise LinkRefused(
                "amqp:not-found", f"The messaging entity '{self._entity_url(parts[0])}' could not be found."
            )
        self._authorize("/".join(parts), "Send")
        partition = None
        if len(parts) == 3 and parts[1].lower() == "partitions":
            partition = hub.partition(parts[2])
            if partition is None:
                raise LinkRefused(
                    "com.microsoft:argument-out-of-range",
                    f"The specified partition '{parts[2]}' is invalid for the event hub '{hub.name}' "
                    f"(partition ids 0..{len(hub.partitions) - 1}).",
                )
        elif len(parts) != 1:
            raise LinkRefused("amqp:not-found", f"Unsupported producer address {address!r}.")
        return ReceivingLink(session, name, handle, source, target, "publish", hub, partition)

    def _sending_link(
        self, session: Session, name: str, handle: int, source: Any, target: Any, properties: dict, desired: list
    ) -> Link:
        address = _address(source)
        if address in ("$cbs", "$management"):
            return SendingLink(session, name, handle, source, target)
        parts = _entity_parts(address)
        if len(parts) != 5 or parts[1].lower() != "consumergroups" or parts[3].lower() != "partitions":
            raise LinkRefused(
                "amqp:not-found",
                f"Unsupported consumer address {address!r}: expected HUB/ConsumerGroups/GROUP/Partitions/N.",
            )
        hub = self.broker.hub(parts[0])
        if hub is None:
            raise LinkRefused(
                "amqp:not-found", f"The messaging entity '{self._entity_url(parts[0])}' could not be found."
            )
        self._authorize("/".join(parts), "Listen")
        group = self.broker.consumer_group(hub, parts[2])
        if group is None:
            raise LinkRefused(
                "amqp:not-found",
                f"The messaging entity '{self._entity_url(hub.name, 'ConsumerGroups', parts[2])}' could not be found.",
            )
        partition = hub.partition(parts[4])
        if partition is None:
            raise LinkRefused(
                "com.microsoft:argument-out-of-range",
                f"The specified partition '{parts[4]}' is invalid for the event hub '{hub.name}' "
                f"(partition ids 0..{len(hub.partitions) - 1}).",
            )
        try:
            start = parse_selector(selector_from_source(_terminus(source)))
        except FilterError as exc:
            raise LinkRefused("amqp:invalid-field", str(exc)) from None
        refusal = partition.refusal(start, group.name)
        if refusal is not None:  # as the service: Python's processor then retries the same checkpoint for ever
            raise LinkRefused("com.microsoft:argument-out-of-range", refusal)
        epoch = properties.get(EPOCH) if isinstance(properties, dict) else None
        link = ConsumerLink(
            session,
            name,
            handle,
            source,
            target,
            hub,
            group,
            partition,
            partition.start_seq(start),
            int(epoch) if epoch is not None else None,
            RUNTIME_METRIC in desired,
        )
        refusal, stolen = group.claim(partition.id, link)
        if refusal is not None:
            raise LinkRefused("amqp:link:stolen", refusal)
        for old in stolen:
            self.broker.stats.links_stolen += 1
            old.stolen = True
            old.conn.detach_link(
                old,
                frames.error(
                    "amqp:link:stolen",
                    f"New receiver '{name}' with higher epoch of '{link.epoch}' is created hence current receiver "
                    f"'{old.name}' with epoch '{old.epoch}' is getting disconnected. If you are recreating the "
                    "receiver, make sure a higher epoch is used.",
                ),
            )
        return link

    def detach_link(self, link: Link, error: Described | None) -> None:
        """Server-initiated detach (e.g. stolen by a newer epoch)."""
        session = link.session
        if session.links.get(link.handle) is link:
            del session.links[link.handle]
        link.release()
        self.write(frames.frame(session.channel, frames.DETACH, [UInt(link.handle), True, error]))

    def _on_detach(self, channel: int, fields: list) -> None:
        session = self.sessions.get(channel)
        if session is None:
            return
        handle = field(fields, 0)
        link = session.links.pop(handle, None)
        if link is None:
            return  # we detached it first (refused or stolen): the peer is only confirming
        link.release()
        self.write(frames.frame(channel, frames.DETACH, [UInt(handle), bool(field(fields, 1, False)), None]))

    # -- messages --------------------------------------------------------------------------------
    def on_message(self, link: ReceivingLink, payload: bytes, message_format: int) -> Described:
        """A complete inbound delivery: return its outcome (accepted / rejected)."""
        if link.kind == "publish":
            assert link.hub is not None
            try:
                self.broker.publish(link.hub, link.partition, payload, message_format == BATCH_FORMAT)
            except (DecodeError, ValueError, IndexError) as exc:
                self.broker.stats.publish_rejected += 1
                return frames.rejected("amqp:decode-error", f"The message could not be decoded: {exc}")
            self.broker.stats.publish_deliveries += 1
            return frames.accepted()
        request = parse_request(payload)
        node = "$cbs" if link.kind == "cbs" else "$management"
        status, description, body = put_token(self, request) if link.kind == "cbs" else read(self, request)
        reply_to = _text(request.reply_to)
        reply = self._reply_link(link.session, node, reply_to)
        if reply is None:
            _LOG.warning("%s: no %s reply link for a request", self.peer, node)
        else:
            reply.send(response(request.message_id, status, description, body, to=reply_to))
        return frames.accepted()

    def _reply_link(self, session: Session, node: str, reply_to: str | None) -> SendingLink | None:
        candidates = [
            link
            for s in [session, *(x for x in self.sessions.values() if x is not session)]
            for link in s.links.values()
            if type(link) is SendingLink and _address(link.source) == node
        ]
        for link in candidates:
            if reply_to and _address(link.target) == reply_to:
                return link
        return candidates[0] if candidates else None
