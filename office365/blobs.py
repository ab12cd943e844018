"""A content blob's body as the records to forward: one orjson-serialized object each, as the API gave them.

The fast path is one ``orjson.loads`` and one ``orjson.dumps`` per record. Anything unusual takes the slow
path, which keeps every record it can: in an array holding invalid UTF-8, only the records with invalid bytes
are left out; a record that is not an object is left out; a body that is not JSON at all (truncated, broken)
yields nothing, since no part of it can be trusted. What was left out is reported, never silently dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import orjson

NOT_ARRAY = "not_array"
INVALID_JSON = "invalid_json"
NOT_OBJECT = "not_object"
INVALID_UTF8 = "invalid_utf8"


@dataclass(slots=True)
class ParsedBlob:
    records: list[bytes]
    problems: Counter = field(default_factory=Counter)
    detail: str = ""

    def describe_problems(self) -> str:
        parts = [f"{count} {kind.replace('_', ' ')}" for kind, count in self.problems.items()]
        return ", ".join(parts) + (f" ({self.detail})" if self.detail else "")


def parse_blob(body: bytes) -> ParsedBlob:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _parse_slowly(body)
    if not isinstance(data, list):
        return ParsedBlob([], Counter({NOT_ARRAY: 1}), f"the body is a JSON {type(data).__name__}")
    dumps = orjson.dumps
    records: list[bytes] = []
    problems: Counter | None = None
    for record in data:
        if type(record) is dict:
            # orjson hands back its whole output buffer (8 KiB at least): an exact-size copy keeps a 1 KiB
            # record from holding 8 KiB while it waits for delivery.
            records.append(bytes(memoryview(dumps(record))))
        else:
            problems = problems or Counter()
            problems[NOT_OBJECT] += 1
    return ParsedBlob(records, problems or Counter())


def _serialize(record: dict) -> bytes | None:
    """orjson first; the standard library for what orjson refuses (integers over 64 bits); None if not UTF-8."""
    try:
        return bytes(memoryview(orjson.dumps(record)))
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError):
        return None


def _parse_slowly(body: bytes) -> ParsedBlob:
    parsed = ParsedBlob([])
    # Invalid bytes become lone surrogates: the records holding them cannot be encoded again, the others can.
    text = body.decode("utf-8", "surrogateescape").lstrip("\ufeff")
    try:
        data = json.loads(text)
    except ValueError as error:
        # Not JSON at all (truncated, or broken by invalid bytes): nothing in it can be trusted as a record.
        kind = INVALID_UTF8 if any("\udc80" <= char <= "\udcff" for char in text) else INVALID_JSON
        parsed.problems[kind] += 1
        parsed.detail = f"the body is not JSON: {str(error)[:120]}"
        return parsed
    if not isinstance(data, list):
        parsed.problems[NOT_ARRAY] += 1
        parsed.detail = f"the body is a JSON {type(data).__name__}"
        return parsed
    for record in data:
        if type(record) is not dict:
            parsed.problems[NOT_OBJECT] += 1
            continue
        encoded = _serialize(record)
        if encoded is None:
            parsed.problems[INVALID_UTF8] += 1
        else:
            parsed.records.append(encoded)
    return parsed
