"""Queries: rollups vs brute force, time zones, metrics, group-by expansion, filters, geo, paging, presets."""

from __future__ import annotations

import math
from dataclasses import replace
import random
import tempfile
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry import engine
from telemetry.errors import QueryError
from telemetry.events import make_event
from telemetry.predicate import compile_all, haversine_km
from telemetry.query import (BoolFilter, Filter, GeoFilter, Query, enrolments_query, parse_filter,
                             resolve_interval, users_query)
from tests.telemetry.conftest import T0, open_store

SLOT = 900_000_000
ORGS = ["acme", "globex", "initech"]
TYPES = ["pageview", "click", "request"]


def _random_events(rng: random.Random, n: int, span_h: int = 72) -> list:
    evs = []
    for i in range(n):
        attrs = {"org": rng.choice(ORGS), "path": f"/p{rng.randint(0, 6)}", "status": rng.choice([200, 404, 500])}
        if rng.random() < 0.8:
            attrs["user"] = f"u{rng.randint(0, 20)}"
        if rng.random() < 0.3:
            del attrs["org"]
        evs.append(make_event(rng.choice(TYPES), attrs,
                              time_us=int(T0.timestamp() * 1e6) + rng.randint(0, span_h * 3600 * 10**6)))
    return evs


def _brute(evs, start, end, bounds, types=(), org=None, group=(), metric="count"):
    s_us, e_us = int(start.timestamp() * 1e6), int(end.timestamp() * 1e6)
    out: dict = defaultdict(set if metric == "users" else int)
    for e in evs:
        if not s_us <= e.time_us < e_us or (types and e.type not in types):
            continue
        if org is not None and e.attrs.get("org") not in org:
            continue
        b = int(np.searchsorted(bounds, e.time_us, "right") - 1) if bounds is not None else -1
        key = (b, tuple(e.type if g == "type" else e.attrs.get(g) for g in group))
        if metric == "users":
            if "user" in e.attrs:
                out[key].add(e.attrs["user"])
        else:
            out[key] += 1
    return {k: (len(v) if metric == "users" else v) for k, v in out.items() if (v if metric != "users" else v)}


def _nonzero(groups):
    return {k: v for k, v in groups.items() if v}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), n=st.integers(1, 400), interval=st.sampled_from(["hour", "day", None]),
       tz=st.sampled_from(["UTC", "Asia/Kathmandu", "America/New_York"]),
       shape=st.sampled_from(["plain", "org", "org_group", "type_group", "users", "users_type"]))
def test_rollups_equal_brute_force_on_random_data(seed, n, interval, tz, shape):
    rng = random.Random(seed)
    evs = _random_events(rng, n)
    with tempfile.TemporaryDirectory() as d:
        s = open_store(Path(d))
        s.record(evs)
        s.flush(10)
        start = T0 + timedelta(hours=rng.randint(0, 24))
        end = start + timedelta(hours=rng.randint(1, 60))
        kw: dict = {}
        org = None
        if shape in ("org", "org_group"):
            org = rng.sample(ORGS, rng.randint(1, 2))
            kw["filters"] = (Filter("org", "in", tuple(org)),)
        group = {"org_group": ("org",), "type_group": ("type",), "users_type": ("type",)}.get(shape, ())
        metric = "users" if shape.startswith("users") else "count"
        types = tuple(rng.sample(TYPES, rng.randint(0, 2)))
        q = Query(start=start, end=end, types=types, interval=interval, tz=tz, group_by=group, metric=metric,
                  limit=10_000, **kw)
        func = metric
        bounds = engine.boundaries(start, end, interval, ZoneInfo(tz)) if interval else None
        plan = engine._rollup_plan(s, q, bounds, func, *(int(x.timestamp() * 1e6) for x in (start, end)))
        assert plan is not None, "this shape must be answered from rollups"
        with s.reading():
            via_rollups = engine._rollups(s, q, bounds, plan, func, int(start.timestamp() * 1e6),
                                          int(end.timestamp() * 1e6))
            via_segments = engine._scan(s, q, bounds, func, None, int(start.timestamp() * 1e6),
                                        int(end.timestamp() * 1e6))
        expect = _brute(evs, start, end, bounds, types, org, group, metric)
        if org is not None and group == ("org",):
            expect = {k: v for k, v in expect.items() if k[1][0] is not None}
        assert _nonzero(via_rollups) == expect
        assert _nonzero(via_segments) == expect
        # and the public result adds up with empty buckets filled
        res = s.query(q)
        assert sum(r.value for r in res.rows) == sum(expect.values())
        s.close()


