"""AMQP 1.0 type system: encoder, positional decoder and skipper.

Independent of the client's private codec on purpose: the emulator must keep working (and keep
testing the client) even if the client's internals change.

Python mapping: None, bool, int (-> long), float (-> double), str (-> string), bytes (-> binary),
list, dict, uuid.UUID; wrappers below select the other AMQP types. The decoder returns the same
wrappers, so a decoded value re-encodes to the same AMQP type (needed e.g. to echo a message-id
as correlation-id).
"""

from __future__ import annotations

import struct
import uuid
from typing import Any, Callable, NamedTuple


class Symbol(str):
    """AMQP symbol (ASCII)."""

    __slots__ = ()


class UByte(int):
    __slots__ = ()


class UShort(int):
    __slots__ = ()


class UInt(int):
    __slots__ = ()


class ULong(int):
    __slots__ = ()


class Byte(int):
    __slots__ = ()


class Short(int):
    __slots__ = ()


class Int(int):
    __slots__ = ()


class Long(int):
    __slots__ = ()


class Timestamp(int):
    """Milliseconds since the Unix epoch."""

    __slots__ = ()


class Float(float):
    __slots__ = ()


class Char(str):
    __slots__ = ()


class Described(NamedTuple):
    descriptor: Any
    value: Any


class Array(NamedTuple):
    """Homogeneous AMQP array; `kind` is the Python type of the elements (Symbol, str, UInt...)."""

    items: list
    kind: type


class Raw(bytes):
    """Bytes that are already AMQP-encoded: written verbatim."""

    __slots__ = ()


class DecodeError(ValueError):
    pass


_B = struct.Struct(">B")
_b = struct.Struct(">b")
_H = struct.Struct(">H")
_h = struct.Struct(">h")
_I = struct.Struct(">I")
_i = struct.Struct(">i")
_Q = struct.Struct(">Q")
_q = struct.Struct(">q")
_f = struct.Struct(">f")
_d = struct.Struct(">d")
_BB = struct.Struct(">BB")
_II = struct.Struct(">II")


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _enc_null(out: bytearray, v: Any) -> None:
    out.append(0x40)


def _enc_bool(out: bytearray, v: bool) -> None:
    out.append(0x41 if v else 0x42)


def _enc_long(out: bytearray, v: int) -> None:
    if -128 <= v <= 127:
        out.append(0x55)
        out += _b.pack(v)
    else:
        out.append(0x81)
        out += _q.pack(v)


def _enc_int(out: bytearray, v: int) -> None:
    if -128 <= v <= 127:
        out.append(0x54)
        out += _b.pack(v)
    else:
        out.append(0x71)
        out += _i.pack(v)


def _enc_uint(out: bytearray, v: int) -> None:
    if v == 0:
        out.append(0x43)
    elif v < 256:
        out.append(0x52)
        out.append(v)
    else:
        out.append(0x70)
        out += _I.pack(v)


def _enc_ulong(out: bytearray, v: int) -> None:
    if v == 0:
        out.append(0x44)
    elif v < 256:
        out.append(0x53)
        out.append(v)
    else:
        out.append(0x80)
        out += _Q.pack(v)


def _enc_ubyte(out: bytearray, v: int) -> None:
    out.append(0x50)
    out.append(v)


def _enc_ushort(out: bytearray, v: int) -> None:
    out.append(0x60)
    out += _H.pack(v)


def _enc_byte(out: bytearray, v: int) -> None:
    out.append(0x51)
    out += _b.pack(v)


def _enc_short(out: bytearray, v: int) -> None:
    out.append(0x61)
    out += _h.pack(v)


def _enc_timestamp(out: bytearray, v: int) -> None:
    out.append(0x83)
    out += _q.pack(v)


def _enc_double(out: bytearray, v: float) -> None:
    out.append(0x82)
    out += _d.pack(v)


def _enc_float(out: bytearray, v: float) -> None:
    out.append(0x72)
    out += _f.pack(v)


def _enc_char(out: bytearray, v: str) -> None:
    out.append(0x73)
    out += _I.pack(ord(v))


def _enc_uuid(out: bytearray, v: uuid.UUID) -> None:
    out.append(0x98)
    out += v.bytes


