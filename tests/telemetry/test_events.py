"""The event model: validation naming the field, normalisation, round trips through the store."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import msgpack
import pytest

from telemetry.errors import EventError
from telemetry.events import decode_row, decode_row_batch, encode_rows, event_from_json, event_to_json, make_event, new_id, row_key
from telemetry.query import ListQuery
from tests.telemetry.conftest import T0

EVERY_TYPE = {
    "s": "héllo ✓", "empty": "", "i": 42, "neg": -7, "big": 2**62, "f": 3.25, "t": True, "fl": False,
    "lst": ["Legal Help", 3, 1.5, True], "mp": {"Childcare": 5, "Food": 2.5, "ok": False, "note": "x"},
    "lat": 51.5, "lon": -0.12,
}


def test_every_attribute_type_round_trips_through_the_store(store):
    ev = make_event("enrolment.enrolled", EVERY_TYPE, id="ev-1", time=T0 + timedelta(microseconds=123))
    assert store.record([ev]).accepted == 1
    page = store.list_events(ListQuery(start=T0, end=T0 + timedelta(hours=1)))
    [got] = page.events
    assert got.id == "ev-1" and got.type == "enrolment.enrolled"
    assert got.time_us == ev.time_us
    assert dict(got.attrs) == EVERY_TYPE
    assert type(got.attrs["t"]) is bool and type(got.attrs["i"]) is int and type(got.attrs["f"]) is float


def test_json_form_round_trips():
    ev = make_event("pageview", {"path": "/a"}, time="2026-03-01T10:00:00.5Z")
    j = event_to_json(ev)
    assert j["time"] == "2026-03-01T10:00:00.500000Z"
    back = event_from_json(j)
    assert back == ev


def test_generated_ids_are_time_ordered_and_26_chars():
    a = new_id(1_000_000)
    b = new_id(2_000_000)
    assert len(a) == 26 and a < b
    same_ms = [new_id(5_000_000 + i) for i in range(5000)]   # crosses counter cache boundaries
    assert len(set(same_ms)) == 5000 and same_ms == sorted(same_ms)
    assert all(set(i) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ") for i in same_ms)


def test_a_forked_child_never_repeats_its_parents_ids():
    import os
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, ",".join(new_id(7_000_000) for _ in range(100)).encode())
        os._exit(0)
    os.close(w)
    child = set(os.read(r, 1 << 16).decode().split(","))
    os.waitpid(pid, 0)
    parent = {new_id(7_000_000) for _ in range(100)}
    assert len(child) == 100 and not child & parent
    assert {i[10:18] for i in child} != {i[10:18] for i in parent}   # a new random part


@pytest.mark.parametrize("kwargs, field", [
    (dict(type="Page View"), "type"),
    (dict(type=""), "type"),
    (dict(type="x" * 65), "type"),
    (dict(attrs={"a": None}), "attrs.a"),
    (dict(attrs={"a": float("nan")}), "attrs.a"),
    (dict(attrs={"a": object()}), "attrs.a"),
    (dict(attrs={"a": "x" * 5000}), "attrs.a"),
    (dict(attrs={"a": 2**64}), "attrs.a"),
    (dict(attrs={"a.b": 1}), "attrs"),
    (dict(attrs={"type": "x"}), "attrs.type"),
    (dict(attrs={"k" * 65: 1}), "attrs"),
    (dict(attrs={"m": {"x": [1]}}), "attrs.m.x"),
    (dict(attrs={"m": {"x": {"y": 1}}}), "attrs.m.x"),
    (dict(attrs={"l": [1, [2]]}), "attrs.l[1]"),
    (dict(attrs={"l": list(range(101))}), "attrs.l"),
    (dict(attrs={f"a{i}": i for i in range(65)}), "attrs"),
    (dict(attrs={f"a{i}": "x" * 2000 for i in range(10)}), "attrs"),
    (dict(id="has space"), "id"),
    (dict(time=datetime(2026, 1, 1)), "time"),
    (dict(time="yesterday"), "time"),
    (dict(time=-5), "time"),
])
def test_bad_events_are_rejected_naming_the_field(kwargs, field):
    kwargs.setdefault("type", "pageview")
    with pytest.raises(EventError) as ei:
        make_event(kwargs.pop("type"), **kwargs)
    assert ei.value.field == field
    assert str(ei.value).startswith(field + ":")


def test_unknown_top_level_json_field_is_named():
    with pytest.raises(EventError) as ei:
        event_from_json({"type": "pageview", "org": "acme"})
    assert ei.value.field == "org" and "attrs" in str(ei.value)


def test_bad_events_in_a_batch_are_reported_and_good_ones_accepted(store):
    res = store.record([{"type": "pageview", "attrs": {"a": 1}},
                        {"type": "BAD TYPE"},
                        {"type": "pageview", "attrs": {"x": None}}])
    assert res.accepted == 1
    assert [i for i, _ in res.errors] == [1, 2]
    assert "type" in res.errors[0][1] and "attrs.x" in res.errors[1][1]


def test_time_accepts_datetime_epoch_and_text():
    a = make_event("x", time=datetime(2026, 3, 1, 1, tzinfo=timezone.utc))
    b = make_event("x", time=a.time_us / 1e6)
    c = make_event("x", time="2026-03-01T02:00:00+01:00")
    assert a.time_us == b.time_us == c.time_us


@pytest.mark.parametrize("eid", [None, "k", "x" * 31, "y" * 32, "z" * 128, 'q"uo\\te'])
def test_encoded_rows_are_one_json_line_of_id_type_and_attrs(eid):
    ev = make_event("user.joined", {"org": "acme", "n": 3, "x": 2.5, "ok": True, "needs": ["Legal Help"],
                                    "supplies": {"Childcare": 5}, "name": "Zoë \n\"q\""},
                    id=eid, time_us=1_000_000)
    (row,) = encode_rows([ev], [ev.id.encode()])
    assert b"\n" not in row
    assert json.loads(row) == {"i": ev.id, "y": "user.joined", "a": dict(ev.attrs)}
    assert decode_row(row_key(ev.time_us, 7), row) == ev
    assert decode_row_batch([row, row]) == [(ev.id, ev.type, dict(ev.attrs))] * 2


def test_rows_in_the_older_msgpack_form_are_still_read():
    attrs = {"org": "acme", "n": 3, "needs": ["Legal Help"], "supplies": {"Childcare": 5}}
    old = msgpack.packb(["01OLD", "user.joined", attrs], use_bin_type=True)
    ev = decode_row(row_key(5, 1), old)
    assert (ev.id, ev.time_us, ev.type, ev.attrs) == ("01OLD", 5, "user.joined", attrs)
    new = encode_rows([make_event("x", {"a": 1})], [b"01NEW"])[0]
    assert decode_row_batch([old, new]) == [("01OLD", "user.joined", attrs), ("01NEW", "x", {"a": 1})]