def test_day_buckets_across_a_dst_change_are_local_days(store):
    ny = ZoneInfo("America/New_York")
    # DST starts 2026-03-08 02:00 local: that day is 23 hours long
    times = [datetime(2026, 3, 7, 23, 30, tzinfo=ny), datetime(2026, 3, 8, 0, 30, tzinfo=ny),
             datetime(2026, 3, 8, 23, 30, tzinfo=ny), datetime(2026, 3, 9, 0, 15, tzinfo=ny)]
    store.record([make_event("pageview", {}, time=t) for t in times])
    store.flush(5)
    r = store.query(Query(start=datetime(2026, 3, 7, tzinfo=ny), end=datetime(2026, 3, 10, tzinfo=ny),
                          interval="day", tz="America/New_York"))
    assert [(row.bucket.isoformat(), row.value) for row in r.rows] == [
        ("2026-03-07T00:00:00-05:00", 1), ("2026-03-08T00:00:00-05:00", 2), ("2026-03-09T00:00:00-04:00", 1)]
    hours = store.query(Query(start=datetime(2026, 3, 8, tzinfo=ny), end=datetime(2026, 3, 9, tzinfo=ny),
                              interval="hour", tz="America/New_York"))
    assert len(hours.rows) == 23


def test_kathmandu_hours_start_at_quarter_past_utc(store):
    ktm = ZoneInfo("Asia/Kathmandu")   # +05:45
    store.record([make_event("pageview", {}, time=datetime(2026, 3, 1, 10, 14, tzinfo=timezone.utc)),
                  make_event("pageview", {}, time=datetime(2026, 3, 1, 10, 15, tzinfo=timezone.utc)),
                  make_event("pageview", {}, time=datetime(2026, 3, 1, 11, 14, tzinfo=timezone.utc))])
    store.flush(5)
    r = store.query(Query(start=datetime(2026, 3, 1, 15, tzinfo=ktm), end=datetime(2026, 3, 1, 18, tzinfo=ktm),
                          interval="hour", tz="Asia/Kathmandu"))
    assert [(row.bucket.strftime("%H:%M%z"), row.value) for row in r.rows] == [
        ("15:00+0545", 1), ("16:00+0545", 2), ("17:00+0545", 0)]
    assert r.rows[1].bucket.astimezone(timezone.utc).strftime("%H:%M") == "10:15"


def test_empty_buckets_are_filled_and_auto_interval_resolves(store):
    store.record([make_event("x", {}, time=T0 + timedelta(days=3))])
    store.flush(5)
    r = store.query(Query(start=T0, end=T0 + timedelta(days=7)))
    assert r.interval == "day" and [row.value for row in r.rows] == [0, 0, 0, 1, 0, 0, 0]
    assert resolve_interval("auto", T0, T0 + timedelta(hours=48)) == "hour"
    assert resolve_interval("auto", T0, T0 + timedelta(days=40)) == "day"
    assert resolve_interval("auto", T0, T0 + timedelta(weeks=52)) == "week"
    assert resolve_interval("auto", T0, T0 + timedelta(weeks=53)) == "month"


def test_groups_times_buckets_is_bounded_with_a_clear_error(store):
    # each group gets every bucket, zeros included: 40 groups x 10,000 minutes would be
    # 400,000 rows built in memory for any page (a review measured 5 million: 2.3 GB, 40 s)
    store.record([make_event("signup", {"k": f"g{i}"}, time=T0 + timedelta(minutes=i)) for i in range(40)])
    store.flush(5)
    span = Query(start=T0, end=T0 + timedelta(minutes=10_000), interval="minute", limit=1)
    with pytest.raises(QueryError, match=r"group_by: 40 groups x 10000 minute buckets = 400000 rows, more than"):
        store.query(replace(span, group_by=("k",)))
    assert store.query(span).total_rows == 10_000  # one series over the same range is fine
    assert store.query(replace(span, group_by=("k",), end=T0 + timedelta(minutes=5_000))).total_rows == 200_000


