"""The follower keeps the tail segment it last committed and merges the next small fold
into it, instead of reading it back and re-indexing its dictionaries every time."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from telemetry import columns, follower
from telemetry.events import make_event
from tests.telemetry.conftest import T0, open_store


def _fold_in_small_batches(path: Path, forget_tail: bool) -> tuple[dict[int, columns.Segment], int]:
    """Record 12 batches of 40 events, folding after each one with a Follower of our own
    (the store's follower thread stopped); `forget_tail` drops the remembered tail before
    every fold, as a restarted follower would have none."""
    s = open_store(path, follower="thread")
    try:
        s._stop_follower.set()
        s._nudge.set()
        s._follower.join(5)
        f = follower.Follower(s.dictionary, s.settings.dimensions, s.partitions)
        rng = random.Random(7)
        for batch in range(12):
            evs = [make_event("request", {
                "n": batch * 40 + i,
                "flag": rng.choice([True, False, 1, 0, "yes"]),       # booleans apart from 1 and 0
                "request_id": f"r{batch}-{i}",                          # a new value every row
                "path": f"/p{rng.randrange(4)}",
                "tags": ["a", "b", "c"][:rng.randrange(4)],             # a multi-valued column
                **({"late": rng.random()} if batch >= 6 else {}),       # a column the tail lacks
            }, time=T0 + timedelta(seconds=batch * 40 + i)) for i in range(40)]
            s.record(evs)
            if forget_tail:
                f._tails.clear()
            assert f.run_once() == 40
        part = s.partitions()[0]
        with part.derived.begin() as txn:
            segs = {i: columns.read_segment(txn, part.segs, i) for i, _ in columns.iter_headers(txn, part.segs)}
        assert len(f._tails) <= follower.TAILS_KEPT
        return segs, f.tail_hits
    finally:
        s.close()


def test_remembered_tail_stores_what_reading_it_back_stores(tmp_path: Path) -> None:
    remembered, hits = _fold_in_small_batches(tmp_path / "remembered", forget_tail=False)
    read_back, no_hits = _fold_in_small_batches(tmp_path / "read-back", forget_tail=True)
    assert hits == 11 and no_hits == 0          # every fold after the first merged into the kept tail
    assert list(remembered) == list(read_back) == [0]
    a, b = remembered[0], read_back[0]
    assert a.n == b.n == 480
    assert sorted(a.cols) == sorted(b.cols)
    assert {"c:request_id", "m:tags", "f:late"} <= set(a.cols)
    for name in a.cols:
        assert np.array_equal(a.cols[name], b.cols[name], equal_nan=a.cols[name].dtype.kind == "f"), name
    assert a.dicts == b.dicts
    flags = a.dicts["c:flag"]
    assert [type(v) for v in flags].count(bool) == 2 and 1 in flags and 0 in flags


def test_a_full_tail_is_not_kept_and_the_next_fold_starts_a_segment(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With tails merged up to 100 rows: 40, 80, 120 rows (full, not kept), then a new
    segment; the same segments either way, and only merges into a kept tail count."""
    monkeypatch.setattr(follower, "TAIL_MERGE", 100)
    remembered, hits = _fold_in_small_batches(tmp_path / "remembered", forget_tail=False)
    read_back, _ = _fold_in_small_batches(tmp_path / "read-back", forget_tail=True)
    assert hits == 8
    assert [seg.n for seg in remembered.values()] == [seg.n for seg in read_back.values()] == [120] * 4
    for i, a in remembered.items():
        b = read_back[i]
        assert sorted(a.cols) == sorted(b.cols) and a.dicts == b.dicts
        for name in a.cols:
            assert np.array_equal(a.cols[name], b.cols[name], equal_nan=a.cols[name].dtype.kind == "f"), name


def test_a_tail_changed_since_it_was_kept_is_read_back() -> None:
    seg = columns.Segment(2, {"@t": np.array([5, 9], np.int64)}, {})
    kept = follower._Tail(3, seg, {})
    header = {"n": 2, "tmin": 5, "tmax": 9, "cols": ["@t"]}
    assert kept.take(3, header) == (seg, {})
    assert kept.take(4, header) is None                        # another segment is the tail now
    assert kept.take(3, {**header, "n": 3}) is None            # rows were added by someone else
    assert kept.take(3, {**header, "tmax": 10}) is None
    assert kept.take(3, {**header, "cols": ["@t", "c:x"]}) is None


def _collections(polls: list[tuple[float, int]]) -> list[float]:
    """The times at which the follower would collect, given (time, events folded) polls."""
    policy, out = follower.GcPolicy(0.0), []
    for now, n in polls:
        if policy.polled(n, now):
            policy.collected(now)
            out.append(now)
    return out


def test_the_follower_collects_when_busy_for_long_or_idle_not_between_two_batches():
    # under load: a batch folded every 0.9 s, an empty poll 0.5 s after each
    steady = [p for k in range(11) for p in ((0.9 * k, 1000), (0.9 * k + 0.5, 0))]
    busy = _collections(steady)
    assert len(busy) == 1 and 5.0 < busy[0] <= 5.5  # once GC_EVERY (5 s) has passed, not at each gap
    # the load stops after a fold at 1.0 s: empty polls every 20 ms from 1.02 s
    stopping = [(1.0, 500)] + [(1.0 + 0.02 * k, 0) for k in range(1, 200)]
    done = _collections(stopping)
    assert len(done) == 1 and 2.0 <= done[0] < 2.1  # once, GC_IDLE after the first empty poll
    assert _collections([(0.02 * k, 0) for k in range(1, 500)]) == []  # nothing folded: nothing to free


def test_an_idle_follower_polls_less_and_less_often_and_quickly_again_after_work():
    waits = [follower.idle_wait(k) for k in range(1, 10)]
    assert waits[0] == follower.IDLE_SLEEP  # right after work: the next batch is probably near
    assert waits == sorted(waits) and waits[-1] == follower.IDLE_SLEEP_MAX
    assert sum(1 / w for w in waits[-3:]) / 3 <= 5.5  # idle: about 5 polls a second, not 50
    assert follower.idle_wait(10_000) == follower.IDLE_SLEEP_MAX
