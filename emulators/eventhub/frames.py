"""AMQP frames: protocol headers, performative encoding/decoding, the hot-path transfer header.

The client reads performative fields by position (e.g. attach[13], transfer payload at [11]),
so every performative is sent with *all* its fields, trailing nulls included.
"""

from __future__ import annotations

import struct
from typing import Any

from .codec import Described, Symbol, UInt, ULong, decode, encode_list

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
EMPTY_FRAME = b"\x00\x00\x00\x08\x02\x00\x00\x00"

FRAME_AMQP = 0
FRAME_SASL = 1

OPEN = 0x10
BEGIN = 0x11
ATTACH = 0x12
FLOW = 0x13
TRANSFER = 0x14
DISPOSITION = 0x15
DETACH = 0x16
END = 0x17
CLOSE = 0x18
SASL_MECHANISMS = 0x40
SASL_INIT = 0x41
SASL_OUTCOME = 0x44

ERROR = 0x1D
ACCEPTED = 0x24
REJECTED = 0x25
SOURCE = 0x28
TARGET = 0x29

# field counts: pad every outgoing performative to its full length
FIELD_COUNT = {
    OPEN: 10,
    BEGIN: 8,
    ATTACH: 14,
    FLOW: 11,
    TRANSFER: 11,
    DISPOSITION: 6,
    DETACH: 3,
    END: 1,
    CLOSE: 1,
    SASL_MECHANISMS: 1,
    SASL_OUTCOME: 2,
}

ROLE_SENDER = False
ROLE_RECEIVER = True

_HEADER = struct.Struct(">IBBH")


def frame(channel: int, code: int, fields: list, payload: bytes = b"", frame_type: int = FRAME_AMQP) -> bytes:
    """Encode one frame carrying performative `code` (fields padded with nulls)."""
    full = list(fields) + [None] * (FIELD_COUNT[code] - len(fields))
    body = bytearray(b"\x00\x53")
    body.append(code)
    encode_list(body, full, allow_list0=False)
    return _HEADER.pack(len(body) + len(payload) + 8, 2, frame_type, channel) + bytes(body) + payload


def parse_body(body: bytes) -> tuple[int, list, int]:
    """Decode a frame body: (performative code, fields, offset of the payload in body)."""
    value, end = decode(body, 0)
    if not isinstance(value, Described):
        raise ValueError("frame body is not a described performative")
    fields = value.value if isinstance(value.value, list) else []
    return int(value.descriptor), fields, end


def field(fields: list, index: int, default: Any = None) -> Any:
    """Peers may trim trailing null fields: read positions defensively."""
    if index < len(fields):
        value = fields[index]
        return default if value is None else value
    return default


def error(condition: str, description: str | None = None, info: dict | None = None) -> Described:
    return Described(ULong(ERROR), [Symbol(condition), description, info])


def accepted() -> Described:
    return Described(ULong(ACCEPTED), [])


def rejected(condition: str, description: str) -> Described:
    return Described(ULong(REJECTED), [error(condition, description)])


class TransferHeader:
    """Pre-packed transfer frame header for pre-settled, single-frame deliveries to a consumer.

    Layout: frame header | 0x00 0x53 0x14 list8(11 fields): handle uint, delivery-id uint,
    delivery-tag bin8(4), message-format uint0, settled true, more false, 5 x null.
    """

    _STRUCT = struct.Struct(">IBBH" "3sBBB" "BI" "BI" "BBI" "8s")
    SIZE = _STRUCT.size  # bytes before the message payload
    _LIST_SIZE = SIZE - 13  # list8 size: everything after the size byte (count + fields)
    _TAIL = b"\x43\x41\x42\x40\x40\x40\x40\x40"

    __slots__ = ("_pack", "_channel", "_handle")

    def __init__(self, channel: int, handle: int) -> None:
        self._pack = self._STRUCT.pack
        self._channel = channel
        self._handle = handle

    def pack(self, payload_len: int, delivery_id: int) -> bytes:
        return self._pack(
            self.SIZE + payload_len,
            2,
            0,
            self._channel,
            b"\x00\x53\x14",
            0xC0,
            self._LIST_SIZE,
            11,
            0x70,
            self._handle,
            0x70,
            delivery_id,
            0xA0,
            4,
            delivery_id,
            self._TAIL,
        )


def transfer_frames(
    channel: int,
    handle: int,
    delivery_id: int,
    tag: bytes,
    payload: bytes,
    max_frame_size: int,
    settled: bool,
    message_format: int = 0,
) -> list[bytes]:
    """Generic (slow path) transfer: split `payload` over as many frames as max_frame_size needs."""
    fields = [UInt(handle), UInt(delivery_id), tag, UInt(message_format), settled, True]
    overhead = len(frame(channel, TRANSFER, fields)) + 1
    room = max(max_frame_size - overhead, 1)
    frames = []
    pos = 0
    while True:
        chunk = payload[pos : pos + room]
        pos += len(chunk)
        last = pos >= len(payload)
        fields[5] = not last
        frames.append(frame(channel, TRANSFER, fields, chunk))
        if last:
            return frames