def test_numeric_metrics_match_numpy(store):
    rng = random.Random(5)
    vals = {"acme": [], "globex": []}
    evs = []
    for i in range(500):
        org = rng.choice(list(vals))
        x = rng.choice([rng.randint(0, 1000), rng.random() * 100])
        vals[org].append(x)
        evs.append(make_event("request", {"org": org, "duration_ms": x}, time=T0 + timedelta(seconds=i)))
    evs.append(make_event("request", {"org": "acme"}, time=T0))   # no value: ignored by numeric metrics
    store.record(evs)
    store.flush(5)
    for metric, fn in [("sum", np.sum), ("avg", np.mean), ("min", np.min), ("max", np.max),
                       ("p50", lambda a: np.percentile(a, 50)), ("p95", lambda a: np.percentile(a, 95))]:
        r = store.query(Query(start=T0, end=T0 + timedelta(hours=1), metric=f"{metric}:duration_ms",
                              group_by=("org",), interval=None))
        got = {row.keys["org"]: row.value for row in r.rows}
        for org, xs in vals.items():
            assert math.isclose(got[org], float(fn(np.array(xs))), rel_tol=1e-9), metric


def test_group_by_expands_lists_and_map_keys_and_sums_map_members(store):
    store.record([
        make_event("enrolment.enrolled", {"needs": ["Legal Help", "Housing"], "supplies": {"Childcare": 5, "Food": 1}}, time=T0),
        make_event("enrolment.enrolled", {"needs": ["Legal Help"], "supplies": {"Childcare": 2}}, time=T0),
        make_event("enrolment.enrolled", {}, time=T0),
    ])
    store.flush(5)
    end = T0 + timedelta(hours=1)
    needs = store.query(Query(start=T0, end=end, group_by=("needs",), interval=None))
    assert {r.keys["needs"]: r.value for r in needs.rows} == {"Legal Help": 2, "Housing": 1, None: 1}
    sup = store.query(Query(start=T0, end=end, group_by=("supplies",), interval=None))
    assert {r.keys["supplies"]: r.value for r in sup.rows} == {"Childcare": 2, "Food": 1, None: 1}
    hours = store.query(Query(start=T0, end=end, metric="sum:supplies.Childcare", interval=None))
    assert hours.rows[0].value == 7
    both = store.query(Query(start=T0, end=end, group_by=("needs", "supplies"), interval=None))
    assert {(r.keys["needs"], r.keys["supplies"]): r.value for r in both.rows} == {
        ("Legal Help", "Childcare"): 2, ("Legal Help", "Food"): 1, ("Housing", "Childcare"): 1,
        ("Housing", "Food"): 1, (None, None): 1}


FILTER_CASES = [
    "org=acme", "org!=acme", "org=acme,globex", "status>=500", "status<404", "path~^/p[12]$", "user?", "!user",
    "status=500", "needs=b",
]


@pytest.mark.parametrize("expr", FILTER_CASES)
def test_columnar_filters_agree_with_the_event_predicate(store, expr):
    rng = random.Random(11)
    evs = _random_events(rng, 300, span_h=5)
    evs += [make_event("pageview", {"needs": ["a", "b"], "status": "500"}, time=T0),
            make_event("pageview", {"needs": ["c"]}, time=T0)]
    store.record(evs)
    store.flush(5)
    f = parse_filter(expr)
    for flt in (f, BoolFilter("not", (f,)), BoolFilter("or", (f, Filter("type", "eq", "click"))),
                BoolFilter("and", (f, Filter("path", "contains", "p1")))):
        want = sum(1 for e in evs if compile_all((), (flt,), None)(e))
        r = store.query(Query(start=T0, end=T0 + timedelta(hours=6), filters=(flt,), interval=None))
        assert sum(x.value for x in r.rows) == want, flt


