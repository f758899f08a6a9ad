"""Rollups: per 15-minute UTC slot counts and distinct-actor sets, built per batch.

The follower computes them from a batch's column segment with numpy (never per event) and
merges them into the partition's `roll` DB:
    b"t" + type(4) + slot(4)            -> uint64 count of events of that type in the slot
    b"c" + dim(4) + type(4) + slot(4)   -> uint32 codes[k] + uint32 counts[k] (sorted by code)
    b"v" + dim(4) + value(4) + type(4) + slot(4) -> uint64 count (a filtered count is a range scan)
    b"C" + dim(4) + type(4) + day(4)    -> as b"c", per UTC day (top-N over days reads few blobs)
    b"u" + type(4) + slot(4)            -> sorted uint64 actor hashes (distinct set); type 0 = any type
    b"U" + 0(4) + day(4)                -> the same per UTC day, any type
(hashes: 64-bit FNV-1a of the type-tagged value, see hash_values)
(type, dim and values are store-wide dictionary codes.) Fifteen-minute UTC slots rebuild any
real time zone and DST transition exactly. Distinct sets are sorted 64-bit hashes of the actor
(attrs.user, else attrs.visitor) and merge by union, so unique users over any range are exact
up to 64-bit hash collisions (odds ~1e-8 at a million actors); results are not labelled
approximate.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from telemetry.columns import Segment
from telemetry.dictionary import Dictionary

SLOT_US = 900_000_000
ACTOR_ATTRS = ("user", "visitor")
_TS = struct.Struct(">II")
_CTS = struct.Struct(">III")


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _tagged(v: Any) -> bytes:
    tag = b"s" if type(v) is str else b"b" if type(v) is bool else b"n"
    return tag + str(v).encode()


def hash_values(values: list[Any]) -> np.ndarray:
    """Stable 64-bit FNV-1a hashes of attribute values (type-tagged), vectorised over the list.

    Never 0 (0 means "missing"). Used for distinct-actor sets and the key-only indexes.
    """
    if not values:
        return np.zeros(0, np.uint64)
    raw = [_tagged(v) for v in values]
    offsets = np.zeros(len(raw) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, raw), np.int64, len(raw)), out=offsets[1:])
    return _fnv_cut(offsets, np.frombuffer(b"".join(raw), np.uint8), int(_FNV_OFFSET))


def _fnv_cut(offsets: np.ndarray, data: np.ndarray, seed: int) -> np.ndarray:
    """FNV-1a, from state `seed`, of each byte string data[offsets[i]:offsets[i+1]], with no
    Python work per string: one byte position at a time over the strings still that long
    (sorted longest first, so those are a prefix). 0 becomes 1 (0 means "missing")."""
    lens = np.diff(offsets).astype(np.int64)
    k = len(lens)
    if not k:
        return np.zeros(0, np.uint64)
    order = np.argsort(-lens, kind="stable")
    starts = offsets[:-1].astype(np.int64)[order]
    slen = lens[order]
    h = np.full(k, seed, np.uint64)
    live = k
    with np.errstate(over="ignore"):
        for j in range(int(slen[0])):
            while slen[live - 1] <= j:
                live -= 1
            h[:live] = (h[:live] ^ data[starts[:live] + j].astype(np.uint64)) * _FNV_PRIME
    h[h == 0] = 1
    out = np.empty(k, np.uint64)
    out[order] = h
    return out


def value_hash(v: Any) -> int:
    """hash_values for one value."""
    return int(hash_values([v])[0])


def hash_table(values: list[Any]) -> np.ndarray:
    """Local code -> 64-bit hash (index 0 = missing -> 0)."""
    return np.concatenate([np.zeros(1, np.uint64), hash_values(values)])


def utf8_hash_table(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """hash_table of strings given as UTF-8 bytes `data` cut at `offsets` (Arrow's layout),
    with no Python object per string."""
    seed = ((int(_FNV_OFFSET) ^ ord("s")) * int(_FNV_PRIME)) % (1 << 64)    # the tag byte "s" hashed
    return np.concatenate([np.zeros(1, np.uint64), _fnv_cut(offsets, data, seed)])


def column_hashes(seg: Segment, name: str) -> np.ndarray:
    """The code -> hash table of the segment's c:`name` column (cached on the segment)."""
    key = "c:" + name
    table = seg.hashes.get(key)
    if table is None:
        table = seg.hashes[key] = hash_table(seg.dicts.get(key, []))
    return table


def actor_hashes(cols: dict[str, np.ndarray], dicts: dict[str, list[Any]], n: int,
                 seg: Segment | None = None) -> np.ndarray:
    """Per-row hash of the actor: attrs.user, else attrs.visitor (0 = none)."""
    actor = np.zeros(n, np.uint64)
    for name in reversed(ACTOR_ATTRS):
        c = cols.get("c:" + name)
        if c is not None:
            table = column_hashes(seg, name) if seg is not None else hash_table(dicts.get("c:" + name, []))
            actor = np.where(c != 0, table[c], actor)
    return actor


def global_codes(seg: Segment, name: str, d: Dictionary) -> np.ndarray | None:
    """The column's values as store-wide dictionary codes (for rollups), or None."""
    c = seg.cols.get("c:" + name)
    if c is None:
        return None
    table = np.array([0] + d.codes_of(seg.dicts.get("c:" + name, [])), np.uint32)
    return table[c]


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted unique keys, their first index into the sorted order, and the sort order."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    if len(sk) == 0:
        return sk, np.zeros(0, np.int64), order
    starts = np.flatnonzero(np.concatenate([[True], sk[1:] != sk[:-1]]))
    return sk[starts], starts, order


DAY_SLOTS = 96
# Dimensions that also get per-value slot counters (b"v"): the low-cardinality ones that
# dashboards filter by. High-cardinality ones (path, referrer_host) would cost a key per
# value per slot; filters on them read the b"c" blobs instead.
V_DIMS = frozenset({"org", "project", "status", "cache", "group", "country", "campaign"})


def _pair_counts(groups: np.ndarray, ginv: np.ndarray, code: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (group, code) pairs sorted, with their counts; `ginv` indexes the sorted unique
    `groups` (np.unique's inverse, computed once per batch). One integer key per row, counted
    with bincount when the key space is small, else sorted once (not a two-key lexsort)."""
    k = int(code.max()) + 1
    key = ginv.astype(np.int64) * k + code
    if len(groups) * k <= max(1 << 16, 4 * len(key)):      # a small count array
        counts = np.bincount(key, minlength=len(groups) * k)
        keys = np.flatnonzero(counts)
        cnt = counts[keys]
    else:
        keys, cnt = np.unique(key, return_counts=True)
    return groups[keys // k], (keys % k).astype(code.dtype), cnt.astype(np.uint64)


_V_KEY = np.dtype([("tag", "S1"), ("dim", ">u4"), ("code", ">u4"), ("type", ">u4"), ("slot", ">u4")])


def _value_keys(dim_code: int, g: np.ndarray, c: np.ndarray) -> list[bytes]:
    """b"v" + dim + code + type + slot keys for (type<<32|slot, code) pairs, built as one
    numpy record array (no Python work per key but the final slicing)."""
    rec = np.empty(len(c), _V_KEY)
    rec["tag"] = b"v"
    rec["dim"] = dim_code
    rec["code"] = c
    rec["type"] = g >> 32
    rec["slot"] = g & 0xFFFFFFFF
    return _split_records(rec)


def _runs(g: np.ndarray) -> list[tuple[int, int, int]]:
    """(value, start, end) of each run of equal values in sorted g."""
    if not len(g):
        return []
    starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
    ends = np.append(starts[1:], len(g))
    return list(zip(g[starts].tolist(), starts.tolist(), ends.tolist()))


class Deltas:
    """One batch's rollup deltas.

    counter_keys/counter_counts: the b"t" and b"v" keys, ascending, and the counts to add
        (merged as whole arrays: a fold can carry 30k of them);
    blobs: key -> ("c"|"C", (codes, counts)) | ("u"|"U", sorted hashes), merged one by one.
    """

    __slots__ = ("counter_keys", "counter_counts", "blobs")

    def __init__(self) -> None:
        self.counter_keys: list[bytes] = []
        self.counter_counts: np.ndarray = np.zeros(0, np.uint64)
        self.blobs: dict[bytes, tuple[str, Any]] = {}


_T_KEY = np.dtype([("tag", "S1"), ("type", ">u4"), ("slot", ">u4")])


def _split_records(rec: np.ndarray) -> list[bytes]:
    """Fixed-width records as one bytes object each (split in C)."""
    return rec.view(f"V{rec.dtype.itemsize}").tolist()


def compute(seg: Segment, dims: Iterable[tuple[int, str]], d: Dictionary) -> Deltas:
    """Rollup deltas of one segment, computed with numpy (never per event)."""
    deltas = Deltas()
    if seg.n == 0:
        return deltas
    out = deltas.blobs
    ckeys: list[bytes] = []
    ccounts: list[np.ndarray] = []
    cols = seg.cols
    slots = cols["@t"] // SLOT_US
    types = cols["@y"].astype(np.int64)
    ts = (types << 32) | slots                       # (type, slot) in one int64
    tday = (types << 32) | (slots // DAY_SLOTS)      # (type, day)
    uk, ts_inv, counts = np.unique(ts, return_inverse=True, return_counts=True)
    ud, day_inv = np.unique(tday, return_inverse=True)
    rec = np.empty(len(uk), _T_KEY)
    rec["tag"], rec["type"], rec["slot"] = b"t", uk >> 32, uk & 0xFFFFFFFF
    ckeys += _split_records(rec)
    ccounts.append(counts.astype(np.uint64))
    for dim_code, name in sorted(dims):       # b"v" keys in ascending order: dim first
        col = global_codes(seg, name, d)
        if col is None:
            continue
        m = col != 0
        if not m.any():
            continue
        dim_b = dim_code.to_bytes(4, "big")
        g, c, cnt = _pair_counts(uk, ts_inv[m], col[m])
        for k, s, e in _runs(g):
            out[b"c" + dim_b + _TS.pack(k >> 32, k & 0xFFFFFFFF)] = ("c", (c[s:e], cnt[s:e]))
        if name in V_DIMS:
            order = np.lexsort((g, c))           # key order: value, then type and slot
            ckeys += _value_keys(dim_code, g[order], c[order])
            ccounts.append(cnt[order])
        g, c, cnt = _pair_counts(ud, day_inv[m], col[m])
        for k, s, e in _runs(g):
            out[b"C" + dim_b + _TS.pack(k >> 32, k & 0xFFFFFFFF)] = ("C", (c[s:e], cnt[s:e]))
    actor = actor_hashes(cols, seg.dicts, seg.n, seg)
    m = actor != 0
    if m.any():
        sel_a = actor[m]
        # per (type, slot), per (any type = 0, slot) and per (any type, day)
        for tag, sel in ((b"u", ts[m]), (b"u", slots[m]), (b"U", slots[m] // DAY_SLOTS)):
            order = np.lexsort((sel_a, sel))
            sg, sa = sel[order], sel_a[order]
            first = np.ones(len(sg), bool)              # distinct (group, actor) pairs, in one pass
            first[1:] = (sg[1:] != sg[:-1]) | (sa[1:] != sa[:-1])
            sg, sa = sg[first], sa[first]
            for k, s, e in _runs(sg):
                out[tag + _TS.pack(k >> 32, k & 0xFFFFFFFF)] = ("u", sa[s:e])
    deltas.counter_keys = ckeys
    deltas.counter_counts = np.concatenate(ccounts)
    return deltas


def _merge_counts(old: bytes, codes: np.ndarray, counts: np.ndarray) -> bytes:
    arr = np.frombuffer(old, np.uint32)
    k = len(arr) // 2
    oc, on = arr[:k], arr[k:].astype(np.uint64)
    idx = np.searchsorted(oc, codes)
    hit = idx < k
    hit[hit] = oc[idx[hit]] == codes[hit]
    on[idx[hit]] += counts[hit]
    miss = ~hit
    if miss.any():
        oc = np.insert(oc, idx[miss], codes[miss])
        on = np.insert(on, idx[miss], counts[miss])
    return oc.astype(np.uint32).tobytes() + np.minimum(on, 0xFFFFFFFF).astype(np.uint32).tobytes()


def _merge_set(old: bytes, new: np.ndarray) -> bytes:
    oa = np.frombuffer(old, np.uint64)
    idx = np.searchsorted(oa, new)
    hit = idx < len(oa)
    hit[hit] = oa[idx[hit]] == new[hit]
    if hit.all():
        return old
    return np.insert(oa, idx[~hit], new[~hit]).tobytes()


_ZERO8 = bytes(8)


def merge_into(txn: Any, db: Any, deltas: Deltas) -> None:
    """Add deltas to the stored rollups (read-modify-write in the follower's transaction).
    Counters are 8-byte little-endian: read with one getmulti, added as one array."""
    keys = deltas.counter_keys
    if keys:
        cur = txn.cursor(db=db)
        found = cur.getmulti(keys)
        if len(found) == len(keys):
            old = b"".join([v for _, v in found])
        else:
            have = dict(found)
            old = b"".join([have.get(k, _ZERO8) for k in keys])
        totals = (np.frombuffer(old, "<u8") + deltas.counter_counts).astype("<u8")
        cur.putmulti(zip(keys, totals.view("V8").tolist()))
    items = []
    get = txn.get
    for key in sorted(deltas.blobs):
        kind, val = deltas.blobs[key]
        old = get(key, db=db)
        if kind == "c" or kind == "C":
            codes, counts = val
            if old is None:
                items.append((key, codes.astype(np.uint32).tobytes() + counts.astype(np.uint32).tobytes()))
            else:
                items.append((key, _merge_counts(old, codes.astype(np.uint32), counts.astype(np.uint64))))
        else:
            items.append((key, val.astype(np.uint64).tobytes() if old is None else _merge_set(old, val)))
    txn.cursor(db=db).putmulti(items)


def slot_key_range(prefix: bytes, slot_from: int, slot_to: int) -> tuple[bytes, bytes]:
    return prefix + slot_from.to_bytes(4, "big"), prefix + slot_to.to_bytes(4, "big")


def read_counts(txn: Any, db: Any, type_code: int, slot_from: int, slot_to: int) -> tuple[np.ndarray, np.ndarray]:
    """(slots, counts) of one type over [slot_from, slot_to)."""
    return _scan_slot_counts(txn, db, b"t" + type_code.to_bytes(4, "big"), slot_from, slot_to)


def read_value_counts(txn: Any, db: Any, dim_code: int, value_code: int, type_code: int, slot_from: int,
                      slot_to: int) -> tuple[np.ndarray, np.ndarray]:
    """(slots, counts) of one dimension value and type over [slot_from, slot_to)."""
    prefix = b"v" + dim_code.to_bytes(4, "big") + value_code.to_bytes(4, "big") + type_code.to_bytes(4, "big")
    return _scan_slot_counts(txn, db, prefix, slot_from, slot_to)


def _scan_slot_counts(txn: Any, db: Any, prefix: bytes, slot_from: int,
                      slot_to: int) -> tuple[np.ndarray, np.ndarray]:
    """(slots, counts) of the counter keys `prefix + slot` in [slot_from, slot_to)."""
    start = len(prefix)
    slots, counts = [], []
    for k, v in _slot_items(txn, db, prefix, slot_from, slot_to):
        slots.append(int.from_bytes(k[start:start + 4], "big"))
        counts.append(int.from_bytes(v, "little"))
    return np.array(slots, np.int64), np.array(counts, np.int64)


def _slot_items(txn: Any, db: Any, prefix: bytes, slot_from: int, slot_to: int) -> Iterable[tuple[bytes, bytes]]:
    """(key, value) of the keys `prefix + slot` with slot in [slot_from, slot_to), in order."""
    lo, hi = slot_key_range(prefix, slot_from, slot_to)
    cur = txn.cursor(db=db)
    if cur.set_range(lo):
        for k, v in cur:
            if k >= hi:
                return
            yield k, v


def read_dim(txn: Any, db: Any, dim_code: int, type_code: int, slot_from: int,
             slot_to: int, day: bool = False) -> Iterable[tuple[int, np.ndarray, np.ndarray]]:
    """(slot, codes, counts) blobs of one dimension and type over [slot_from, slot_to).

    With day=True the arguments and results are UTC day numbers (day-level blobs).
    """
    prefix = (b"C" if day else b"c") + dim_code.to_bytes(4, "big") + type_code.to_bytes(4, "big")
    for k, v in _slot_items(txn, db, prefix, slot_from, slot_to):
        arr = np.frombuffer(v, np.uint32)
        n = len(arr) // 2
        yield int.from_bytes(k[9:13], "big"), arr[:n], arr[n:]


def read_users(txn: Any, db: Any, type_code: int, slot_from: int,
               slot_to: int, day: bool = False) -> Iterable[tuple[int, np.ndarray]]:
    """(slot or day, sorted actor hashes); day-level sets exist for type 0 (any type) only."""
    prefix = (b"U" if day else b"u") + type_code.to_bytes(4, "big")
    for k, v in _slot_items(txn, db, prefix, slot_from, slot_to):
        yield int.from_bytes(k[5:9], "big"), np.frombuffer(v, np.uint64)