def _enc_variable(out: bytearray, data: bytes, small: int, large: int) -> None:
    n = len(data)
    if n < 256:
        out.append(small)
        out.append(n)
    else:
        out.append(large)
        out += _I.pack(n)
    out += data


def _enc_binary(out: bytearray, v: bytes) -> None:
    _enc_variable(out, bytes(v), 0xA0, 0xB0)


def _enc_string(out: bytearray, v: str) -> None:
    _enc_variable(out, v.encode("utf-8"), 0xA1, 0xB1)


def _enc_symbol(out: bytearray, v: str) -> None:
    _enc_variable(out, v.encode("ascii"), 0xA3, 0xB3)


def _enc_raw(out: bytearray, v: bytes) -> None:
    out += v


def _enc_compound(out: bytearray, body: bytes, count: int, small: int, large: int) -> None:
    # size counts the count field plus the items
    if len(body) + 1 < 256 and count < 256:
        out.append(small)
        out += _BB.pack(len(body) + 1, count)
    else:
        out.append(large)
        out += _II.pack(len(body) + 4, count)
    out += body


def encode_list(out: bytearray, items: list | tuple, allow_list0: bool = True) -> None:
    """Encode a list. Performatives must pass allow_list0=False: the client's frame decoder
    only understands list8/list32 there and reads fields by position."""
    if not items and allow_list0:
        out.append(0x45)
        return
    body = bytearray()
    for item in items:
        encode(body, item)
    _enc_compound(out, body, len(items), 0xC0, 0xD0)


def _enc_list(out: bytearray, v: list) -> None:
    encode_list(out, v)


def _enc_map(out: bytearray, v: dict) -> None:
    body = bytearray()
    for key, value in v.items():
        encode(body, key)
        encode(body, value)
    _enc_compound(out, body, 2 * len(v), 0xC1, 0xD1)


# element constructors for arrays: always the wide form, so one constructor fits every element
_ARRAY_ELEMENT: dict[type, tuple[int, Callable[[Any], bytes]]] = {
    Symbol: (0xB3, lambda v: _I.pack(len(v)) + v.encode("ascii")),
    str: (0xB1, lambda v: _I.pack(len(v.encode("utf-8"))) + v.encode("utf-8")),
    bytes: (0xB0, lambda v: _I.pack(len(v)) + bytes(v)),
    UInt: (0x70, _I.pack),
    ULong: (0x80, _Q.pack),
    Int: (0x71, _i.pack),
    Long: (0x81, _q.pack),
    int: (0x81, _q.pack),
    Timestamp: (0x83, _q.pack),
}


def _enc_array(out: bytearray, v: Array) -> None:
    constructor, element = _ARRAY_ELEMENT[v.kind]
    body = bytearray([constructor])
    for item in v.items:
        body += element(item)
    n = len(v.items)
    if len(body) + 1 < 256 and n < 256:
        out.append(0xE0)
        out += _BB.pack(len(body) + 1, n)
    else:
        out.append(0xF0)
        out += _II.pack(len(body) + 4, n)
    out += body


def _enc_described(out: bytearray, v: Described) -> None:
    out.append(0x00)
    descriptor = v.descriptor
    if type(descriptor) is int:  # a bare int descriptor is a numeric (ulong) code
        descriptor = ULong(descriptor)
    encode(out, descriptor)
    encode(out, v.value)


_ENCODERS: dict[type, Callable[[bytearray, Any], None]] = {
    type(None): _enc_null,
    bool: _enc_bool,
    int: _enc_long,
    Long: _enc_long,
    Int: _enc_int,
    UInt: _enc_uint,
    ULong: _enc_ulong,
    UByte: _enc_ubyte,
    UShort: _enc_ushort,
    Byte: _enc_byte,
    Short: _enc_short,
    Timestamp: _enc_timestamp,
    float: _enc_double,
    Float: _enc_float,
    Char: _enc_char,
    uuid.UUID: _enc_uuid,
    bytes: _enc_binary,
    bytearray: _enc_binary,
    memoryview: _enc_binary,
    str: _enc_string,
    Symbol: _enc_symbol,
    Raw: _enc_raw,
    list: _enc_list,
    tuple: _enc_list,
    dict: _enc_map,
    Array: _enc_array,
    Described: _enc_described,
}


