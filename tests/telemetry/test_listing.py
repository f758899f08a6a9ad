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


def test_listing_by_user_finds_rows_the_follower_has_not_folded(store, monkeypatch):
    """The key-only index only knows folded rows: a partition the follower is behind on is
    scanned instead, so a listing never misses an acknowledged event."""
    from telemetry import follower
    store.record([make_event("pageview", {"n": i, "user": f"u{i % 3}"}, time=T0 + timedelta(seconds=i))
                  for i in range(30)])
    store.flush(5)
    q = ListQuery(start=T0, end=T0 + timedelta(hours=1), limit=4, filters=(Filter("user", "eq", "u2"),))
    assert [e.attrs["n"] for e in _page_all(store, q)] == list(range(2, 30, 3))      # the index
    monkeypatch.setattr(follower, "top_seq", lambda part: 1 << 62)     # rows past what is folded
    assert [e.attrs["n"] for e in _page_all(store, q)] == list(range(2, 30, 3))      # the scan


@pytest.mark.parametrize("segments", [4, 1])
def test_user_index_across_segments_late_events_and_the_older_layout(tmp_path, monkeypatch, segments):
    """The index is a sorted blob per segment (one per fold here); a lookup reads every
    segment and merges them in row-key order, late events included, and still reads
    partitions indexed in the older layout (a key per entry). With one segment, every fold
    after the first merges its entries into the tail segment's blob."""
    from telemetry import follower
    from tests.telemetry.conftest import open_store
    if segments > 1:
        monkeypatch.setattr(follower, "TAIL_MERGE", 0)       # every fold makes its own segment
    s = open_store(tmp_path / "data", follower="thread")
    try:
        rng = random.Random(5)
        everything = []
        for batch in range(4):
            # later batches carry earlier times too: rows of one user spread over segments
            evs = [make_event("pageview", {"n": batch * 100 + i, "user": f"u{rng.randrange(3)}"},
                              time=T0 + timedelta(seconds=rng.randrange(3000))) for i in range(60)]
            s.record(evs)
            s.flush(5)
            everything += evs
        part = s.partitions()[0]
        with part.derived.begin() as txn:
            blobs = list(txn.cursor(part.idx))
        assert sorted({k[1:5] for k, _ in blobs}) == [i.to_bytes(4, "big") for i in range(segments)]

        times = {e.attrs["n"]: e.time_us for e in everything}

        def expect(user: str, desc: bool) -> list[int]:
            return sorted((e.attrs["n"] for e in everything if e.attrs["user"] == user),
                          key=lambda n: times[n], reverse=desc)

        def listed(user: str, desc: bool) -> list[int]:
            q = ListQuery(start=T0, end=T0 + timedelta(hours=1), limit=9, descending=desc,
                          filters=(Filter("user", "eq", user),))
            return [e.attrs["n"] for e in _page_all(s, q)]

        def check() -> None:
            for user in ("u0", "u1", "u2"):
                for desc in (False, True):
                    got, want = listed(user, desc), expect(user, desc)
                    assert sorted(got) == sorted(want), "every event of the user, once"
                    assert [times[n] for n in got] == [times[n] for n in want], "in time order"

        check()
        with part.derived.begin(write=True) as txn:      # rewrite as the older layout
            for k, blob in blobs:
                assert txn.delete(k, db=part.idx)
                n = len(blob) // 24
                for j in range(n):
                    h = int.from_bytes(blob[8 * j:8 * j + 8], "little")
                    txn.put(k[5:6] + h.to_bytes(8, "big") + blob[8 * n + 16 * j:8 * n + 16 * j + 16], b"", db=part.idx)
            assert not any(k[:1] == follower.IDX_SEG for k, _ in txn.cursor(part.idx))
        check()
    finally:
        s.close()
