"""From Event Hubs message bodies to the events forwarded to Sekoia: one per diagnostic record.

- ``{"records": [...]}`` (what diagnostic settings send) becomes one event per record, each serialized once
  with orjson; an empty ``records`` list is a heartbeat and is skipped.
- Any other JSON document (object, array, scalar) is forwarded as such, its bytes untouched.
- A body that is not JSON is tried as NDJSON (one document per line, as some log shippers batch), else it is
  forwarded as text: a collector must not drop what it cannot parse, the intake parses text formats too, and
  the counter and the warning tell the user a producer sends something unexpected. Bytes that are not UTF-8
  are kept visible as ``\\xNN`` escapes rather than replaced, so nothing is lost from the content.
- Empty bodies (or ``null``) are skipped and counted.
- orjson reads integers beyond 64 bits as floats: an envelope holding a run of 19 digits or more goes through
  the standard library, whose integers are exact, so re-serialized records keep every digit.

The hot path is: one ``orjson.loads`` per body, one ``orjson.dumps`` per record, one byte scan per envelope.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import orjson

_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError
# Every digit mapped to "0": a run of 19 zeros afterwards is a run of 19 digits before (one C pass, ~0.5 µs/KB).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else i for i in range(256))
_LONG_DIGITS = b"0" * 19  # -9223372036854775809 has 19: orjson rounds it


@dataclass(slots=True)
class SplitStats:
    events: int = 0  # message bodies seen
    records: int = 0  # events produced for Sekoia
    empty: int = 0
    heartbeats: int = 0
    filtered: int = 0  # records left out by the category filter
    text: int = 0  # non-JSON bodies forwarded as text
    invalid_utf8: int = 0  # of which not valid UTF-8

    def add(self, other: "SplitStats") -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def text_as_raw(text: str) -> bytes:
    """Intake mode: the intake receives every event as a string, so text goes as is."""
    return text.encode("utf-8")


def text_as_json(text: str) -> bytes:
    """Playbook mode: records are written as a JSON array, so text goes as a JSON string."""
    return _dumps(text)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


def _slow_loads(body: bytes):
    """Valid JSON orjson refuses: a BOM, UTF-16/32 (the standard library detects them). Strictly JSON: no NaN."""
    return json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)


class RecordSplitter:
    def __init__(self, categories: Iterable[str] | None = None, text_event: Callable[[str], bytes] = text_as_raw):
        self.categories = frozenset(c.lower() for c in categories) if categories else None
        self.text_event = text_event

    def split(self, bodies: Iterable[bytes], out: list[bytes], stats: SplitStats) -> None:
        """Append the events of every body to ``out``; count what was skipped in ``stats``."""
        categories = self.categories
        for body in bodies:
            stats.events += 1
            try:
                document = _loads(body)
            except _JSONDecodeError:
                self._not_orjson(body, out, stats)
                continue
            if type(document) is dict:
                records = document.get("records")
                if type(records) is list:
                    if _LONG_DIGITS in body.translate(_DIGITS_AS_ZERO):
                        self._not_orjson(body, out, stats)  # a number orjson may have rounded
                    elif not records:
                        stats.heartbeats += 1
                    elif categories is None:
                        out.extend(map(_dumps, records))
                        stats.records += len(records)
                    else:
                        self._filtered(records, out, stats)
                    continue
                if categories is not None and not self._wanted(document):
                    stats.filtered += 1
                    continue
            elif document is None:
                stats.empty += 1
                continue
            out.append(body)
            stats.records += 1

    def as_text(self, bodies: Iterable[bytes], out: list[bytes], stats: SplitStats) -> None:
        """Last resort if splitting ever failed on a batch: every body as text, nothing lost or retried forever."""
        for body in bodies:
            stats.events += 1
            stats.text += 1
            stats.records += 1
            out.append(self.text_event(body.decode("utf-8", "backslashreplace")))

    def _wanted(self, record) -> bool:
        category = record.get("category") if type(record) is dict else None
        # Records without a category cannot be classified: keep them rather than lose them.
        return not isinstance(category, str) or category.lower() in self.categories  # type: ignore[operator]

    def _filtered(self, records: list, out: list[bytes], stats: SplitStats) -> None:
        for record in records:
            if self._wanted(record):
                out.append(_dumps(record))
                stats.records += 1
            else:
                stats.filtered += 1

    def _not_orjson(self, body: bytes, out: list[bytes], stats: SplitStats) -> None:
        if not body.strip():
            stats.empty += 1
            return
        try:
            document = _slow_loads(body)
        except (ValueError, RecursionError):
            document = _NOT_JSON
        if document is not _NOT_JSON:
            self._json_document(document, out, stats)
            return
        if b"\n" in body and self._ndjson(body, out, stats):
            return
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = body.decode("utf-8", "backslashreplace")
            stats.invalid_utf8 += 1
        stats.text += 1
        stats.records += 1
        out.append(self.text_event(text))

    def _json_document(self, document, out: list[bytes], stats: SplitStats) -> None:
        """A document the standard library read (orjson refused it, or might round it): re-serialize it as JSON.

        Never the bytes as they came: UTF-16 JSON is valid UTF-8 too (NULs between the characters). ASCII escapes,
        because this parser accepts lone surrogates (``"\\ud800"``), which UTF-8 cannot encode.
        """
        def encode(value) -> bytes:
            return json.dumps(value, separators=(",", ":")).encode("ascii")

        if type(document) is dict and type(document.get("records")) is list:
            records = document["records"]
            if not records:
                stats.heartbeats += 1
            for record in records:
                if self.categories is None or self._wanted(record):
                    out.append(encode(record))
                    stats.records += 1
                else:
                    stats.filtered += 1
        elif document is None:
            stats.empty += 1
        else:
            out.append(encode(document))
            stats.records += 1

    def _ndjson(self, body: bytes, out: list[bytes], stats: SplitStats) -> bool:
        lines = [line for line in body.split(b"\n") if line.strip()]
        try:
            for line in lines:
                _loads(line)
        except _JSONDecodeError:
            return False
        stats.events -= 1  # each line is counted as a body of its own
        self.split(lines, out, stats)
        return True


_NOT_JSON = object()
