"""Message bodies to events: envelopes unwrapped, other JSON as is, text kept, empty and heartbeats skipped."""

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from azure_eventhub.records import RecordSplitter, SplitStats, text_as_json, text_as_raw
from tests.eventhub_helpers import canonical, envelope, fixture_lines


def split(bodies, **kwargs):
    out, stats = [], SplitStats()
    RecordSplitter(**kwargs).split(bodies, out, stats)
    return out, stats


def test_fixture_envelopes_become_one_event_per_record():
    lines = fixture_lines()
    assert len(lines) == 29
    out, stats = split([envelope(lines[:20]), envelope(lines[20:])])
    assert [canonical(orjson.loads(e)) for e in out] == [canonical(orjson.loads(line)) for line in lines]
    assert stats == SplitStats()  # nothing skipped, repaired or sent as text


def test_records_keep_their_bytes_key_order_and_unicode():
    record = '{"z":1, "a":"MFA f\\u00fcr Gäste","m":{"k":"CA – iOS \\\\u0026 Android\\/x"}}'.encode()
    out, _ = split([b'{"records": [' + record + b"]}"])
    assert out == [record]


def test_other_json_is_forwarded_untouched():
    bodies = [b'{"category": "X", "b": 1}', b"[1, 2, 3]", b'"just a string"', b"42", b'{"records": "not a list"}']
    out, stats = split(bodies)
    assert out == bodies
    assert stats.text == 0


def test_empty_null_and_heartbeats_are_skipped_and_counted():
    out, stats = split([b"", b"   \n", b"null", b'{"records": []}', b'{"records":[{"a":1}]}'])
    assert out == [b'{"a":1}']
    assert (stats.empty, stats.heartbeats) == (3, 1)


def test_non_json_is_forwarded_as_text_intake_and_playbook():
    body = b"<134>Jan 1 host app: plain syslog line"
    assert split([body], text_event=text_as_raw)[0] == [body]
    out, stats = split([body], text_event=text_as_json)
    assert orjson.loads(out[0]) == body.decode()
    assert stats.text == 1 and stats.invalid_utf8 == 0


def test_invalid_utf8_keeps_every_byte_visible():
    body = b"caf\xe9 \xff ok"
    out, stats = split([body], text_event=text_as_raw)
    assert out == [b"caf\\xe9 \\xff ok"]
    assert stats.invalid_utf8 == 1 and stats.text == 1


def test_invalid_utf8_inside_json_is_kept_as_hex_in_the_record():
    out, stats = split([b'{"records":[{"a":"\xff"}]}'], text_event=text_as_json)
    assert out == [b'{"a":"\\\\xff"}'] and orjson.loads(out[0]) == {"a": "\\xff"}
    assert stats.repaired == 1 and stats.text == 0 and stats.invalid_utf8 == 0


def test_json_orjson_refuses_is_still_json():
    bom = b"\xef\xbb\xbf" + b'{"records":[{"a":1},{"b":2}]}'
    utf16 = '{"records":[{"c":"é"}]}'.encode("utf-16")
    out, stats = split([bom, utf16])
    assert [orjson.loads(e) for e in out] == [{"a": 1}, {"b": 2}, {"c": "é"}]
    assert stats.text == 0


def test_utf16_document_without_bom_is_forwarded_as_utf8():
    # Its bytes are valid UTF-8 too (a NUL after each character): they must not go out as they came.
    out, stats = split(['{"category": "Utf16", "id": 7}'.encode("utf-16-le")])
    assert out == [b'{"category": "Utf16", "id": 7}'] and stats.text == 0


def test_integers_beyond_64_bits_keep_every_digit():
    big, low = 123456789012345678901234567890, -9223372036854775809
    out, _ = split([b'{"records":[{"v":%d},{"w":%d,"s":"x"}]}' % (big, low), b'{"v":%d}' % big])
    assert out == [b'{"v":%d}' % big, b'{"w":%d,"s":"x"}' % low, b'{"v":%d}' % big]


def test_lone_surrogate_escapes_stay_json():
    out, stats = split([b'{"a":"\\ud800"}', b'{"records":[{"a":"\\udc00x"}]}'], text_event=text_as_json)
    assert [orjson.loads(e.replace(b"\\ud800", b"").replace(b"\\udc00", b"")) for e in out] == [{"a": ""}, {"a": "x"}]
    assert stats.text == 0


def test_ndjson_bodies_are_split_per_line():
    body = b'{"records":[{"a":1}]}\n{"b":2}\n\n[3]\n'
    out, stats = split([body])
    assert out == [b'{"a":1}', b'{"b":2}', b"[3]"]
    assert stats.text == 0


def test_category_filter_is_case_insensitive_and_keeps_unclassified_records():
    records = [b'{"category":"SignInLogs","n":1}', b'{"category":"AuditLogs","n":2}', b'{"n":3}', b"[4]"]
    out, stats = split([envelope(records), b'{"category":"AuditLogs","n":5}'], categories=["signinlogs"])
    assert [orjson.loads(e) for e in out] == [{"category": "SignInLogs", "n": 1}, {"n": 3}, [4]]
    assert stats.filtered == 2


def test_oversize_record_is_passed_on_for_the_forwarder_to_set_aside():
    big = orjson.dumps({"category": "AuditLogs", "blob": "x" * 300_000})
    out, _ = split([envelope([big, b'{"small":1}'])])
    assert len(out[0]) > 250_000 and out[1] == b'{"small":1}'


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_fuzzed_bodies_never_raise_and_every_event_is_utf8(bodies):
    out, stats = split(bodies, text_event=text_as_json)
    # Every body is accounted for: an event at least, or a reason it gave none (an envelope may hold one record
    # or several, an NDJSON body one per line).
    assert len(out) + stats.empty + stats.heartbeats >= len(bodies)
    for event in out:
        event.decode("utf-8")
        orjson.loads(event)  # playbook mode: every event is a JSON document


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=20),
                                                               st.booleans(), st.none()), max_size=6), max_size=30))
def test_fuzzed_envelopes_round_trip(records):
    body = orjson.dumps({"records": records})
    out, stats = split([body])
    if records:
        assert [orjson.loads(e) for e in out] == records
    else:
        assert out == [] and stats.heartbeats == 1


@pytest.mark.parametrize("body", [b"{", b'{"records":[{"a":1},]}', b"\x00\x01", b"NaN"])
def test_broken_json_is_text(body):
    out, stats = split([body])
    assert stats.text == 1 and len(out) == 1
