"""Time parsing and formatting in the shapes the Management Activity API uses."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

# An unencoded '+' in a query string arrives as a space: "...:12.345678 00:00" means "+00:00".
_SPACE_FOR_PLUS = re.compile(r"(T\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d:?\d\d)$")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_query_time(text: str) -> int:
    """startTime/endTime value -> epoch microseconds (UTC when no offset is given). Raises ValueError."""
    value = _SPACE_FOR_PLUS.sub(r"\1+\2", text.strip())
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    delta = parsed - _EPOCH  # exact integer arithmetic, no float rounding
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_content_time(epoch_ms: int) -> str:
    """contentCreated / contentExpiration: 2015-05-23T17:35:00.000Z."""
    seconds, millis = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def format_record_time(epoch_s: int) -> str:
    """Record CreationTime: UTC without zone, as the API writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s))


def content_id_stamp(epoch_ms: int, discriminator: int) -> str:
    """23 digits like 20200703091246475115498: second, millisecond, then 6 digits that keep ids unique."""
    seconds, millis = divmod(epoch_ms, 1000)
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(seconds)) + f"{millis:03d}{discriminator % 1_000_000:06d}"


# The API's clock may differ from the host's (the clock_offset_seconds knob): every API time goes through now_ms().
CLOCK = {"offset_ms": 0}


def now_ms() -> int:
    return time.time_ns() // 1_000_000 + CLOCK["offset_ms"]


def set_clock_offset(seconds: float) -> None:
    CLOCK["offset_ms"] = int(seconds * 1000)
