"""The record codec shared by both triggers: from the bytes a source sends to the bytes forwarded, exactly.

One policy for every record, whichever trigger reads it:

- **Records keep the bytes their source wrote.** A record list (an Office 365 content blob's top-level array,
  or the ``records`` array of an Event Hubs ``{"records": [...]}`` envelope) is cut into its elements' bytes;
  nothing is parsed and encoded again, so integers beyond 64 bits, ``1.10`` or ``1e5``, escapes (``\\u00e9``,
  ``\\/``) and key order reach the SIEM as they came.
- **Strict JSON**: a body is a record list only if it is JSON as RFC 8259 says (no ``NaN``, no trailing comma),
  since playbook mode writes records into a JSON array; what is not JSON is the caller's to handle.
- **Layout**: in a body with line breaks, whitespace runs holding a line break or a tab are removed (a JSON
  string cannot hold either raw, so such runs lie between tokens): each record travels on one line. Other
  spaces stay.
- **Encodings**: JSON in UTF-16 or UTF-32 (with or without a byte order mark) and UTF-8 with a BOM are read as
  the standard library reads them (RFC 8259 encoding detection) and forwarded as UTF-8, the text unchanged.
- **Invalid UTF-8**: each byte that is not UTF-8 becomes the four characters ``\\xNN`` (inside a JSON string,
  the escaped backslash ``\\\\xNN``, so the string reads ``\\xNN``); the record is kept and the bytes counted.
  The byte values stay visible (U+FFFD would erase them) and nothing else in the record changes.

The fast path is msgspec decoding the list as ``msgspec.Raw`` spans: it checks the JSON grammar in C without
building the records (orjson has no such mode: parsing each record into objects cost four times as much), and
gives each element's exact bytes; one ``bytes.decode`` checks UTF-8. UTF-8 with invalid bytes is repaired in one
C pass (each such byte written as above) and read again, by the fast path as a rule: a large body with one bad
byte costs about what a clean one does. Anything else - another encoding, lone surrogate escapes, nesting deeper
than the C decoder goes, an envelope that is not plainly one - takes the exact path: the text decoded as above
and walked with the standard library's scanner, which gives each element's end offset, so the elements are
still cut out of the text, never encoded again.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


class _Envelope(msgspec.Struct):
    records: list[msgspec.Raw]


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])
_DecodeError = msgspec.DecodeError  # malformed JSON; its subclass ValidationError: JSON of another shape
_ValidationError = msgspec.ValidationError

_LAYOUT = re.compile(rb"[ \t\r\n]*[\t\r\n][ \t\r\n]*")
_TEXT_LAYOUT = re.compile(r"[ \t\r\n]*[\t\r\n][ \t\r\n]*")
_TEXT_WS = re.compile(r"[ \t\r\n]*")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what ``surrogateescape`` makes of a byte that is not UTF-8
_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class NotJSON(ValueError):
    """The body is not one JSON document; ``invalid_utf8`` counts the bytes in it that are not UTF-8."""

    def __init__(self, reason: str, invalid_utf8: int = 0):
        super().__init__(reason)
        self.invalid_utf8 = invalid_utf8


@dataclass(slots=True)
class Document:
    """One JSON document: its record list cut into exact bytes, or the document itself when it has none."""

    items: list[bytes] | None  # each record's bytes, when the document is a record list
    raw: bytes = b""  # the whole document as UTF-8 (set when ``items`` is None)
    value: Any = None  # the whole document parsed (set when ``items`` is None)
    invalid_utf8: int = 0  # bytes that were not UTF-8, now ``\\xNN``
    parsed: list | None = field(default=None, repr=False)  # ``values()`` once known

    def values(self) -> list:
        """The records parsed (for filters): only done when asked, it costs more than cutting them out."""
        if self.parsed is None:
            self.parsed = [_parse(item) for item in self.items or ()]
        return self.parsed


def read_array(body: bytes, exact: bool = True) -> Document | None:
    """A document whose records are its top-level array's elements (an Office 365 content blob). ``exact=False``:
    None when only the exact path reads the body (its work is a caller's to place, e.g. in a thread)."""
    try:
        spans = _ARRAY.decode(body)
    except (_DecodeError, RecursionError):
        return _read_exactly(body, envelope=False) if exact else None
    document = _cut(body, spans)
    if document is None and exact:
        return _read_exactly(body, envelope=False)
    return document


def read_envelope(body: bytes) -> Document:
    """A document whose records are the elements of its ``records`` array (a diagnostic-settings envelope);
    any other document comes back whole (``items`` None)."""
    if body.startswith(b'{"records"'):  # what diagnostic settings write: no need to look further
        try:
            return _cut(body, _ENVELOPE.decode(body).records) or _read_exactly(body, envelope=True)
        except _ValidationError:  # perhaps JSON, not an envelope (a shape error stops the decoder early)
            pass
        except (_DecodeError, RecursionError):
            return _read_exactly(body, envelope=True)
    try:
        value = _loads(body)
    except _JSONDecodeError:
        return _read_exactly(body, envelope=True)
    if type(value) is dict and "records" in value:
        return _read_exactly(body, envelope=True)  # laid out otherwise, or "records" that is not a list
    return Document(None, compact(body), value)


def compact(raw: bytes) -> bytes:
    """Validated JSON bytes on one line: whitespace runs holding a tab, CR or LF removed (never inside a string)."""
    return _LAYOUT.sub(b"", raw) if _has_breaks(raw) else raw


def decode_text(body: bytes) -> tuple[str, int]:
    """A body that is not JSON, as UTF-8 text: bytes that are not UTF-8 become ``\\xNN`` (and are counted)."""
    try:
        return body.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = body.decode("utf-8", "surrogateescape")
    return _ESCAPED_BYTE.sub(_hex_escape, text), len(_ESCAPED_BYTE.findall(text))


# -- fast path: bytes ---------------------------------------------------------------------------------------------


def _has_breaks(data: bytes) -> bool:
    return b"\n" in data  # one memchr, far cheaper than a regex class search; a lone CR or tab is left as written


def _cut(body: bytes, spans: list) -> Document | None:
    """The spans' bytes (exact-size copies, so the body can go), or None if the body is not UTF-8."""
    if not body.isascii():
        try:
            body.decode("utf-8")  # msgspec checks the grammar, not the bytes inside strings
        except UnicodeDecodeError:
            return None
    items = list(map(bytes, spans))
    return Document(list(map(compact, items)) if _has_breaks(body) else items)


def _parse(item: bytes):
    try:
        return _loads(item)
    except _JSONDecodeError:  # valid JSON orjson refuses: a lone surrogate escape, a number beyond a double
        return _DECODER.decode(item.decode("utf-8"))


# -- exact path: text ---------------------------------------------------------------------------------------------


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_scan = _DECODER.scan_once


def _decode(body: bytes) -> tuple[str, int]:
    """JSON text in the encoding RFC 8259 detection finds; bytes that are not UTF-8 as lone surrogates, counted.
    UTF-16 or UTF-32 that does not decode raises ``UnicodeDecodeError``."""
    encoding = json.detect_encoding(body) if body.startswith(_BOMS) or b"\x00" in body[:4] else "utf-8"
    try:
        return body.decode(encoding), 0
    except UnicodeDecodeError:
        if not encoding.startswith("utf-8"):
            raise
    text = body.decode(encoding, "surrogateescape")
    return text, len(_ESCAPED_BYTE.findall(text))


def _hex_escape(match: re.Match) -> str:
    return "\\x%02x" % (ord(match.group()) - 0xDC00)


def _json_hex_escape(match: re.Match) -> str:
    return "\\\\x%02x" % (ord(match.group()) - 0xDC00)


def _escape_bytes(error: UnicodeDecodeError) -> tuple[str, int]:
    """Error handler: each byte that is not UTF-8 as ``\\\\xNN`` (as ``_json_hex_escape`` writes it)."""
    return "".join(["\\\\x%02x" % byte for byte in error.object[error.start : error.end]]), error.end


codecs.register_error("sekoia-json-hex", _escape_bytes)
_ESCAPE_GROWTH = len("\\\\x00") - 1  # bytes a repaired byte adds


def _repaired_utf8(body: bytes) -> tuple[bytes, int] | None:
    """UTF-8 (BOM or not) holding bytes that are not UTF-8: the body with each written ``\\\\xNN``, and their
    count; None for another encoding or nothing to repair."""
    encoding = json.detect_encoding(body) if body.startswith(_BOMS) or b"\x00" in body[:4] else "utf-8"
    if not encoding.startswith("utf-8"):
        return None
    repaired = body.decode(encoding, "sekoia-json-hex").encode("utf-8")
    bom = len(codecs.BOM_UTF8) if encoding == "utf-8-sig" else 0
    invalid = (len(repaired) - len(body) + bom) // _ESCAPE_GROWTH
    return (repaired, invalid) if invalid else None


def _read_exactly(body: bytes, envelope: bool) -> Document:
    repaired = _repaired_utf8(body)
    if repaired is not None:
        body, invalid = repaired
        try:
            document = read_envelope(body) if envelope else read_array(body)  # valid UTF-8 now: no second repair
        except NotJSON as error:
            raise NotJSON(str(error), invalid) from None
        document.invalid_utf8 += invalid
        return document
    try:
        text, invalid = _decode(body)
    except UnicodeDecodeError as error:
        raise NotJSON(f"not JSON: {error.encoding} that does not decode", 1) from None
    if invalid:
        text = _ESCAPED_BYTE.sub(_json_hex_escape, text)
    text = text.lstrip("\ufeff")
    try:
        start = _TEXT_WS.match(text).end()
        items = values = None
        if envelope and text.startswith("{", start):
            items, values, end = _walk_envelope(text, start)
        elif not envelope and text.startswith("[", start):
            items, values, end = _walk_array(text, start)
        if items is None:
            value, end = _scan(text, start)
    except (StopIteration, ValueError, RecursionError) as error:
        raise NotJSON(f"not JSON: {_reason(error)}", invalid) from None
    if _TEXT_WS.match(text, end).end() != len(text):
        raise NotJSON(f"not JSON: extra data at character {end}", invalid)
    if items is None:
        return Document(None, _encode(text[start:end]), value, invalid)
    return Document(items, invalid_utf8=invalid, parsed=values)


def _reason(error: BaseException) -> str:
    if isinstance(error, StopIteration):
        return f"no value at character {error.value}"
    return str(error)[:120]


def _encode(text: str) -> bytes:
    return _TEXT_LAYOUT.sub("", text).encode("utf-8")


def _walk_array(text: str, index: int) -> tuple[list[bytes], list, int]:
    """``text[index]`` is ``[``: each element's exact text (encoded), its value, and the index after ``]``."""
    items: list[bytes] = []
    values: list = []
    index = _TEXT_WS.match(text, index + 1).end()
    if text.startswith("]", index):
        return items, values, index + 1
    while True:
        value, end = _scan(text, index)
        items.append(_encode(text[index:end]))
        values.append(value)
        index = _TEXT_WS.match(text, end).end()
        if text.startswith(",", index):
            index = _TEXT_WS.match(text, index + 1).end()
        elif text.startswith("]", index):
            return items, values, index + 1
        else:
            raise ValueError(f"expected ',' or ']' at character {index}")


def _walk_envelope(text: str, index: int) -> tuple[list[bytes] | None, list | None, int]:
    """``text[index]`` is ``{``: the elements of its ``records`` member if that is an array (the last one if
    the key repeats, as parsers keep the last), else None; and the index after ``}``."""
    found: tuple[list[bytes], list] | None = None
    records_other = False
    index = _TEXT_WS.match(text, index + 1).end()
    if text.startswith("}", index):
        return None, None, index + 1
    while True:
        if not text.startswith('"', index):
            raise ValueError(f"expected a key at character {index}")
        key, index = _scan(text, index)
        index = _TEXT_WS.match(text, index).end()
        if not text.startswith(":", index):
            raise ValueError(f"expected ':' at character {index}")
        index = _TEXT_WS.match(text, index + 1).end()
        if key == "records" and text.startswith("[", index):
            items, values, index = _walk_array(text, index)
            found, records_other = (items, values), False
        else:
            _, index = _scan(text, index)
            records_other = records_other or key == "records"
        index = _TEXT_WS.match(text, index).end()
        if text.startswith(",", index):
            index = _TEXT_WS.match(text, index + 1).end()
        elif text.startswith("}", index):
            index += 1
            break
        else:
            raise ValueError(f"expected ',' or '}}' at character {index}")
    if found is None or records_other:
        return None, None, index
    return found[0], found[1], index