def encode(out: bytearray, value: Any) -> None:
    """Append the AMQP encoding of `value` to `out`."""
    try:
        encoder = _ENCODERS[type(value)]
    except KeyError:
        raise TypeError(f"cannot AMQP-encode {type(value).__name__}") from None
    encoder(out, value)


def encoded(value: Any) -> bytes:
    out = bytearray()
    encode(out, value)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Decoding: functions take (data, pos) with pos just past the constructor, return (value, pos)
# --------------------------------------------------------------------------------------------

Decoder = Callable[[bytes, int], "tuple[Any, int]"]


def _fixed(struct_: struct.Struct, wrap: Callable[[Any], Any] | None = None) -> Decoder:
    size = struct_.size
    unpack = struct_.unpack_from
    if wrap is None:
        return lambda d, p: (unpack(d, p)[0], p + size)
    return lambda d, p: (wrap(unpack(d, p)[0]), p + size)


def _const(value: Any) -> Decoder:
    return lambda d, p: (value, p)


def _dec_bool(d: bytes, p: int) -> tuple[bool, int]:
    return d[p] != 0, p + 1


def _dec_uuid(d: bytes, p: int) -> tuple[uuid.UUID, int]:
    return uuid.UUID(bytes=bytes(d[p : p + 16])), p + 16


def _dec_char(d: bytes, p: int) -> tuple[Char, int]:
    return Char(chr(_I.unpack_from(d, p)[0])), p + 4


def _var(size_struct: struct.Struct, wrap: Callable[[bytes], Any]) -> Decoder:
    width = size_struct.size
    unpack = size_struct.unpack_from

    def dec(d: bytes, p: int) -> tuple[Any, int]:
        n = unpack(d, p)[0]
        start = p + width
        end = start + n
        if end > len(d):
            raise DecodeError("truncated variable-width value")
        return wrap(d[start:end]), end

    return dec


