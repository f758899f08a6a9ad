"""Raw listing: keyset pagination that stays valid while events arrive; funnels."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

import pytest

from telemetry.errors import QueryError
from telemetry.events import make_event
from telemetry.query import Filter, FunnelQuery, FunnelStep, ListQuery
from tests.telemetry.conftest import T0


def _page_all(store, q):
    out, token = [], None
    while True:
        page = store.list_events(ListQuery(**{**q.__dict__, "page_token": token}))
        out.extend(page.events)
        token = page.next_page_token
        if not token:
            return out


def test_pages_stay_valid_while_events_are_inserted(store):
    rng = random.Random(3)
    first = [make_event("pageview", {"n": i}, id=f"a{i}", time=T0 + timedelta(seconds=rng.randint(0, 3600)))
             for i in range(1000)]
    store.record(first)
    q = ListQuery(start=T0, end=T0 + timedelta(hours=2), limit=37)
    seen, token, extra = [], None, itertools.count()
    while True:
        page = store.list_events(ListQuery(**{**q.__dict__, "page_token": token}))
        seen.extend(page.events)
        # new events land before, inside and after the pages already read
        store.record([make_event("pageview", {"n": -1}, id=f"b{next(extra)}",
                                 time=T0 + timedelta(seconds=rng.randint(0, 7000))) for _ in range(5)])
        token = page.next_page_token
        if not token:
            break
    ids = [e.id for e in seen]
    assert len(ids) == len(set(ids)), "no event is returned twice"
    assert {f"a{i}" for i in range(1000)} <= set(ids), "no original event is skipped"
    times = [e.time_us for e in seen]
    assert times == sorted(times)


def test_descending_pages_and_filters(store):
    store.record([make_event("click" if i % 3 else "pageview", {"n": i, "user": f"u{i % 4}"},
                             time=T0 + timedelta(seconds=i)) for i in range(300)])
    store.flush(5)
    desc = _page_all(store, ListQuery(start=T0, end=T0 + timedelta(hours=1), limit=16, descending=True,
                                      types=("pageview",)))
    assert [e.attrs["n"] for e in desc] == list(range(297, -1, -3))
    by_user = _page_all(store, ListQuery(start=T0, end=T0 + timedelta(hours=1), limit=7,
                                         filters=(Filter("user", "eq", "u1"),)))   # key-only index path
    assert [e.attrs["n"] for e in by_user] == list(range(1, 300, 4))
    by_user_desc = _page_all(store, ListQuery(start=T0, end=T0 + timedelta(hours=1), limit=7, descending=True,
                                              filters=(Filter("user", "eq", "u1"),)))
    assert [e.attrs["n"] for e in by_user_desc] == list(range(297, 0, -4))


def test_page_token_of_another_query_is_refused(store):
    store.record([make_event("x", {}, time=T0 + timedelta(seconds=i)) for i in range(5)])
    page = store.list_events(ListQuery(start=T0, end=T0 + timedelta(hours=1), limit=2))
    with pytest.raises(QueryError, match="different query"):
        store.list_events(ListQuery(start=T0, end=T0 + timedelta(hours=2), limit=2, page_token=page.next_page_token))
    with pytest.raises(QueryError, match="page_token"):
        store.list_events(ListQuery(start=T0, end=T0 + timedelta(hours=1), page_token="garbage"))


def test_listing_spans_partitions_in_time_order(store):
    store.record([make_event("x", {"d": d}, time=T0 + timedelta(days=d, hours=1)) for d in (3, 0, 2, 1)])
    got = _page_all(store, ListQuery(start=T0, end=T0 + timedelta(days=5), limit=1))
    assert [e.attrs["d"] for e in got] == [0, 1, 2, 3]


def _brute_funnel(evs, steps, start_us, end_us, win, by="user"):
    per = {}
    for e in sorted(evs, key=lambda e: e.time_us):
        if by in e.attrs:
            per.setdefault(e.attrs[by], []).append(e)
    reached = [0] * (len(steps) + 1)
    for actor, es in per.items():
        best = 0
        for i0, e0 in enumerate(es):
            if e0.type != steps[0] or not start_us <= e0.time_us < end_us:
                continue
            depth, t = 1, e0.time_us
            for st in steps[1:]:
                nxt = next((e for e in es if e.type == st and t < e.time_us <= e0.time_us + win), None)
                if nxt is None:
                    break
                depth, t = depth + 1, nxt.time_us
            best = max(best, depth)
        for j in range(best):
            reached[j] += 1
    return reached


def test_funnel_matches_brute_force(store):
    rng = random.Random(9)
    evs = [make_event(rng.choice(["visit", "signup", "buy"]), {"user": f"u{rng.randint(0, 60)}"},
                      time=T0 + timedelta(minutes=rng.randint(0, 600))) for _ in range(800)]
    store.record(evs)
    store.flush(5)
    steps = ("visit", "signup", "buy")
    q = FunnelQuery(start=T0, end=T0 + timedelta(hours=6), steps=tuple(FunnelStep(s) for s in steps),
                    within=timedelta(minutes=45))
    res = store.funnel(q)
    want = _brute_funnel(evs, steps, int(T0.timestamp() * 1e6), int((T0 + timedelta(hours=6)).timestamp() * 1e6),
                         45 * 60 * 10**6)
    assert [s.entered for s in res.steps] == want[:3]
    assert [s.converted for s in res.steps] == [want[1], want[2], want[2]]
    assert all(s.drop_off == s.entered - s.converted for s in res.steps)


def test_funnel_step_filters_and_window(store):
    store.record([make_event("visit", {"user": "a"}, time=T0),
                  make_event("buy", {"user": "a", "plan": "pro"}, time=T0 + timedelta(minutes=5)),
                  make_event("visit", {"user": "b"}, time=T0),
                  make_event("buy", {"user": "b", "plan": "free"}, time=T0 + timedelta(minutes=5)),
                  make_event("visit", {"user": "c"}, time=T0),
                  make_event("buy", {"user": "c", "plan": "pro"}, time=T0 + timedelta(hours=2)),
                  make_event("buy", {"user": "d", "plan": "pro"}, time=T0)])
    store.flush(5)
    res = store.funnel(FunnelQuery(start=T0, end=T0 + timedelta(days=1), within=timedelta(hours=1),
                                   steps=(FunnelStep("visit"), FunnelStep("buy", (Filter("plan", "eq", "pro"),)))))
    assert [(s.entered, s.converted, s.drop_off) for s in res.steps] == [(3, 1, 2), (1, 1, 0)]
