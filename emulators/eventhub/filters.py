"""Consumer start positions: the `apache.org:selector-filter:string` expressions the client sends.

amqp.annotation.x-opt-offset > '-1'                 from the start of the retained stream
amqp.annotation.x-opt-offset > '@latest'            only events enqueued after the attach
amqp.annotation.x-opt-offset >= '1234'              (or >) byte offset
amqp.annotation.x-opt-sequence-number > '42'        (or >=)
amqp.annotation.x-opt-enqueued-time > '1700000000000'  (or >=) ms since the epoch
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .codec import Described

SELECTOR_FILTER = "apache.org:selector-filter:string"

_EXPRESSION = re.compile(
    r"^\s*amqp\.annotation\.(x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time)\s*(>=|>|=)\s*'?([^']*)'?\s*$",
    re.IGNORECASE,
)


class StartPosition(NamedTuple):
    kind: str  # "start", "latest", "offset", "sequence", "time"
    value: int = 0
    inclusive: bool = False


FROM_START = StartPosition("start")


class FilterError(ValueError):
    pass


def selector_from_source(source_fields: list) -> str | None:
    """Pick the selector expression out of an attach's source filter-set (source field 7)."""
    filters = source_fields[7] if len(source_fields) > 7 else None
    if not isinstance(filters, dict):
        return None
    for value in filters.values():
        if isinstance(value, Described) and isinstance(value.value, (str, bytes)):
            text = value.value
            return text.decode("utf-8") if isinstance(text, bytes) else text
    return None


def parse_selector(expression: str | None) -> StartPosition:
    if not expression:
        return FROM_START
    match = _EXPRESSION.match(expression)
    if not match:
        raise FilterError(f"Unsupported selector filter expression: {expression!r}")
    name, operator, raw = match.group(1).lower(), match.group(2), match.group(3).strip()
    inclusive = operator in (">=", "=")
    if name == "x-opt-offset":
        if raw == "@latest":
            return StartPosition("latest")
        try:
            offset = int(raw)
        except ValueError:
            raise FilterError(f"Invalid offset in selector filter: {raw!r}") from None
        if offset < 0:
            return FROM_START
        return StartPosition("offset", offset, inclusive)
    try:
        number = int(raw)
    except ValueError:
        raise FilterError(f"Invalid number in selector filter: {raw!r}") from None
    if name == "x-opt-sequence-number":
        return StartPosition("sequence", number, inclusive)
    return StartPosition("time", number, inclusive)
