"""Every Analytics RPC against a real store behind a real gRPC server: happy paths and error codes."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from proto.portico.v1 import analytics_pb2 as pb
from tests.proto.conftest import settle, to_pb
from tests.proto.data import START, sample_events

END = START + timedelta(days=10)


def ts(dt: datetime):
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromDatetime(dt)
    return t


def rpc_error(fn, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        result = fn(request, timeout=10)
        list(result) if not hasattr(result, "ListFields") else None
    return err.value


@pytest.fixture
def loaded(stub, store):
    events = sample_events(600)
    resp = stub.Record(pb.RecordRequest(events=to_pb(events)), timeout=30)
    assert (resp.accepted, resp.duplicates, len(resp.errors)) == (600, 0, 0)
    settle(store)
    return events


# ---- Record -----------------------------------------------------------------------------------

def test_record_reports_duplicates_and_per_event_errors_keeping_the_good_ones(stub, store):
    events = to_pb(sample_events(5))
    assert stub.Record(pb.RecordRequest(events=events[:3]), timeout=10).accepted == 3
    bad_type = pb.Event(type="Not A Type")
    nested = pb.Event(type="signup")
    nested.attrs["deep"].map_value.fields["x"].list_value.values.add(int_value=1)
    null_attr = pb.Event(type="signup")
    null_attr.attrs["empty"].SetInParent()
    batch = [events[0], bad_type, events[3], nested, events[4], null_attr]
    resp = stub.Record(pb.RecordRequest(events=batch), timeout=10)
    assert resp.accepted == 2 and resp.duplicates == 1
    assert [e.index for e in resp.errors] == [1, 3, 5]
    assert resp.errors[0].message.startswith("type: 'Not A Type' is not an event type")
    assert "attrs.deep" in resp.errors[1].message
    assert "attrs.empty" in resp.errors[2].message
    # durable and visible as soon as Record answered
    page = stub.ListEvents(pb.ListEventsRequest(start=ts(START), end=ts(END), page_size=100), timeout=10)
    assert {e.id for e in page.events} == {e.id for e in events}


def test_recorded_events_round_trip_exactly(stub):
    src = sample_events(20)
    stub.Record(pb.RecordRequest(events=to_pb(src)), timeout=10)
    page = stub.ListEvents(pb.ListEventsRequest(start=ts(START), end=ts(END), page_size=100), timeout=10)
    got = {e.id: e for e in page.events}
    for original in to_pb(src):
        assert got[original.id] == original


def test_oversize_batch_is_resource_exhausted(stub):
    err = rpc_error(stub.Record, pb.RecordRequest(events=[pb.Event(type="signup")] * 10_001))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 10000" in err.details()


def test_closed_store_is_unavailable(stub, store):
    store.close()
    err = rpc_error(stub.Record, pb.RecordRequest(events=to_pb(sample_events(1))))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    err = rpc_error(stub.Query, pb.QueryRequest(start=ts(START), end=ts(END)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


# ---- Query ------------------------------------------------------------------------------------

def test_query_counts_per_day_and_org_match_the_data(stub, loaded):
    resp = stub.Query(pb.QueryRequest(start=ts(START), end=ts(END), interval="day", group_by=["org"],
                                      types=["signup"], page_size=10_000), timeout=10)
    expected = Counter((e["time"][:10], e["attrs"]["org"]) for e in loaded if e["type"] == "signup")
    got = Counter()
    for row in resp.rows:
        assert row.WhichOneof("value") == "int_value"
        got[(row.bucket.ToDatetime().strftime("%Y-%m-%d"), row.keys["org"].string_value)] += row.int_value
    assert +got == expected
    assert resp.interval == "day" and resp.metric == "count" and list(resp.group_by) == ["org"]


def test_query_filters_and_geo(stub, loaded):
    def total(**kw) -> int:
        resp = stub.Query(pb.QueryRequest(start=ts(START), end=ts(END), interval="none", **kw), timeout=10)
        return sum(r.int_value for r in resp.rows)

    assert total(types=["request"], filters=[pb.Filter(expr="status>=500")]) == sum(
        1 for e in loaded if e["type"] == "request" and e["attrs"]["status"] >= 500)
    assert total(filters=[pb.Filter(expr="needs=Legal Help")]) == sum(
        1 for e in loaded if "Legal Help" in e["attrs"].get("needs", []))
    berlin = pb.GeoFilter(near=pb.Near(lat=52.52, lon=13.40, km=50))
    assert total(geo=berlin) == sum(1 for e in loaded if e["attrs"]["lat"] == 52.52)
    cond = pb.Filter(condition=pb.Condition(attr="org", op="in", value=pb.Value(
        list_value=pb.ValueList(values=[pb.Value(string_value="acme"), pb.Value(string_value="globex")]))))
    assert total(filters=[cond]) == sum(1 for e in loaded if e["attrs"]["org"] in ("acme", "globex"))


def test_preset_queries(stub, loaded):
    resp = stub.Query(pb.QueryRequest(start=ts(START), end=ts(END), preset="enrolments", interval="none",
                                      group_by=["org"]), timeout=10)
    expected = Counter((e["type"], e["attrs"]["org"]) for e in loaded if e["type"].startswith("enrolment."))
    got = Counter({(r.keys["type"].string_value, r.keys["org"].string_value): r.int_value for r in resp.rows})
    assert +got == expected
    assert list(resp.group_by) == ["type", "org"]
    resp = stub.Query(pb.QueryRequest(start=ts(START), end=ts(END), preset="users", interval="none"), timeout=10)
    assert {r.keys["type"].string_value for r in resp.rows} == {"user.joined", "user.left", "user.role_changed"}


@pytest.mark.parametrize("request_, field", [
    (pb.QueryRequest(start=ts(START), end=ts(END), interval="hr"), "interval: 'hr' is not one of"),
    (pb.QueryRequest(start=ts(START), end=ts(END), metric="median"), "metric"),
    (pb.QueryRequest(start=ts(START), end=ts(END), filters=[pb.Filter(expr="org")]), "filter"),
    (pb.QueryRequest(start=ts(START), end=ts(END), tz="Mars/Base"), "tz"),
    (pb.QueryRequest(start=ts(START), end=ts(END), page_size=20_000), "page_size: 20000 is out of range"),
    (pb.QueryRequest(start=ts(START), end=ts(END), preset="people"), "preset: 'people' is not one of"),
    (pb.QueryRequest(start=ts(END), end=ts(START)), "end"),
    (pb.QueryRequest(end=ts(END)), "start: required"),
    (pb.QueryRequest(start=ts(START), end=ts(END), page_token="garbage"), "page_token"),
    (pb.QueryRequest(start=ts(START), end=ts(END), geo=pb.GeoFilter(near=pb.Near(lat=91, lon=0, km=1))), "geo"),
])
def test_bad_queries_are_invalid_argument_naming_the_field(stub, request_, field):
    err = rpc_error(stub.Query, request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.details()


def _all_rows(stub, request):
    rows, pages = [], 0
    while True:
        resp = stub.Query(request, timeout=10)
        rows.extend(resp.rows)
        pages += 1
        if not resp.next_page_token:
            return rows, pages, resp.total_rows
        request.page_token = resp.next_page_token


def test_paging_through_a_large_result_equals_the_unpaged_result(stub, loaded):
    base = dict(start=ts(START), end=ts(END), interval="hour", group_by=["org", "project"])
    unpaged = stub.Query(pb.QueryRequest(**base, page_size=10_000), timeout=10)
    assert len(unpaged.rows) > 300 and not unpaged.next_page_token
    rows, pages, total = _all_rows(stub, pb.QueryRequest(**base, page_size=37))
    assert pages == -(-len(unpaged.rows) // 37)
    assert rows == list(unpaged.rows) and total == unpaged.total_rows == len(rows)


# ---- ListEvents -------------------------------------------------------------------------------

def test_list_events_pages_equal_the_unpaged_list_in_time_order(stub, loaded):
    request = pb.ListEventsRequest(start=ts(START), end=ts(END), types=["signup", "request"], page_size=23)
    got = []
    while True:
        resp = stub.ListEvents(request, timeout=10)
        got.extend(resp.events)
        if not resp.next_page_token:
            break
        request.page_token = resp.next_page_token
    expected = sorted((e for e in loaded if e["type"] in ("signup", "request")), key=lambda e: e["time"])
    assert [e.id for e in got] == [e["id"] for e in expected]
    desc = stub.ListEvents(pb.ListEventsRequest(start=ts(START), end=ts(END), types=["signup", "request"],
                                                page_size=5, descending=True), timeout=10)
    assert [e.id for e in desc.events] == [e["id"] for e in expected[::-1][:5]]


def test_list_events_errors(stub):
    err = rpc_error(stub.ListEvents, pb.ListEventsRequest(start=ts(START), end=ts(END), page_size=-1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in err.details()
    err = rpc_error(stub.ListEvents, pb.ListEventsRequest(start=ts(START), end=ts(END), filters=[pb.Filter()]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "filters[0]" in err.details()


# ---- Funnel -----------------------------------------------------------------------------------

def test_funnel(stub, store):
    t = START + timedelta(hours=1)
    events = []
    for i, steps in enumerate((3, 3, 2, 1, 1)):
        for s, etype in enumerate(("visit", "signup", "purchase")[:steps]):
            events.append({"id": f"f{i}{s}", "time": (t + timedelta(minutes=10 * s)).isoformat(),
                           "type": etype, "attrs": {"user": f"u{i}"}})
    stub.Record(pb.RecordRequest(events=to_pb(events)), timeout=10)
    settle(store)
    request = pb.FunnelRequest(start=ts(START), end=ts(END),
                               steps=[pb.FunnelStep(type=x) for x in ("visit", "signup", "purchase")])
    request.within.FromTimedelta(timedelta(hours=1))
    resp = stub.Funnel(request, timeout=10)
    assert [(s.type, s.entered) for s in resp.steps] == [("visit", 5), ("signup", 3), ("purchase", 2)]
    request.within.FromTimedelta(timedelta(minutes=15))
    assert [s.entered for s in stub.Funnel(request, timeout=10).steps] == [5, 3, 0]


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.ClearField("steps"), "steps: needs at least one step"),
    (lambda r: r.ClearField("within"), "within: required"),
    (lambda r: r.steps.add(type=""), "steps[1].type: required"),
])
def test_funnel_errors(stub, mutate, message):
    request = pb.FunnelRequest(start=ts(START), end=ts(END), steps=[pb.FunnelStep(type="visit")])
    request.within.FromTimedelta(timedelta(hours=1))
    mutate(request)
    err = rpc_error(stub.Funnel, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details()


def _seconds(value: int):
    from google.protobuf.timestamp_pb2 import Timestamp
    return Timestamp(seconds=value)


BEFORE_1970 = ts(datetime(1969, 12, 1, tzinfo=timezone.utc))
YEAR_9999 = ts(datetime(9999, 12, 31, tzinfo=timezone.utc))


@pytest.mark.parametrize("call, make, message", [
    # once INTERNAL ("int too large to convert", "year 10000 is out of range", an OverflowError)
    ("ListEvents", lambda: pb.ListEventsRequest(start=BEFORE_1970, end=ts(END)), "start: 1969-12-01"),
    ("Query", lambda: pb.QueryRequest(start=ts(START), end=YEAR_9999, metric="count"), "end: 9999-12-31"),
    ("Query", lambda: pb.QueryRequest(start=_seconds(-10**12), end=ts(END), metric="count"),
     "start: -1000000000000 s is outside years 1 to 9999"),
    ("Funnel", lambda: _long_funnel(), "within: "),
])
def test_times_out_of_the_stores_range_are_invalid_arguments(stub, call, make, message):
    err = rpc_error(getattr(stub, call), make())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details(), err.details()


def _long_funnel():
    request = pb.FunnelRequest(start=ts(START), end=ts(END), steps=[pb.FunnelStep(type="visit")])
    request.within.seconds = 2**62
    return request


# ---- Export and Stats -------------------------------------------------------------------------

def _export(stub, request) -> tuple[list[list[str]], list[pb.ExportChunk]]:
    chunks = list(stub.Export(request, timeout=30))
    text = b"".join(c.data for c in chunks).decode("utf-8")
    return list(csv.reader(io.StringIO(text))), chunks


def test_export_csv_equals_the_query_result(stub, loaded):
    query = pb.QueryRequest(start=ts(START), end=ts(END), interval="hour", group_by=["org"], page_size=50)
    rows, chunks = _export(stub, pb.ExportRequest(query=query))
    query.page_size = 10_000
    expected = stub.Query(query, timeout=10)
    header, body = rows[0], rows[1:]
    assert len(body) == len(expected.rows) > 50  # every page, not just the first
    assert chunks[-1].rows == len(body) and chunks[0].total_rows == expected.total_rows
    org_col = header.index("org")
    value_col = len(header) - 1
    assert [(r[org_col], float(r[value_col])) for r in body] == [
        (row.keys["org"].string_value, float(row.int_value)) for row in expected.rows]


def test_export_events_csv_equals_list_events(stub, loaded):
    rows, _ = _export(stub, pb.ExportRequest(events=pb.ListEventsRequest(start=ts(START), end=ts(END),
                                                                         page_size=100)))
    header, body = rows[0], rows[1:]
    assert [r[header.index("id")] for r in body] == [e["id"] for e in sorted(loaded, key=lambda e: e["time"])]


def test_export_large_csv_is_chunked(stub, store):
    events = sample_events(3000, seed=3)
    stub.Record(pb.RecordRequest(events=to_pb(events)), timeout=30)
    rows, chunks = _export(stub, pb.ExportRequest(events=pb.ListEventsRequest(start=ts(START), end=ts(END))))
    assert len(rows) == 3001 and len(chunks) > 2
    assert [c.rows for c in chunks] == sorted(c.rows for c in chunks)


def test_export_errors_come_before_any_data(stub):
    err = rpc_error(stub.Export, pb.ExportRequest(query=pb.QueryRequest(start=ts(START), end=ts(END),
                                                                        interval="hr")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "interval" in err.details()
    err = rpc_error(stub.Export, pb.ExportRequest())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "source" in err.details()


def test_stats(stub, loaded):
    resp = stub.Stats(pb.StatsRequest(), timeout=10)
    assert resp.values["events"].int_value == len(loaded)
    assert resp.values["partitions"].int_value >= 1
