"""Shortening an event over the intake's size limit, so that it still reaches detection.

A JSON event keeps its structure: its longest string values are cut to one common length, the longest that lets
the event fit, and a marker field says which values were cut, the original size and the original's SHA-256 (the
full event is kept locally, where that hash finds it). Text that is not JSON, and a JSON string, are cut at the
end with the same marker as text. Parsing keeps integers exact (the standard library's JSON): only the cut
strings change. This runs for rare events, so it favours being exact over being fast.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MARKER = "sekoia_truncated"
FIELDS_LISTED = 20  # paths named in the marker; ``fields_cut`` counts them all


@dataclass
class Shortened:
    event: bytes
    original_bytes: int
    sha256: str
    fields: list[str] = field(default_factory=list)  # the cut values' paths ("a.b", "records[3].c"); [] for text


def digest(event: bytes) -> str:
    return hashlib.sha256(event).hexdigest()


def shorten(event: bytes, limit: int) -> Shortened:
    """``event`` cut to at most ``limit`` bytes, with a marker saying what was cut."""
    original, sha = len(event), digest(event)
    try:
        value = json.loads(event)
    except (ValueError, RecursionError):
        return Shortened(_cut_text(event.decode("utf-8", "replace"), limit, original, sha, _raw), original, sha)
    if isinstance(value, str):
        return Shortened(_cut_text(value, limit, original, sha, _dumps), original, sha)
    shortened = _cut_strings(value, limit, original, sha)
    if shortened is not None:
        return shortened
    # Too many small values to fit however short the strings: the start of the event, as text in a JSON object.
    text = event.decode("utf-8", "replace")

    def wrapped(count: int) -> bytes:
        return _dumps({MARKER: _marker(original, sha, ["(whole event)"], 1), "event_prefix": text[:count]})

    return Shortened(wrapped(_longest_fitting(len(text), lambda n: len(wrapped(n)) <= limit)), original, sha,
                     ["(whole event)"])


def _cut_strings(value: Any, limit: int, original: int, sha: str) -> Shortened | None:
    lengths = sorted({len(text) for text in _strings(value)}, reverse=True)
    if not lengths:
        return None

    def build(cap: int) -> tuple[bytes, list[str]]:
        paths: list[str] = []
        cut = _cut(value, cap, "", paths)
        marker = _marker(original, sha, paths, len(paths))
        if isinstance(cut, dict):
            return _dumps({**cut, MARKER: marker}), paths
        return _dumps({MARKER: marker, "event": cut}), paths  # an array: the marker needs an object around it

    if len(build(0)[0]) > limit:
        return None
    cap = _longest_fitting(lengths[0], lambda cap: len(build(cap)[0]) <= limit)
    event, paths = build(cap)
    return Shortened(event, original, sha, paths)


def _longest_fitting(upper: int, fits: Callable[[int], bool]) -> int:
    """The largest n in [0, upper] with ``fits(n)``, given ``fits(0)`` and a monotone ``fits``."""
    low, high = 0, upper
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _cut(value: Any, cap: int, path: str, paths: list[str]) -> Any:
    if isinstance(value, str):
        if len(value) > cap:
            paths.append(path or "(value)")
            return value[:cap]
        return value
    if isinstance(value, dict):
        return {key: _cut(item, cap, f"{path}.{key}" if path else str(key), paths) for key, item in value.items()}
    if isinstance(value, list):
        return [_cut(item, cap, f"{path}[{index}]", paths) for index, item in enumerate(value)]
    return value


def _marker(original: int, sha: str, paths: list[str], count: int) -> dict:
    return {"original_bytes": original, "sha256": sha, "fields": paths[:FIELDS_LISTED], "fields_cut": count}


def _cut_text(text: str, limit: int, original: int, sha: str, encode: Callable[[str], bytes]) -> bytes:
    suffix = f" [{MARKER}: original_bytes={original} sha256={sha}]"
    count = _longest_fitting(len(text), lambda n: len(encode(text[:n] + suffix)) <= limit)
    return encode(text[:count] + suffix)


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "replace")


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (from a \ud800 escape): keep it escaped
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("utf-8")
