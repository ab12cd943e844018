"""A content blob's body as the records to forward: each record's bytes as the API wrote them.

The body goes through the record codec shared with the Event Hubs trigger (``connectors.codec``): records are
cut out of the array, never parsed and encoded again (integers beyond 64 bits keep every digit), UTF-16/32 and
byte order marks are read, bytes that are not UTF-8 are kept as ``\\xNN`` (the record is forwarded, the bytes
counted). A record that is not an object is left out; a body that is not JSON at all (truncated, broken) yields
nothing, since no part of it can be trusted. What was left out or repaired is reported, never silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from connectors.codec import NotJSON, read_array

NOT_ARRAY = "not_array"
INVALID_JSON = "invalid_json"
NOT_OBJECT = "not_object"
INVALID_UTF8 = "invalid_utf8"


@dataclass(slots=True)
class ParsedBlob:
    records: list[bytes]
    problems: Counter = field(default_factory=Counter)  # what was left out, by kind
    detail: str = ""
    invalid_utf8: int = 0  # bytes that were not UTF-8, forwarded as \xNN in their records

    def describe_problems(self) -> str:
        parts = [f"{count} {kind.replace('_', ' ')}" for kind, count in self.problems.items()]
        return ", ".join(parts) + (f" ({self.detail})" if self.detail else "")


def parse_blob(body: bytes, exact: bool = True) -> ParsedBlob | None:
    """``exact=False``: None when the body needs the codec's exact path (another encoding, bytes that are not UTF-8,
    what the C decoder refuses), the slow one."""
    try:
        document = read_array(body, exact)
        if document is None:
            return None
    except NotJSON as error:
        # Not JSON at all (truncated, or broken by invalid bytes): nothing in it can be trusted as a record.
        kind = INVALID_UTF8 if error.invalid_utf8 else INVALID_JSON
        return ParsedBlob([], Counter({kind: 1}), f"the body is {error}")
    if document.items is None:
        return ParsedBlob([], Counter({NOT_ARRAY: 1}), f"the body is a JSON {type(document.value).__name__}")
    records = document.items
    problems = Counter()
    if {record[0] for record in records} - {0x7B}:  # JSON elements: those starting with "{" are the objects
        records = [record for record in records if record[0] == 0x7B]
        problems[NOT_OBJECT] = len(document.items) - len(records)
    return ParsedBlob(records, problems, invalid_utf8=document.invalid_utf8)