def test_geo_radius_and_bbox_and_cells(store):
    pts = [(51.5074, -0.1278), (51.52, -0.10), (48.8566, 2.3522), (40.7128, -74.0060), (-33.87, 151.21),
           (51.45, -0.20)]
    store.record([make_event("pageview", {"lat": la, "lon": lo, "i": i}, time=T0) for i, (la, lo) in enumerate(pts)]
                 + [make_event("pageview", {"i": 99}, time=T0)])
    store.flush(5)
    end = T0 + timedelta(hours=1)
    for km in (5, 20, 400, 6000):
        want = sum(1 for la, lo in pts if haversine_km(la, lo, 51.5074, -0.1278) <= km)
        r = store.query(Query(start=T0, end=end, geo=GeoFilter(near=(51.5074, -0.1278, km)), interval=None))
        assert r.rows[0].value == want, km
    r = store.query(Query(start=T0, end=end, geo=GeoFilter(bbox=(48.0, -1.0, 52.0, 3.0)), interval=None))
    assert r.rows[0].value == 4
    # a box across the antimeridian: lon >= 150 or lon <= -170
    r = store.query(Query(start=T0, end=end, geo=GeoFilter(bbox=(-40.0, 150.0, 0.0, -170.0)), interval=None))
    assert r.rows[0].value == 1
    cells = store.query(Query(start=T0, end=end, group_by=("geo_cell",), geo_precision=0, interval=None,
                              geo=GeoFilter(bbox=(50.0, -1.0, 52.0, 1.0))))
    assert {(r.keys["lat"], r.keys["lon"]): r.value for r in cells.rows} == {(51.5, -0.5): 3, (51.5, 0.5): 0} or \
        {(r.keys["lat"], r.keys["lon"]): r.value for r in cells.rows} == {(51.5, -0.5): 3}
    listing = store.list_events(__import__("telemetry.query", fromlist=["ListQuery"]).ListQuery(
        start=T0, end=end, geo=GeoFilter(near=(51.5074, -0.1278, 20))))
    assert sorted(e.attrs["i"] for e in listing.events) == [0, 1, 5]


def test_aggregate_pages_chain_without_repeats_and_report_total(store):
    store.record([make_event("pageview", {"path": f"/p{i % 37}"}, time=T0 + timedelta(minutes=i)) for i in range(2000)])
    store.flush(5)
    q = Query(start=T0, end=T0 + timedelta(days=2), group_by=("path",), interval=None, order="value_desc", limit=10)
    seen, token = [], None
    while True:
        r = store.query(Query(**{**q.__dict__, "page_token": token}))
        assert r.total_rows == 37
        seen.extend(row.keys["path"] for row in r.rows)
        token = r.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 37
    values = [r.value for r in store.query(Query(**{**q.__dict__, "limit": 100})).rows]
    assert values == sorted(values, reverse=True)
    with pytest.raises(QueryError, match="page_token"):
        store.query(Query(**{**q.__dict__, "group_by": ("org",), "page_token": r.next_page_token or "bogus"}))


@pytest.mark.parametrize("q, field", [
    (dict(interval="hr"), "interval"), (dict(tz="Mars/Base"), "tz"), (dict(metric="median:x"), "metric"),
    (dict(order="random"), "order"), (dict(limit=0), "limit"), (dict(geo=GeoFilter()), "geo"),
    (dict(filters=(Filter("a", "like", 1),)), "filters[0]"), (dict(filters=(Filter("a", "regex", "("),)), "filters[0]"),
    (dict(end=T0), "end"), (dict(geo_precision=9), "geo_precision"),
])
def test_bad_queries_name_the_field(store, q, field):
    base = dict(start=T0, end=T0 + timedelta(days=1))
    with pytest.raises(QueryError) as ei:
        store.query(Query(**{**base, **q}))
    assert ei.value.field == field


def test_users_query_preset_counts_user_events_per_type_by_org_and_project(store):
    evs = [make_event("user.joined", {"org": "acme", "project": "p1", "user": "a"}, time=T0),
           make_event("user.joined", {"org": "acme", "project": "p2", "user": "b"}, time=T0),
           make_event("user.left", {"org": "acme", "project": "p1", "user": "a"}, time=T0 + timedelta(days=1)),
           make_event("user.role_changed", {"org": "acme", "project": "p1", "lat": 51.5, "lon": -0.1}, time=T0),
           make_event("user.joined", {"org": "globex", "project": "p1"}, time=T0),
           make_event("pageview", {"org": "acme", "project": "p1"}, time=T0)]
    store.record(evs)
    store.flush(5)
    r = store.query(users_query(T0, T0 + timedelta(days=2), org="acme", project="p1", interval="day"))
    got = {(row.bucket.date().isoformat(), row.keys["type"]): row.value for row in r.rows}
    assert got[("2026-03-01", "user.joined")] == 1 and got[("2026-03-02", "user.left")] == 1
    assert got[("2026-03-01", "user.role_changed")] == 1 and got[("2026-03-02", "user.joined")] == 0
    near = store.query(users_query(T0, T0 + timedelta(days=2), org="acme", interval=None,
                                   geo=GeoFilter(near=(51.5, -0.1, 10))))
    assert {row.keys["type"]: row.value for row in near.rows} == {"user.role_changed": 1}


