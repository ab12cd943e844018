"""The record codec, through both triggers' paths: every record reaches the intake with the bytes it came with.

Each property runs against the Office 365 blob path (``parse_blob``: a top-level array) and the Event Hubs path
(``RecordSplitter``: a ``{"records": [...]}`` envelope), so the two triggers cannot drift apart.
"""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from azure_eventhub.records import RecordSplitter, SplitStats, text_as_json
from connectors.codec import NotJSON, read_array, read_envelope
from office365.blobs import INVALID_JSON, INVALID_UTF8, NOT_OBJECT, parse_blob

TRIGGERS = ["office365", "eventhub"]


def container(trigger: str, raws: list[str], separator: str = ",") -> str:
    inside = separator.join(raws)
    return f"[{inside}]" if trigger == "office365" else f'{{"records":[{inside}]}}'


def container_bytes(trigger: str, raws: list[bytes]) -> bytes:
    inside = b",".join(raws)
    return b"[" + inside + b"]" if trigger == "office365" else b'{"records":[' + inside + b"]}"


def through(trigger: str, body: bytes) -> tuple[list[bytes], int]:
    """The records a trigger forwards for ``body``, and the bytes it reported as not UTF-8."""
    if trigger == "office365":
        parsed = parse_blob(body)
        assert not parsed.problems, parsed.describe_problems()
        return parsed.records, parsed.invalid_utf8
    out, stats = [], SplitStats()
    RecordSplitter(text_event=text_as_json).split([body], out, stats)
    assert stats.text == 0
    return out, stats.repaired


# -- values as producers write them ------------------------------------------------------------------------------

tricky_text = st.text(st.sampled_from(list('{}[],:"\\/ ab\t\né€😀\u2028\x00\x1f')) | st.characters(codec="utf-8"),
                      max_size=12)
scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.integers(min_value=2**64, max_value=10**40) | st.integers(min_value=-(10**40), max_value=-(2**63) - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | tricky_text
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
                      max_leaves=12)
records = st.lists(st.dictionaries(tricky_text, values, max_size=5), max_size=6)

SERIALIZERS = {
    "compact": lambda value: json.dumps(value, ensure_ascii=False, separators=(",", ":")),
    "spaced": lambda value: json.dumps(value, ensure_ascii=False),  # Python's default ", " and ": "
    "ascii": lambda value: json.dumps(value, separators=(",", ":")),  # \uXXXX escapes, surrogate pairs
    "slash-escaped": lambda value: json.dumps(value, ensure_ascii=False).replace("/", "\\/"),  # "/" only in strings
}


@pytest.mark.parametrize("trigger", TRIGGERS)
@pytest.mark.parametrize("serializer", SERIALIZERS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=records)
@example(items=[{"n": 123456789012345678901234}, {"n": -9223372036854775809, "f": 1.10}])
@example(items=[{"s": "},{"}, {"a": [{"b": "}"}, {"c": "{"}]}, {"s": "\\\"},{\\\""}])
def test_records_keep_their_bytes(trigger, serializer, items):
    raws = [SERIALIZERS[serializer](item) for item in items]
    out, invalid = through(trigger, container(trigger, raws, ", " if serializer == "spaced" else ",").encode())
    assert out == [raw.encode("utf-8") for raw in raws] and invalid == 0


@pytest.mark.parametrize("trigger", TRIGGERS)
@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
@settings(max_examples=15, deadline=None)
@given(items=records)
def test_utf16_utf32_and_byte_order_marks_come_out_as_the_same_text_in_utf8(trigger, encoding, items):
    raws = [json.dumps(item, ensure_ascii=False) for item in items]
    out, invalid = through(trigger, container(trigger, raws).encode(encoding))
    assert out == [raw.encode("utf-8") for raw in raws] and invalid == 0


@pytest.mark.parametrize("trigger", TRIGGERS)
@settings(max_examples=40, deadline=None)
@given(items=st.lists(st.dictionaries(st.text(max_size=5), values, max_size=4), min_size=1, max_size=5))
def test_line_breaks_between_tokens_are_removed_and_nothing_else(trigger, items):
    document = items if trigger == "office365" else {"records": items}
    out, _ = through(trigger, json.dumps(document, indent=2).encode())
    assert [json.loads(event) for event in out] == items  # the standard library: integers and floats exact
    assert all(b"\n" not in event and b"\t" not in event for event in out)


@pytest.mark.parametrize("trigger", TRIGGERS)
@settings(max_examples=40, deadline=None)
@given(
    before=st.text(max_size=6), after=st.text(max_size=6), others=records,
    bad=st.sampled_from([b"\xff", b"\xfe\xff", b"\xc0", b"\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"]),
)
def test_bytes_that_are_not_utf8_are_kept_as_hex_and_counted(trigger, before, after, others, bad):
    def quoted(text: str) -> bytes:
        return json.dumps(text, ensure_ascii=False)[1:-1].encode()

    broken = b'{"UserId":"' + quoted(before) + bad + quoted(after) + b'"}'
    raws = [json.dumps(item, ensure_ascii=False).encode() for item in others]
    out, invalid = through(trigger, container_bytes(trigger, [*raws, broken]))
    assert out[:-1] == raws  # the other records keep their bytes
    assert json.loads(out[-1]) == {"UserId": before + "".join(f"\\x{byte:02x}" for byte in bad) + after}
    assert invalid == len(bad) if trigger == "office365" else invalid == 1


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_lone_surrogate_escapes_are_kept_as_written(trigger):
    raws = ['{"a":"\\ud800"}', '{"b":"x\\udc00y","c":[{"d":1},{"e":2}]}']
    out, _ = through(trigger, container(trigger, raws).encode())
    assert out == [raw.encode() for raw in raws]


