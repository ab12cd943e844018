"""The record filter's lists: the keys of a list are those of its records one by one, whatever the list mixes, and
a list is admitted the same whether it takes the path of fresh records or the one record at a time."""

from __future__ import annotations

import orjson

from office365.record_filter import RecordFilter, record_key, record_keys


def test_a_list_mixing_records_msgspec_refuses_has_each_record_s_own_key():
    plain = orjson.dumps({"Id": "1", "n": 2})
    lone = b'{"Id": "2", "a": "\\ud800"}'  # a lone surrogate escape: the standard library's path
    huge = b'{"Id": "3", "x": 1e400}'  # beyond a double: not JSON msgspec takes either
    mixed = [plain, lone, huge, b'{"n": 2, "Id": "1"}']
    keys = record_keys(mixed)
    assert keys == [record_key(record) for record in mixed]
    assert keys[0] == keys[3] and len(set(keys[:3])) == 3
    assert record_keys([]) == []


def test_fresh_lists_and_lists_with_repeats_are_admitted_alike():
    seen = RecordFilter(10)
    first = [orjson.dumps({"Id": str(index)}) for index in range(3)]
    assert seen.admit(first) == (first, record_keys(first))  # nothing seen: every record, in order
    again = [orjson.dumps({"Id": "3"}), first[1], orjson.dumps({"Id": "4"}), orjson.dumps({"Id": "3"})]
    fresh, keys = seen.admit(again)
    assert fresh == [again[0], again[2]] and keys == record_keys(fresh)  # seen before, or twice in the list
    assert len(seen) == 5
    assert seen.admit([b'{"Id":"4"}', b'{ "Id" : "5" }']) == ([b'{ "Id" : "5" }'], [record_key(b'{"Id":"5"}')])
