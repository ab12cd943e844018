"""From Event Hubs message bodies to the events forwarded to Sekoia: one per diagnostic record.

- ``{"records": [...]}`` (what diagnostic settings send) becomes one event per record, each serialized once
  with orjson; an empty ``records`` list is a heartbeat and is skipped.
- Any other JSON document (object, array, scalar) is forwarded as such, its bytes untouched.
- A body that is not JSON is tried as NDJSON (one document per line, as some log shippers batch), else it is
  forwarded as text: a collector must not drop what it cannot parse, the intake parses text formats too, and
  the counter and the warning tell the user a producer sends something unexpected. Bytes that are not UTF-8
  are kept visible as ``\\xNN`` escapes rather than replaced, so nothing is lost from the content.
- Empty bodies (or ``null``) are skipped and counted.

The hot path is: one ``orjson.loads`` per body, one ``orjson.dumps`` per record, nothing else per record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import orjson

_BOM = b"\xef\xbb\xbf"
_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError


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
                    if not records:
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
            self._json_document(document, body, out, stats)
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

    def _json_document(self, document, body: bytes, out: list[bytes], stats: SplitStats) -> None:
        """A document only the standard library could read: re-serialize it as JSON.

        ASCII escapes, because this parser accepts lone surrogates (``"\\ud800"``), which UTF-8 cannot encode.
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
            out.append(encode(document) if body.startswith(_BOM) or not _is_utf8(body) else body)
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


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