@pytest.mark.parametrize("trigger", TRIGGERS)
@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300))
def test_any_body_gives_utf8_json_records_or_a_reason(trigger, body):
    if trigger == "office365":
        parsed = parse_blob(body)
        events = parsed.records
        assert all(event.startswith(b"{") for event in events)
        if not events and not parsed.problems:  # nothing forwarded and nothing said: only for an empty array
            assert read_array(body).items == []
    else:
        events, stats = [], SplitStats()
        RecordSplitter(text_event=text_as_json).split([body], events, stats)
    for event in events:
        json.loads(event.decode("utf-8"))  # the standard library also accepts lone surrogate escapes


# -- the codec on its own: what it proves, and what it refuses ---------------------------------------------------


def test_a_brace_in_a_string_at_a_boundary_takes_the_exact_path_with_the_same_result():
    raws = [b'{"a":"}"}', b'{"b":[{"c":1},{"d":"{"}]}', b'{"e":"},{"}']
    assert read_array(b"[" + b",".join(raws) + b"]").items == raws
    assert read_envelope(b'{"records":[' + b", ".join(raws) + b"]}").items == raws


def test_an_envelope_with_other_keys_still_gives_its_records():
    body = b'{"x":{"records":[{"no":1}]},"records":[{"a":1},{"b":2}],"y":[{"c":3},{"d":4}]}'
    assert read_envelope(body).items == [b'{"a":1}', b'{"b":2}']


def test_a_records_member_that_is_not_a_list_is_a_document_forwarded_whole():
    document = read_envelope(b'{"records": "not a list"}')
    assert document.items is None and document.raw == b'{"records": "not a list"}'


@pytest.mark.parametrize(
    "body",
    [b'{"records":[{"a":"x\ny"}]}', b'{"records":[{"a":1},]}', b'{"records":[{"a":1}]} trailing', b"NaN",
     b'{"records":[{"a":NaN}]}', b""],
)
def test_what_is_not_json_is_refused_not_repaired(body):
    # A raw line break inside a string is not JSON: removing it would change the record.
    with pytest.raises(NotJSON):
        read_envelope(body)


def test_office365_leaves_out_and_counts_what_is_not_an_object():
    parsed = parse_blob(b'[{"Id": "1"}, null, "x", 42, [], {"Id": "2"}]')
    assert parsed.records == [b'{"Id": "1"}', b'{"Id": "2"}'] and parsed.problems == {NOT_OBJECT: 4}


@pytest.mark.parametrize("body, kind", [(b'[{"Id": "1"}, {"Id"', INVALID_JSON), (b'[{"Id": "\xff"', INVALID_UTF8)])
def test_office365_body_that_is_not_json_says_whether_it_was_utf8(body, kind):
    assert parse_blob(body).problems == {kind: 1}


def test_records_in_the_fast_path_are_exact_size_slices():
    body = orjson.dumps({"records": [{"Id": str(index), "Operation": "x" * 100} for index in range(50)]})
    items = read_envelope(body).items
    assert items is not None and all(len(item) < 200 for item in items)
    assert sum(map(len, items)) + len(items) - 1 + len('{"records":[]}') == len(body)


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_deep_nesting_is_kept_and_too_deep_nesting_is_refused_not_a_crash(trigger):
    deep = b'{"a":' * 300 + b"1" + b"}" * 300
    assert through(trigger, container_bytes(trigger, [deep]))[0] == [deep]
    too_deep = b"[" * 5000 + b"]" * 5000
    if trigger == "office365":
        assert parse_blob(container_bytes(trigger, [too_deep])).problems == {INVALID_JSON: 1}
    else:
        out, stats = [], SplitStats()
        RecordSplitter().split([container_bytes(trigger, [too_deep])], out, stats)
        assert stats.text == 1 and out == [container_bytes(trigger, [too_deep])]  # forwarded as text, not lost


def test_without_the_exact_path_a_body_only_it_reads_comes_back_as_none():
    """The Office 365 processor reads a body on its loop only when the fast path takes it."""
    assert read_array(b'[{"a": 1}, {"b": "\xc3\xa9"}]', exact=False).items == [b'{"a": 1}', b'{"b": "\xc3\xa9"}']
    for body in (b'[{"a": "\\ud800"}]', b'[{"a": "\xff"}]', '[{"a": 1}]'.encode("utf-16"), b'[{"a": 1},]'):
        assert read_array(body, exact=False) is None
    assert read_array(b'[{"a": "\\ud800"}]').items == [b'{"a": "\\ud800"}']  # the exact path reads it
