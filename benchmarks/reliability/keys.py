"""Event Hubs keys: the canonical JSON of an event as delivered, and what a message body must (or may) deliver.

Parsing is exact (the standard library): orjson reads integers over 64 bits as floats, and a key must tell a
changed value from the original. The oracle follows the issue, not the trigger's code:

- ``{"records": [...]}``: one event per record; objects must arrive, other values may;
- any other JSON object: the whole body must arrive; other JSON values (arrays, scalars) may;
- ``{"records": <not a list>}``: may arrive whole (or be counted and dropped);
- empty bodies and ``null``: nothing; a body that is not JSON: may arrive as text (or, split by lines, as NDJSON).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import orjson

TEXT = "text:"  # key prefix of a delivered event that is not JSON
_NOT_JSON = object()


def _reject(name: str):
    raise ValueError(f"{name} is not JSON")


def exact_loads(data: bytes | str):
    """JSON with integers kept exact; NaN and Infinity refused. Bytes in UTF-8, UTF-16 or UTF-32 (with a BOM or not)."""
    return json.loads(data, parse_constant=_reject)


def canonical_value(value) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):  # integers over 64 bits, lone surrogates
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def event_key(line: bytes) -> str:
    """An event as delivered: strictly UTF-8 (a UTF-16 event is not what an intake can read)."""
    try:
        return canonical_value(exact_loads(line.decode("utf-8")))
    except (ValueError, RecursionError):
        return TEXT + line.decode("utf-8", "backslashreplace")


def _parse(body: bytes):
    try:
        return exact_loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


def text_keys_intake(text: str) -> list[str]:
    """Intake mode: the runtime stub writes an event as sent, one line per line of it."""
    return [event_key(piece) for piece in (text.encode("utf-8") + b"\n").splitlines()]


def text_keys_playbook(text: str) -> list[str]:
    """Playbook mode: text travels as a JSON string inside the records file."""
    return [canonical_value(text)]


def expected_keys(body: bytes, text_keys: Callable[[str], list[str]]) -> tuple[list[str], list[str]]:
    """(keys that must arrive, keys that may arrive at most once) for one message body."""
    if not body.strip():
        return [], []
    document = _parse(body)
    if document is _NOT_JSON:
        optional = text_keys(body.decode("utf-8", "backslashreplace"))
        lines = [line for line in body.split(b"\n") if line.strip()]
        if len(lines) > 1:
            for line in lines:
                must, may = expected_keys(line, text_keys)
                optional += must + may
        return [], optional
    if document is None:
        return [], []
    if isinstance(document, dict) and "records" in document:
        records = document["records"]
        if isinstance(records, list):
            return ([canonical_value(r) for r in records if isinstance(r, dict)],
                    [canonical_value(r) for r in records if not isinstance(r, dict)])
        return [], [canonical_value(document)]
    if isinstance(document, dict):
        return [canonical_value(document)], []
    return [], [canonical_value(document)]
