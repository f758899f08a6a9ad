"""Arrow's JSON reader builds the same column segments as the Python path, or declines."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import columns, rollups
from telemetry.arrowseg import JsonSegmenter
from telemetry.dictionary import Dictionary
from telemetry.events import encode_rows, make_event


def _tag(v: Any) -> tuple[str, Any]:
    return (type(v).__name__, v)


def canonical(seg: columns.Segment, d: Dictionary) -> dict[str, Any]:
    """A segment as plain values per row, independent of how local codes were numbered."""
    out: dict[str, Any] = {"@t": seg.cols["@t"].tolist(), "@y": [d.value(c) for c in seg.cols["@y"].tolist()]}
    for name, arr in seg.cols.items():
        kind = name[0]
        if kind == "c":
            vals = seg.dicts[name]
            out[name] = [_tag(vals[c - 1]) if c else None for c in arr.tolist()]
        elif kind == "f":
            out[name] = [None if math.isnan(x) else x for x in arr.tolist()]
        elif kind == "m":
            k = len(arr) // 2
            vals = seg.dicts[name]
            out[name] = sorted((r, _tag(vals[c - 1])) for r, c in zip(arr[:k].tolist(), arr[k:].tolist()))
    return out


def both(events, d, segmenter=None):
    rows = encode_rows(events, [e.id.encode() for e in events])
    times = np.array([e.time_us for e in events], np.int64)
    fast = (segmenter or JsonSegmenter()).segment(times, rows, d)
    slow = columns.build_segment_parts(times, [e.type for e in events], [dict(e.attrs) for e in events], d)
    return fast, slow


NAMES = ["org", "n", "x", "ok", "needs", "supplies", "when"]
scalar_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8)
KIND = {
    "org": scalar_text,
    "n": st.integers(-(1 << 63), (1 << 63) - 1),
    "x": st.floats(allow_nan=False, allow_infinity=False),
    "ok": st.booleans(),
    "needs": st.lists(st.sampled_from(["Legal Help", "Food", "Housing"]), max_size=3),
    "supplies": st.dictionaries(st.sampled_from(["Childcare", "Transport"]), st.integers(0, 40), max_size=2),
    "when": st.sampled_from(["2026-03-01", "2026-03-01T10:00:00Z", "soon"]),
}
event_attrs = st.fixed_dictionaries({}, optional={k: KIND[k] for k in NAMES})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pageview", "user.joined", "2026-01"]), event_attrs),
                min_size=1, max_size=40))
def test_arrow_segments_equal_the_python_path(tmp_path_factory, batch):
    d = Dictionary(tmp_path_factory.mktemp("d") / "dict.lmdb", sync=False)
    events = [make_event(t, a, time_us=1_000_000 * (i + 1)) for i, (t, a) in enumerate(batch)]
    fast, slow = both(events, d)
    assert fast is not None, "attributes of one kind each must take the Arrow path"
    assert canonical(fast, d) == canonical(slow, d)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pageview", "user.joined"]), event_attrs), min_size=2, max_size=60))
def test_batches_parsed_in_parallel_blocks_equal_the_python_path(tmp_path_factory, batch):
    """Big batches are parsed in blocks on Arrow's threads, each block typed on its own: the
    types Arrow unifies across blocks (a key absent from one block, ints in one and floats in
    the next) must give what one block gives. Blocks as small as Arrow allows (no row may
    straddle more than one boundary): a row or a few each."""
    d = Dictionary(tmp_path_factory.mktemp("d") / "dict.lmdb", sync=False)
    events = [make_event(t, a, time_us=1_000_000 * (i + 1)) for i, (t, a) in enumerate(batch)]
    longest = max(len(r) for r in encode_rows(events, [e.id.encode() for e in events]))
    fast, slow = both(events, d, JsonSegmenter(block_bytes=longest + 1))
    assert fast is not None, "attributes of one kind each must take the Arrow path"
    assert canonical(fast, d) == canonical(slow, d)


def test_strings_that_look_like_times_stay_strings(tmp_path):
    d = Dictionary(tmp_path / "dict.lmdb", sync=False)
    events = [make_event("x", {"day": "2026-03-01", "m": {"at": "2026-03-01 10:00:00"},
                               "l": ["2026-01-01"]}, time_us=1_000_000)]
    seg = JsonSegmenter()
    rows = encode_rows(events, [e.id.encode() for e in events])
    got = seg.segment(np.array([1_000_000]), rows, d)
    assert got is not None
    assert got.dicts["c:day"] == ["2026-03-01"]
    assert got.dicts["c:m.at"] == ["2026-03-01 10:00:00"]
    assert got.dicts["m:l"] == ["2026-01-01"]
    assert ("day",) in seg.string_paths and ("m", "at") in seg.string_paths
    # learned: the next batch is read with those paths as strings straight away
    assert seg.segment(np.array([1_000_000]), rows, d) is not None


def test_batches_arrow_cannot_type_take_the_python_path(tmp_path):
    d = Dictionary(tmp_path / "dict.lmdb", sync=False)
    mixed = [make_event("x", {"v": "text"}, time_us=1), make_event("x", {"v": 5}, time_us=2)]
    fast, slow = both(mixed, d)
    assert fast is None and canonical(slow, d)["c:v"] == [("str", "text"), ("int", 5)]
    floats_in_list = [make_event("x", {"v": [1, 2.5]}, time_us=1)]
    assert both(floats_in_list, d)[0] is None
    old_rows = [msgpack.packb(["01OLD", "x", {"a": 1}], use_bin_type=True)]
    assert JsonSegmenter().segment(np.array([1]), old_rows, d) is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12), min_size=1, max_size=30))
def test_value_hashes_from_arrow_buffers_equal_the_python_ones(tmp_path_factory, users):
    """Rollups and the user/session index hash values; the Arrow path hashes the UTF-8
    buffers directly and must give the very same 64-bit hashes."""
    d = Dictionary(tmp_path_factory.mktemp("d") / "dict.lmdb", sync=False)
    events = [make_event("x", {"user": u, "session": u + "!"}, time_us=1_000_000) for u in users]
    rows = encode_rows(events, [e.id.encode() for e in events])
    seg = JsonSegmenter().segment(np.array([1_000_000] * len(events)), rows, d)
    assert seg is not None and {"c:user", "c:session"} <= seg.hashes.keys()
    for name in ("c:user", "c:session"):
        assert seg.hashes[name].tolist() == rollups.hash_table(seg.dicts[name]).tolist()