def _compound(size_struct: struct.Struct, is_map: bool) -> Decoder:
    width = size_struct.size
    unpack = size_struct.unpack_from

    def dec(d: bytes, p: int) -> tuple[Any, int]:
        count = unpack(d, p + width)[0]
        p += 2 * width
        table = _DECODERS
        if is_map:
            result: dict = {}
            for _ in range(count // 2):
                key, p = table[d[p]](d, p + 1)
                value, p = table[d[p]](d, p + 1)
                result[key] = value
            return result, p
        items = []
        append = items.append
        for _ in range(count):
            value, p = table[d[p]](d, p + 1)
            append(value)
        return items, p

    return dec


def _array(size_struct: struct.Struct) -> Decoder:
    width = size_struct.size
    unpack = size_struct.unpack_from

    def dec(d: bytes, p: int) -> tuple[list, int]:
        end = p + width + unpack(d, p)[0]
        count = unpack(d, p + width)[0]
        p += 2 * width
        if count == 0:
            return [], end  # the element constructor may still be present: jump to the end
        constructor = d[p]
        if constructor == 0x00:
            raise DecodeError("arrays of described types are not supported")
        element = _DECODERS[constructor]
        p += 1
        items = []
        for _ in range(count):
            value, p = element(d, p)
            items.append(value)
        return items, p

    return dec


def _dec_described(d: bytes, p: int) -> tuple[Described, int]:
    descriptor, p = _DECODERS[d[p]](d, p + 1)
    value, p = _DECODERS[d[p]](d, p + 1)
    return Described(descriptor, value), p


def _unknown(code: int) -> Decoder:
    def dec(d: bytes, p: int) -> tuple[Any, int]:
        raise DecodeError(f"unknown AMQP constructor 0x{code:02x}")

    return dec


def _utf8(b: bytes) -> str:
    return bytes(b).decode("utf-8")


def _sym(b: bytes) -> Symbol:
    return Symbol(bytes(b).decode("ascii", "replace"))


_DECODERS: list[Decoder] = [_unknown(i) for i in range(256)]
_DECODERS[0x00] = _dec_described
_DECODERS[0x40] = _const(None)
_DECODERS[0x41] = _const(True)
_DECODERS[0x42] = _const(False)
_DECODERS[0x43] = _const(UInt(0))
_DECODERS[0x44] = _const(ULong(0))
_DECODERS[0x45] = lambda d, p: ([], p)
_DECODERS[0x50] = _fixed(_B, UByte)
_DECODERS[0x51] = _fixed(_b, Byte)
_DECODERS[0x52] = _fixed(_B, UInt)
_DECODERS[0x53] = _fixed(_B, ULong)
_DECODERS[0x54] = _fixed(_b, Int)
_DECODERS[0x55] = _fixed(_b)
_DECODERS[0x56] = _dec_bool
_DECODERS[0x60] = _fixed(_H, UShort)
_DECODERS[0x61] = _fixed(_h, Short)
_DECODERS[0x70] = _fixed(_I, UInt)
_DECODERS[0x71] = _fixed(_i, Int)
_DECODERS[0x72] = _fixed(_f, Float)
_DECODERS[0x73] = _dec_char
_DECODERS[0x80] = _fixed(_Q, ULong)
_DECODERS[0x81] = _fixed(_q)
_DECODERS[0x82] = _fixed(_d)
_DECODERS[0x83] = _fixed(_q, Timestamp)
_DECODERS[0x98] = _dec_uuid
_DECODERS[0xA0] = _var(_B, bytes)
_DECODERS[0xA1] = _var(_B, _utf8)
_DECODERS[0xA3] = _var(_B, _sym)
_DECODERS[0xB0] = _var(_I, bytes)
_DECODERS[0xB1] = _var(_I, _utf8)
_DECODERS[0xB3] = _var(_I, _sym)
_DECODERS[0xC0] = _compound(_B, False)
_DECODERS[0xC1] = _compound(_B, True)
_DECODERS[0xD0] = _compound(_I, False)
_DECODERS[0xD1] = _compound(_I, True)
_DECODERS[0xE0] = _array(_B)
_DECODERS[0xF0] = _array(_I)
# decimals are carried as opaque bytes (nothing in Event Hubs needs their value)
_DECODERS[0x74] = lambda d, p: (bytes(d[p : p + 4]), p + 4)
_DECODERS[0x84] = lambda d, p: (bytes(d[p : p + 8]), p + 8)
_DECODERS[0x94] = lambda d, p: (bytes(d[p : p + 16]), p + 16)


def decode(data: bytes, pos: int = 0) -> tuple[Any, int]:
    """Decode one value at `pos`; return (value, position after it)."""
    try:
        return _DECODERS[data[pos]](data, pos + 1)
    except (IndexError, struct.error) as exc:
        raise DecodeError(f"truncated AMQP value at {pos}") from exc


# --------------------------------------------------------------------------------------------
# Skipping: find the end of an encoded value without building it (message sections, map pairs)
# --------------------------------------------------------------------------------------------

_FIXED_WIDTH = [-1] * 256
for _code in (0x40, 0x41, 0x42, 0x43, 0x44, 0x45):
    _FIXED_WIDTH[_code] = 0
for _code in (0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56):
    _FIXED_WIDTH[_code] = 1
for _code in (0x60, 0x61):
    _FIXED_WIDTH[_code] = 2
for _code in (0x70, 0x71, 0x72, 0x73, 0x74):
    _FIXED_WIDTH[_code] = 4
for _code in (0x80, 0x81, 0x82, 0x83, 0x84):
    _FIXED_WIDTH[_code] = 8
for _code in (0x94, 0x98):
    _FIXED_WIDTH[_code] = 16
_SMALL_SIZED = frozenset((0xA0, 0xA1, 0xA3, 0xC0, 0xC1, 0xE0))
_LARGE_SIZED = frozenset((0xB0, 0xB1, 0xB3, 0xD0, 0xD1, 0xF0))


def skip(data: bytes, pos: int) -> int:
    """Return the position just after the value encoded at `pos`."""
    code = data[pos]
    width = _FIXED_WIDTH[code]
    if width >= 0:
        end = pos + 1 + width
    elif code in _SMALL_SIZED:
        end = pos + 2 + data[pos + 1]
    elif code in _LARGE_SIZED:
        end = pos + 5 + _I.unpack_from(data, pos + 1)[0]
    elif code == 0x00:
        return skip(data, skip(data, pos + 1))
    else:
        raise DecodeError(f"unknown AMQP constructor 0x{code:02x} at {pos}")
    if end > len(data):
        raise DecodeError(f"truncated AMQP value at {pos}")
    return end
