"""Sessions and links: credit, windows, inbound (producer / request) and outbound (consumer / reply)
deliveries."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from . import frames
from .codec import Timestamp, UInt, UShort
from .frames import TransferHeader, field
from .messages import annotations_section

if TYPE_CHECKING:
    from .broker import ConsumerGroup, EventHub, Partition
    from .connection import AmqpConnection

_U32 = 0xFFFFFFFF
SESSION_WINDOW = 0x7FFFFFFF  # our incoming/outgoing windows: never the limiting factor
PRODUCER_CREDIT = 1000  # credit granted to senders, topped up when half is used
RUNTIME_METRIC = "com.microsoft:enable-receiver-runtime-metric"


class Session:
    __slots__ = (
        "conn",
        "channel",
        "next_incoming_id",
        "next_outgoing_id",
        "next_delivery_id",
        "remote_incoming_window",
        "links",
    )

    def __init__(self, conn: AmqpConnection, channel: int, fields: list) -> None:
        self.conn = conn
        self.channel = channel  # we answer on the peer's channel number
        self.next_incoming_id = field(fields, 1, 0)
        self.next_outgoing_id = 0
        self.next_delivery_id = 0
        self.remote_incoming_window = field(fields, 2, SESSION_WINDOW)
        self.links: dict[int, Link] = {}  # by the peer's handle (we reuse it as ours)

    def begin_frame(self) -> bytes:
        return frames.frame(
            self.channel,
            frames.BEGIN,
            [
                UShort(self.channel),
                UInt(self.next_outgoing_id),
                UInt(SESSION_WINDOW),
                UInt(SESSION_WINDOW),
                UInt(0xFFFF),
            ],
        )

    def on_flow(self, fields: list) -> None:
        next_incoming = field(fields, 0)
        incoming_window = field(fields, 1, 0)
        base = next_incoming if next_incoming is not None else 0
        self.remote_incoming_window = base + incoming_window - self.next_outgoing_id
        handle = field(fields, 4)
        if handle is not None:
            link = self.links.get(handle)
            if link is not None:
                link.on_flow(fields)
            return
        for link in tuple(self.links.values()):
            if isinstance(link, SendingLink):
                link.resume()
        if field(fields, 9, False):
            self.conn.write(self.flow_frame())

    def flow_frame(self, link: Link | None = None, echo: bool = False) -> bytes:
        values: list[Any] = [
            UInt(self.next_incoming_id & _U32),
            UInt(SESSION_WINDOW),
            UInt(self.next_outgoing_id & _U32),
            UInt(SESSION_WINDOW),
        ]
        if link is not None:
            values += [
                UInt(link.handle),
                UInt(link.delivery_count & _U32),
                UInt(max(link.credit, 0)),
                None,
                link.drain,
                echo,
            ]
        return frames.frame(self.channel, frames.FLOW, values)

    def close_links(self) -> None:
        for link in tuple(self.links.values()):
            link.release()
        self.links.clear()


class Link:
    __slots__ = ("session", "name", "handle", "source", "target", "credit", "delivery_count", "drain", "detached")

    def __init__(self, session: Session, name: str, handle: int, source: Any, target: Any) -> None:
        self.session = session
        self.name = name
        self.handle = handle
        self.source = source
        self.target = target
        self.credit = 0
        self.delivery_count = 0
        self.drain = False
        self.detached = False

    @property
    def conn(self) -> AmqpConnection:
        return self.session.conn

    def on_flow(self, fields: list) -> None:
        if field(fields, 9, False):
            self.conn.write(self.session.flow_frame(self))

    def release(self) -> None:
        """Forget broker-side state (consumer registration); called once when the link goes."""
        self.detached = True


class ReceivingLink(Link):
    """The peer sends: producers (kind 'publish') and $cbs / $management requests."""

    __slots__ = ("kind", "hub", "partition", "_parts", "_first", "_size", "_frames")

    def __init__(
        self,
        session: Session,
        name: str,
        handle: int,
        source: Any,
        target: Any,
        kind: str,
        hub: EventHub | None = None,
        partition: Partition | None = None,
    ) -> None:
        super().__init__(session, name, handle, source, target)
        self.kind = kind
        self.hub = hub
        self.partition = partition
        self._parts: list[bytes] | None = None
        self._first: tuple[int, bool, int] | None = None
        self._size = 0
        self._frames = 0

    def grant(self) -> None:
        self.credit = PRODUCER_CREDIT
        self.conn.write(self.session.flow_frame(self))

    def on_transfer(self, fields: list, payload: bytes) -> None:
        if self._first is None:
            self._first = (field(fields, 1, 0), bool(field(fields, 4, False)), field(fields, 3, 0))
            self._parts = []
            self._size = 0
            self._frames = 0
        if field(fields, 9, False):  # aborted: drop what arrived so far
            self._first = self._parts = None
            return
        self._size += len(payload)
        self._frames += 1
        limit = self.conn.broker.max_message_size
        if self._size <= limit:
            self._parts.append(payload)  # type: ignore[union-attr]
        else:
            self._parts = []  # too large: stop buffering, keep counting to report the size
        if field(fields, 5, False):  # more frames follow
            return
        delivery_id, settled, message_format = self._first
        parts, size = self._parts, self._size
        self._first = self._parts = None
        self.delivery_count += 1
        self.credit -= 1
        if self._frames > 1:
            self.conn.broker.stats.multi_frame_in += 1
        if self.credit <= PRODUCER_CREDIT // 2:
            self.grant()
        if size > limit:
            outcome = frames.rejected(
                "amqp:link:message-size-exceeded",
                f"The received message (delivery-id:{delivery_id}, size:{size} bytes) exceeds the limit "
                f"({limit} bytes) currently allowed on the link.",
            )
            self.conn.broker.stats.publish_rejected += 1
        else:
            message = parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[index,arg-type]
            outcome = self.conn.on_message(self, message, message_format)
        if not settled:
            self.conn.write(
                frames.frame(
                    self.session.channel,
                    frames.DISPOSITION,
                    [frames.ROLE_RECEIVER, UInt(delivery_id), UInt(delivery_id), True, outcome, False],
                )
            )


class SendingLink(Link):
    """We send: replies to $cbs / $management requests (messages queue until credit arrives)."""

    __slots__ = ("outbox",)

    def __init__(self, session: Session, name: str, handle: int, source: Any, target: Any) -> None:
        super().__init__(session, name, handle, source, target)
        self.outbox: deque[bytes] = deque()

    def on_flow(self, fields: list) -> None:
        peer_count = field(fields, 5)
        credit = field(fields, 6, 0)
        base = peer_count if peer_count is not None else 0  # our initial delivery count is 0
        self.credit = base + credit - self.delivery_count
        self.drain = bool(field(fields, 8, False))
        self.resume()
        if self.drain and self.credit > 0:
            # nothing more to send: consume the remaining credit and tell the peer
            self.delivery_count += self.credit
            self.credit = 0
            self.conn.write(self.session.flow_frame(self))
        elif field(fields, 9, False):
            self.conn.write(self.session.flow_frame(self))

    def send(self, payload: bytes) -> None:
        self.outbox.append(payload)
        self.resume()

    def resume(self) -> None:
        session = self.session
        while self.outbox and self.credit > 0 and not self.detached:
            payload = self.outbox.popleft()
            delivery_id = session.next_delivery_id & _U32
            chunks = frames.transfer_frames(
                session.channel,
                self.handle,
                delivery_id,
                delivery_id.to_bytes(4, "big"),
                payload,
                self.conn.remote_max_frame_size,
                settled=True,
            )
            session.next_delivery_id += 1
            session.next_outgoing_id += len(chunks)
            session.remote_incoming_window -= len(chunks)
            self.delivery_count += 1
            self.credit -= 1
            self.conn.write_chunks(chunks)


class ConsumerLink(SendingLink):
    """Streams a partition to a consumer: pre-settled deliveries of the stored wire bytes,
    as many as the link credit (and the peer's session window) allows."""

    __slots__ = ("hub", "group", "partition", "next_seq", "epoch", "runtime_metric", "_header", "_scheduled",
                 "stolen", "stuck")

    def __init__(
        self,
        session: Session,
        name: str,
        handle: int,
        source: Any,
        target: Any,
        hub: EventHub,
        group: ConsumerGroup,
        partition: Partition,
        next_seq: int,
        epoch: int | None,
        runtime_metric: bool,
    ) -> None:
        super().__init__(session, name, handle, source, target)
        self.hub = hub
        self.group = group
        self.partition = partition
        self.next_seq = next_seq
        self.epoch = epoch
        self.stolen = False
        self.stuck = False  # delivers nothing more, attached and with its connection alive (a test's fault)
        self.runtime_metric = runtime_metric
        self._header = TransferHeader(session.channel, handle)
        self._scheduled = False

    def wake(self) -> None:
        """New events in the partition: pump on the next loop iteration (coalesces publishes)."""
        if not self._scheduled and self.credit > 0 and not self.detached:
            self._scheduled = True
            self.conn.loop.call_soon(self.pump)

    def resume(self) -> None:  # credit or window changed (SendingLink.on_flow), or writable again
        self.pump()

    def pump(self) -> None:
        self._scheduled = False
        conn = self.conn
        if self.detached or conn.paused or self.credit <= 0 or self.stuck:
            return
        partition = self.partition
        seq = max(self.next_seq, partition.base_seq)  # events below base_seq were trimmed
        session = self.session
        count = min(self.credit, partition.next_seq - seq, session.remote_incoming_window)
        if count <= 0:
            self.next_seq = seq
            return
        first = seq - partition.base_seq
        wires = partition.wires[first : first + count]
        chunks: list[bytes] = []
        append = chunks.append
        delivery_id = session.next_delivery_id
        frame_count = count
        room = conn.remote_max_frame_size - TransferHeader.SIZE
        pack = self._header.pack
        size = 0
        if self.runtime_metric:
            wires = self._with_runtime_metric(wires, partition.header_lens[first : first + count])
        for wire in wires:
            length = len(wire)
            size += length
            if length <= room:
                append(pack(length, delivery_id & _U32))
                append(wire)
            else:  # larger than the peer's frame size: split (rare)
                split = frames.transfer_frames(
                    session.channel,
                    self.handle,
                    delivery_id & _U32,
                    (delivery_id & _U32).to_bytes(4, "big"),
                    wire,
                    conn.remote_max_frame_size,
                    settled=True,
                )
                chunks.extend(split)
                frame_count += len(split) - 1
                conn.broker.stats.multi_frame_out += 1
            delivery_id += 1
        session.next_delivery_id = delivery_id
        session.next_outgoing_id += frame_count
        session.remote_incoming_window -= frame_count
        self.delivery_count += count
        self.credit -= count
        self.next_seq = seq + count
        stats = conn.broker.stats
        stats.events_delivered += count
        stats.bytes_delivered += size
        conn.write_chunks(chunks)

    def _with_runtime_metric(self, wires: list[bytes], header_lens: list[int]) -> list[bytes]:
        """track_last_enqueued_event_properties: per-delivery annotations after the header."""
        partition = self.partition
        section = annotations_section(
            {
                "last_enqueued_sequence_number": partition.next_seq - 1,
                "last_enqueued_offset": str(partition.last_offset),
                "last_enqueued_time_utc": Timestamp(partition.last_time),
                "runtime_info_retrieval_time_utc": Timestamp(int(time.time() * 1000)),
            }
        )
        return [wire[:h] + section + wire[h:] for wire, h in zip(wires, header_lens)]

    def release(self) -> None:
        if not self.detached:
            self.partition.listeners.discard(self)
            self.group.release(self.partition.id, self)
            self.conn.broker.receivers_ended.append(
                {"at": time.time(), "hub": self.hub.name, "consumer_group": self.group.name,
                 "partition": self.partition.id, "stolen": self.stolen}
            )
        super().release()