def test_enrolments_query_preset_filters_by_supply_and_need(store):
    evs = [make_event("enrolment.enrolled", {"org": "o", "project": "p", "supplies": {"Childcare": 5}, "needs": ["Legal Help"]}, time=T0),
           make_event("enrolment.enrolled", {"org": "o", "project": "p", "supplies": {"Food": 1}, "needs": ["Legal Help"]}, time=T0),
           make_event("enrolment.unenrolled", {"org": "o", "project": "p", "supplies": {"Childcare": 1}, "needs": ["Housing"]}, time=T0),
           make_event("enrolment.enrolled", {"org": "x", "project": "p", "supplies": {"Childcare": 5}}, time=T0)]
    store.record(evs)
    store.flush(5)
    end = T0 + timedelta(days=1)
    r = store.query(enrolments_query(T0, end, org="o", project="p", supply="Childcare", interval=None))
    assert {row.keys["type"]: row.value for row in r.rows} == {"enrolment.enrolled": 1, "enrolment.unenrolled": 1}
    r = store.query(enrolments_query(T0, end, org="o", need="Legal Help", interval=None))
    assert {row.keys["type"]: row.value for row in r.rows} == {"enrolment.enrolled": 2}
    r = store.query(enrolments_query(T0, end, org="o", supply="Childcare", need="Housing", interval=None))
    assert {row.keys["type"]: row.value for row in r.rows} == {"enrolment.unenrolled": 1}


def test_parse_filter_forms():
    assert parse_filter("org=acme") == Filter("org", "eq", "acme")
    assert parse_filter("org!=acme") == Filter("org", "ne", "acme")
    assert parse_filter("org=acme,globex") == Filter("org", "in", ("acme", "globex"))
    assert parse_filter("status>=500") == Filter("status", "ge", 500)
    assert parse_filter("supplies.Childcare>0") == Filter("supplies.Childcare", "gt", 0)
    assert parse_filter("path~^/api/") == Filter("path", "regex", "^/api/")
    assert parse_filter("user?") == Filter("user", "exists")
    assert parse_filter("!user") == Filter("user", "missing")
    assert parse_filter("needs=Legal Help") == Filter("needs", "eq", "Legal Help")
    for bad in ("", "=x", "status>=abc", "path~("):
        with pytest.raises(QueryError):
            parse_filter(bad)


def test_simple_group_by_keeps_booleans_and_integers_apart(store):
    store.record([make_event("x", {"flag": True}, time=T0), make_event("x", {"flag": 1}, time=T0),
                  make_event("x", {"flag": "1"}, time=T0), make_event("x", {}, time=T0)])
    store.flush(5)
    r = store.query(Query(start=T0, end=T0 + timedelta(hours=1), group_by=("flag",), interval=None))
    got = sorted(((type(row.keys["flag"]).__name__, row.keys["flag"]), row.value) for row in r.rows)
    assert got == [(("NoneType", None), 1), (("bool", True), 1), (("int", 1), 1), (("str", "1"), 1)]


def test_top_n_from_rollups_reports_every_group_and_pages_on(store):
    # path i occurs i+1 times: the top 5 are /p199../p195, 200 groups in total
    store.record([make_event("pageview", {"path": f"/p{i}"}, time=T0 + timedelta(minutes=j % 600))
                  for i in range(200) for j in range(i + 1)])
    store.flush(10)
    q = Query(start=T0, end=T0 + timedelta(days=1), group_by=("path",), interval=None, order="value_desc", limit=5)
    r = store.query(q)
    assert r.total_rows == 200
    assert [(row.keys["path"], row.value) for row in r.rows] == [(f"/p{i}", i + 1) for i in range(199, 194, -1)]
    r2 = store.query(Query(**{**q.__dict__, "page_token": r.next_page_token}))
    assert [row.keys["path"] for row in r2.rows] == [f"/p{i}" for i in range(194, 189, -1)]
