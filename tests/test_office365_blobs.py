"""Blob bodies to records: forwarded with the bytes the API wrote; bad content counted and the rest kept."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest

from emulators import fixtures
from office365.blobs import INVALID_JSON, INVALID_UTF8, NOT_ARRAY, NOT_OBJECT, parse_blob


def test_real_records_come_out_with_their_bytes():
    lines = fixtures.o365_lines()
    parsed = parse_blob(b"[" + b",".join(lines) + b"]")
    assert not parsed.problems
    assert len(lines) == 118 and parsed.records == lines  # nothing parsed and encoded again


def test_records_are_exact_size_copies():
    # orjson's output buffer is at least 8 KiB: holding it per record would multiply memory by ten.
    body = orjson.dumps([{"Id": str(index), "Operation": "x" * 100} for index in range(200)])
    tracemalloc.start()
    try:
        parsed = parse_blob(body)
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size for stat in snapshot.statistics("filename"))  # everything allocated and still alive
    assert held < 200 * 1024
    assert len(parsed.records) == 200


def test_a_body_that_is_not_an_array_yields_nothing():
    parsed = parse_blob(b'{"contentId": "x", "status": "unavailable"}')
    assert parsed.records == [] and parsed.problems == {NOT_ARRAY: 1}
    assert "dict" in parsed.describe_problems()


def test_non_object_records_are_left_out_and_counted():
    parsed = parse_blob(b'[{"Id": "1"}, null, "corrupted record", 42, [], {"Id": "2"}]')
    assert [orjson.loads(record)["Id"] for record in parsed.records] == ["1", "2"]
    assert parsed.problems == {NOT_OBJECT: 4}


def test_invalid_utf8_inside_a_record_is_kept_as_hex_and_counted():
    body = b'[{"Id": "1", "UserId": "ok"}, {"Id": "2", "UserId": "bad \xff\xfe"}, {"Id": "3", "Name": "G\xc3\xa4ste"}]'
    parsed = parse_blob(body)
    assert [orjson.loads(record)["Id"] for record in parsed.records] == ["1", "2", "3"]
    assert orjson.loads(parsed.records[1])["UserId"] == "bad \\xff\\xfe"
    assert orjson.loads(parsed.records[2])["Name"] == "Gäste"
    assert not parsed.problems and parsed.invalid_utf8 == 2


@pytest.mark.parametrize(
    "body, kind",
    [
        (b'[{"Id": "1"}, {"Id": "2", "Op', INVALID_JSON),  # truncated mid-record
        (b"[\xff" + b'{"Id": "1"}' + b"\xfe", INVALID_UTF8),
        (b"<html>503</html>", INVALID_JSON),
        (b"", INVALID_JSON),
    ],
)
def test_a_body_that_is_not_json_yields_nothing_and_says_why(body, kind):
    parsed = parse_blob(body)
    assert parsed.records == []
    assert parsed.problems == {kind: 1}
    assert "not JSON" in parsed.describe_problems()


def test_a_byte_order_mark_is_tolerated():
    parsed = parse_blob(b'\xef\xbb\xbf[{"Id": "1"}]')
    assert [orjson.loads(record) for record in parsed.records] == [{"Id": "1"}]
    assert not parsed.problems


def test_integers_beyond_64_bits_keep_every_digit_next_to_invalid_bytes():
    parsed = parse_blob(b'[{"Id": "1", "Big": 123456789012345678901234567890}, {"Id": "2", "Bad": "\xff"}]')
    assert parsed.records == [b'{"Id": "1", "Big": 123456789012345678901234567890}', b'{"Id": "2", "Bad": "\\\\xff"}']
    assert parsed.invalid_utf8 == 1


def test_an_empty_array_is_fine():
    parsed = parse_blob(b"[]")
    assert parsed.records == [] and not parsed.problems
