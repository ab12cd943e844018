"""AMQP message sections: splitting producer payloads into events, stamping Event Hubs
annotations, and building request/response messages for $cbs and $management.

An event is stored as the exact bytes a consumer will receive: the producer's header,
properties, application properties and body are copied verbatim; only the message-annotations
section is rebuilt (producer annotations + x-opt-* system annotations). It is built once at
publish time so delivery is a plain copy.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from .codec import DecodeError, Described, Int, Symbol, ULong, decode, encode, skip

BATCH_FORMAT = 0x80013700

HEADER = 0x70
DELIVERY_ANNOTATIONS = 0x71
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
AMQP_VALUE = 0x77

PARTITION_KEY = "x-opt-partition-key"
SEQUENCE_NUMBER = "x-opt-sequence-number"
OFFSET = "x-opt-offset"
ENQUEUED_TIME = "x-opt-enqueued-time"
_SYSTEM_KEYS = frozenset((SEQUENCE_NUMBER, OFFSET, ENQUEUED_TIME))

_I = struct.Struct(">I")


def _sym(name: str) -> bytes:
    raw = name.encode("ascii")
    return bytes((0xA3, len(raw))) + raw


_KEY_SEQ = _sym(SEQUENCE_NUMBER) + b"\x81"
_KEY_OFFSET = _sym(OFFSET)
_KEY_TIME = _sym(ENQUEUED_TIME) + b"\x83"
_KEY_PKEY = _sym(PARTITION_KEY)


def _string(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) < 256:
        return bytes((0xA1, len(raw))) + raw
    return b"\xb1" + _I.pack(len(raw)) + raw


class Section(NamedTuple):
    code: int
    start: int  # first byte of the section (its 0x00 descriptor marker)
    value: int  # first byte of the section's value
    end: int


def sections(data: bytes, start: int = 0, end: int | None = None) -> list[Section]:
    """Split an encoded message into its sections without decoding the values."""
    end = len(data) if end is None else end
    found = []
    pos = start
    while pos < end:
        if data[pos] != 0x00:
            raise DecodeError(f"message section expected at {pos}")
        kind = data[pos + 1]
        if kind == 0x53:
            code = data[pos + 2]
            value = pos + 3
        elif kind == 0x80:
            code = int.from_bytes(data[pos + 2 : pos + 10], "big")
            value = pos + 10
        else:  # symbolic section descriptors: keep the section but never match a known code
            value = skip(data, pos + 1)
            code = -1
        section_end = skip(data, value)
        found.append(Section(code, pos, value, section_end))
        pos = section_end
    if pos != end:
        raise DecodeError("message sections overrun the payload")
    return found


def split_batch(payload: bytes) -> tuple[list[tuple[int, int]], str | None]:
    """A batch (format 0x80013700) carries each event as a data section: return the
    (start, end) byte ranges of the inner messages and the batch-level partition key."""
    ranges = []
    key = None
    for sec in sections(payload):
        if sec.code == DATA:
            code = payload[sec.value]
            if code == 0xA0:
                ranges.append((sec.value + 2, sec.end))
            elif code == 0xB0:
                ranges.append((sec.value + 5, sec.end))
            else:
                raise DecodeError("batch data section is not binary")
        elif sec.code == MESSAGE_ANNOTATIONS:
            annotations, _ = decode(payload, sec.value)
            if isinstance(annotations, dict):
                value = annotations.get(PARTITION_KEY)
                key = value.decode() if isinstance(value, bytes) else value
    return ranges, key


class ParsedEvent(NamedTuple):
    header: bytes  # raw header section (may be empty)
    annotation_pairs: list  # raw encoded key/value pairs kept from the producer
    rest: bytes  # raw properties .. footer
    partition_key: str | None


def parse_event(data: bytes, start: int = 0, end: int | None = None) -> ParsedEvent:
    header = b""
    pairs: list[bytes] = []
    key = None
    rest_start = None
    for sec in sections(data, start, end):
        if sec.code == HEADER:
            header = data[sec.start : sec.end]
        elif sec.code == DELIVERY_ANNOTATIONS:
            continue  # hop-by-hop: never forwarded
        elif sec.code == MESSAGE_ANNOTATIONS:
            key = _keep_annotations(data, sec, pairs)
        elif rest_start is None:
            rest_start = sec.start
    rest = data[rest_start:end] if rest_start is not None else b""
    return ParsedEvent(header, pairs, bytes(rest), key)


def _keep_annotations(data: bytes, sec: Section, pairs: list[bytes]) -> str | None:
    """Copy the producer's annotation pairs verbatim, minus the system ones the broker sets."""
    pos = sec.value
    code = data[pos]
    if code == 0xC1:
        count = data[pos + 2]
        pos += 3
    elif code == 0xD1:
        count = _I.unpack_from(data, pos + 5)[0]
        pos += 9
    else:
        return None  # null / unexpected: no annotations
    key_value = None
    for _ in range(count // 2):
        key, value_pos = decode(data, pos)
        pair_end = skip(data, value_pos)
        if key == PARTITION_KEY:
            value, _ = decode(data, value_pos)
            key_value = value.decode() if isinstance(value, bytes) else value
        if key not in _SYSTEM_KEYS:
            pairs.append(bytes(data[pos:pair_end]))
        pos = pair_end
    return key_value


_SEQ_TIME = struct.Struct(">q")


def stamp(event: ParsedEvent, seq: int, offset: int, enqueued_ms: int, partition_key: str | None) -> tuple[bytes, int]:
    """Build the delivery bytes of a stored event; also return the header length (the place
    where per-delivery annotations would go)."""
    digits = b"%d" % offset
    pack = _SEQ_TIME.pack
    pairs = [
        *event.annotation_pairs,
        _KEY_SEQ + pack(seq),
        _KEY_OFFSET + bytes((0xA1, len(digits))) + digits,
        _KEY_TIME + pack(enqueued_ms),
    ]
    if partition_key is not None and event.partition_key is None:
        pairs.append(_KEY_PKEY + _string(partition_key))
    body = b"".join(pairs)
    count = 2 * len(pairs)
    if len(body) < 255 and count < 256:
        section = b"\x00\x53\x72\xc1" + bytes((len(body) + 1, count)) + body
    else:
        section = b"\x00\x53\x72\xd1" + _I.pack(len(body) + 4) + _I.pack(count) + body
    return b"".join((event.header, section, event.rest)), len(event.header)


def simple_message(body: bytes, properties: dict | None = None) -> bytes:
    """Minimal producer-side encoding of one event (used for in-process preloading)."""
    out = bytearray()
    if properties:
        encode(out, Described(ULong(APPLICATION_PROPERTIES), properties))
    encode(out, Described(ULong(DATA), bytes(body)))
    return bytes(out)


class Request(NamedTuple):
    message_id: Any
    reply_to: str | None
    application_properties: dict
    body: Any


def parse_request(payload: bytes) -> Request:
    """Decode a $cbs / $management request message (small: decode everything)."""
    message_id = None
    reply_to = None
    app: dict = {}
    body = None
    for sec in sections(payload):
        if sec.code == PROPERTIES:
            props, _ = decode(payload, sec.value)
            if isinstance(props, list):
                message_id = props[0] if len(props) > 0 else None
                reply_to = props[4] if len(props) > 4 else None
        elif sec.code == APPLICATION_PROPERTIES:
            value, _ = decode(payload, sec.value)
            if isinstance(value, dict):
                app = {str(k): v for k, v in value.items()}
        elif sec.code in (AMQP_VALUE, DATA):
            body, _ = decode(payload, sec.value)
    return Request(message_id, reply_to, app, body)


def response(correlation_id: Any, status: int, description: str, body: Any = None, to: str | None = None) -> bytes:
    """Reply message: correlation-id is the request's message-id, status in application properties."""
    out = bytearray()
    properties = [None, None, to, None, None, correlation_id] + [None] * 7
    encode(out, Described(ULong(PROPERTIES), properties))
    encode(
        out,
        Described(
            ULong(APPLICATION_PROPERTIES),
            # the client reads "status-description" for $cbs but "statusDescription" for $management
            {"status-code": Int(status), "status-description": description, "statusDescription": description},
        ),
    )
    encode(out, Described(ULong(AMQP_VALUE), body))
    return bytes(out)


def annotations_section(values: dict[str, Any], code: int = DELIVERY_ANNOTATIONS) -> bytes:
    out = bytearray()
    encode(out, Described(ULong(code), {Symbol(k): v for k, v in values.items()}))
    return bytes(out)
