"""Record's fast form, `RecordRequest.events_msgpack` (proto/packed.py), against a real server
and store, plus the packing helpers on their own."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import grpc
import msgpack
import pytest

from proto import packed
from proto.client import AnalyticsClient, ClientSettings
from proto.portico.v1 import analytics_pb2 as pb
from proxy.cli_analytics import wire_event_from_json_line
from tests.proto.conftest import to_pb
from tests.proto.data import START, sample_events

END = START + timedelta(days=10)


def wire(events: list[dict]) -> list[dict]:
    return [wire_event_from_json_line(json.dumps(e)) for e in events]


def list_all(stub) -> list[pb.Event]:
    req = pb.ListEventsRequest(page_size=10_000)
    req.start.FromDatetime(START)
    req.end.FromDatetime(END)
    return list(stub.ListEvents(req, timeout=10).events)


def rpc_error(stub, request: pb.RecordRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.Record(request, timeout=10)
    return err.value


@pytest.fixture
def client(server):
    with AnalyticsClient(ClientSettings(server=server.address, timeout=10)) as c:
        yield c


# ---- against the server -------------------------------------------------------------------------

def test_packed_events_are_stored_exactly_as_the_typed_form_stores_them(stub, client):
    src = sample_events(40)
    resp = client.record_events(wire(src[:20]))
    assert (resp.accepted, resp.duplicates, list(resp.errors)) == (20, 0, [])
    stub.Record(pb.RecordRequest(events=to_pb(src[20:])), timeout=10)
    got = {e.id: e for e in list_all(stub)}
    # the same JSON through either form gives the same stored event (types of values kept)
    for original in to_pb(src):
        assert got[original.id] == original
    # a retry of the same packed batch is all duplicates (idempotent)
    again = client.record_events(wire(src[:20]))
    assert (again.accepted, again.duplicates) == (0, 20)


def test_bad_items_are_reported_by_index_and_field_and_the_good_ones_kept(stub, client):
    good = wire(sample_events(3))
    batch = [
        good[0],
        {"type": "Not A Type"},
        {"type": "signup", "attrs": {"deep": {"x": [1]}}},
        good[1],
        {"type": "signup", "colour": "red"},
        {"type": "signup", "attrs": ["org", "acme"]},
        {"type": "signup", "time_us": True},
        {"type": "signup", "attrs": {"empty": None}},
        {"attrs": {"org": "acme"}},
        "signup",
        {"type": "signup", "time_us": -5},
        {"type": ["signup"]},
        {"type": "signup", "id": 5},
        good[2],
    ]
    resp = client.record_events(batch)
    assert (resp.accepted, resp.duplicates) == (3, 0)
    errors = {e.index: e.message for e in resp.errors}
    assert sorted(errors) == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert errors[1].startswith("type: 'Not A Type' is not an event type")
    assert errors[2].startswith("attrs.deep.x: maps hold scalars only")
    assert errors[4].startswith("colour: unknown field") and "type, attrs, id, time_us" in errors[4]
    assert errors[5].startswith("attrs: expected a map") and "an array" in errors[5]
    assert errors[6].startswith("time_us: expected an integer")
    assert errors[7].startswith("attrs.empty: null is not a value")
    assert errors[8].startswith("type: required")
    assert errors[9].startswith("event: expected a map") and "a string" in errors[9]
    assert errors[10].startswith("time:") and "-5" in errors[10]
    assert errors[11] == "type: expected a string like 'pageview', got an array"
    assert errors[12].startswith("id: 5 is not an id")
    assert {e.id for e in list_all(stub)} == {g["id"] for g in good}


def test_server_generates_ids_and_times_when_absent(stub, client):
    before = datetime.now(timezone.utc)
    assert client.record_events([{"type": "signup", "attrs": {"org": "acme"}}]).accepted == 1
    req = pb.ListEventsRequest()
    req.start.FromDatetime(before - timedelta(seconds=5))
    req.end.FromDatetime(datetime.now(timezone.utc) + timedelta(seconds=5))
    (ev,) = stub.ListEvents(req, timeout=10).events
    assert len(ev.id) == 26 and ev.attrs["org"].string_value == "acme"


@pytest.mark.parametrize("blob, message", [
    (b"\x81\xa4type\xa6signup", "expected a msgpack array of event maps; the data starts with byte 0x81"),
    (msgpack.packb([{"type": "signup"}]) + b"\x01", "trailing bytes after the msgpack array"),
    (b"\x92\xc1", "not a valid msgpack array"),
    (b"\x91", "not a valid msgpack array"),
    (b"\x91\x81\x01\xa1x", "not a valid msgpack array"),   # integer map key
    (b"\x91\x82\xa4type\xa1x\xa5attrs\x81\xa1a" + b"\x91" * 200_000 + b"\x01", "nested too deeply"),
])
def test_undecodable_blobs_fail_the_call_naming_the_field(stub, blob, message):
    err = rpc_error(stub, pb.RecordRequest(events_msgpack=blob))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("events_msgpack: ") and message in err.details()


def test_typed_and_packed_events_in_one_request_are_refused(stub):
    req = pb.RecordRequest(events=to_pb(sample_events(1)), events_msgpack=packed.pack_events([{"type": "signup"}]))
    err = rpc_error(stub, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "not both" in err.details()


def test_oversize_packed_batch_is_resource_exhausted_and_nothing_is_stored(stub, store):
    blob = packed.pack_events([{"type": "signup"}] * 10_001)
    err = rpc_error(stub, pb.RecordRequest(events_msgpack=blob))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == "events_msgpack: batch of 10001 events; at most 10000 per Record call"
    assert store.stats().events == 0


def test_a_full_batch_of_10000_is_accepted(client):
    events = [{"type": "signup", "id": f"e{i}", "time_us": 1_790_000_000_000_000 + i, "attrs": {"n": i}}
              for i in range(10_000)]
    assert client.record_events(events).accepted == 10_000


def test_empty_packed_array_records_nothing(stub):
    resp = stub.Record(pb.RecordRequest(events_msgpack=packed.pack_events([])), timeout=10)
    assert (resp.accepted, resp.duplicates, len(resp.errors)) == (0, 0, 0)


# ---- the helpers -------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 15, 16, 65_535, 65_536])
def test_join_packed_and_packed_count_agree_with_msgpack(n):
    parts = [msgpack.packb({"type": "x"})] * n
    blob = packed.join_packed(parts)
    assert blob == msgpack.packb([{"type": "x"}] * n)
    assert packed.packed_count(blob) == n
    assert len(packed.unpack_events(blob)) == n


def test_pack_events_names_the_event_and_attribute_it_cannot_encode():
    events = [{"type": "x"}, {"type": "x", "attrs": {"ok": 1, "when": datetime(2026, 1, 1)}}]
    with pytest.raises(packed.PackError) as err:
        packed.pack_events(events)
    assert err.value.index == 1 and str(err.value).startswith("events[1]: attrs.when: cannot encode datetime")
    with pytest.raises(packed.PackError, match=r"events\[0\]: attrs.big: cannot encode int"):
        packed.pack_events([{"type": "x", "attrs": {"big": 2**64}}])


def test_wire_event_converts_datetimes_to_microseconds():
    t = datetime(2026, 11, 1, 10, 0, 0, 500_000, tzinfo=timezone.utc)
    assert packed.wire_event("signup", {"org": "a"}, id="e1", time=t) == {
        "type": "signup", "attrs": {"org": "a"}, "id": "e1", "time_us": 1_793_527_200_500_000}
    assert packed.wire_event("signup") == {"type": "signup"}


def test_fast_and_careful_paths_give_the_same_events_and_messages():
    """A well-shaped blob is decoded by msgspec; a badly shaped one by the careful path.
    Both must keep the same good events and report the same message for a bad value."""
    good = wire(sample_events(3))
    bad_value = {"type": "Not A Type"}
    fast = packed.events_from_blob(packed.pack_events([good[0], bad_value, good[1], good[2]]))
    careful = packed.events_from_packed(packed.unpack_events(packed.pack_events([good[0], bad_value, good[1],
                                                                                 good[2]])))
    assert fast[0] == careful[0] and len(fast[0]) == 3
    assert fast[1] == careful[1] == [0, 2, 3]
    assert fast[2] == careful[2] and fast[2][0][0] == 1
    # one badly shaped item anywhere: the whole blob takes the careful path, still per index
    events, where, errors = packed.events_from_blob(packed.pack_events([good[0], {"type": "x", "n": 1}, good[1]]))
    assert len(events) == 2 and where == [0, 2] and errors[0][0] == 1 and errors[0][1].startswith("n: unknown")
