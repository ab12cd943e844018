"""From Event Hubs message bodies to the events forwarded to Sekoia: one per diagnostic record.

Every body goes through the record codec shared with the Office 365 trigger (``connectors.codec``), which keeps
each record's bytes as the producer wrote them (integers beyond 64 bits, escapes and key order included), reads
UTF-16/32 and byte order marks, and keeps bytes that are not UTF-8 visible as ``\\xNN``.

- ``{"records": [...]}`` (what diagnostic settings send) becomes one event per record, cut out of the envelope;
  an empty ``records`` list is a heartbeat and is skipped.
- Any other JSON document (object, array, scalar) is forwarded as such.
- A body that is not JSON is tried as NDJSON (one document per line, as some log shippers batch), else it is
  forwarded as text: a collector must not drop what it cannot parse, the intake parses text formats too, and
  the counter and the warning tell the user a producer sends something unexpected.
- Empty bodies (or ``null``) are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import orjson

from connectors.codec import Document, NotJSON, decode_text, read_envelope


@dataclass(slots=True)
class SplitStats:
    empty: int = 0
    heartbeats: int = 0
    filtered: int = 0  # records left out by the category filter
    text: int = 0  # non-JSON bodies forwarded as text
    invalid_utf8: int = 0  # of which not valid UTF-8
    repaired: int = 0  # JSON bodies holding bytes that are not UTF-8, forwarded with them as \xNN

    def add(self, other: "SplitStats") -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def text_as_raw(text: str) -> bytes:
    """Intake mode: the intake receives every event as a string, so text goes as is."""
    return text.encode("utf-8")


def text_as_json(text: str) -> bytes:
    """Playbook mode: records are written as a JSON array, so text goes as a JSON string."""
    return orjson.dumps(text)


class RecordSplitter:
    def __init__(self, categories: Iterable[str] | None = None, text_event: Callable[[str], bytes] = text_as_raw):
        self.categories = frozenset(c.lower() for c in categories) if categories else None
        self.text_event = text_event

    def split(self, bodies: Iterable[bytes], out: list[bytes], stats: SplitStats) -> None:
        """Append the events of every body to ``out``; count what was skipped in ``stats``."""
        for body in bodies:
            try:
                document = read_envelope(body)
            except NotJSON:
                self._not_json(body, out, stats)
                continue
            self._document(document, out, stats)

    def as_text(self, bodies: Iterable[bytes], out: list[bytes], stats: SplitStats) -> None:
        """Last resort if splitting ever failed on a batch: every body as text, nothing lost or retried forever."""
        for body in bodies:
            stats.text += 1
            out.append(self.text_event(decode_text(body)[0]))

    def _document(self, document: Document, out: list[bytes], stats: SplitStats) -> None:
        if document.invalid_utf8:
            stats.repaired += 1
        items = document.items
        if items is not None:  # an envelope
            if not items:
                stats.heartbeats += 1
            elif self.categories is None:
                out.extend(items)
            else:
                for item, value in zip(items, document.values()):
                    if self._wanted(value):
                        out.append(item)
                    else:
                        stats.filtered += 1
        elif document.value is None:
            stats.empty += 1
        elif self.categories is not None and not self._wanted(document.value):
            stats.filtered += 1
        else:
            out.append(document.raw)

    def _wanted(self, record) -> bool:
        category = record.get("category") if type(record) is dict else None
        # Records without a category cannot be classified: keep them rather than lose them.
        return not isinstance(category, str) or category.lower() in self.categories  # type: ignore[operator]

    def _not_json(self, body: bytes, out: list[bytes], stats: SplitStats) -> None:
        if not body.strip():
            stats.empty += 1
            return
        if b"\n" in body and self._ndjson(body, out, stats):
            return
        text, invalid = decode_text(body)
        if invalid:
            stats.invalid_utf8 += 1
        stats.text += 1
        out.append(self.text_event(text))

    def _ndjson(self, body: bytes, out: list[bytes], stats: SplitStats) -> bool:
        try:
            documents = [read_envelope(line) for line in body.split(b"\n") if line.strip()]
        except NotJSON:
            return False
        for document in documents:
            self._document(document, out, stats)
        return True
