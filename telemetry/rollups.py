"""Rollups: per 15-minute UTC slot counts and distinct-actor sets, built per batch.

The follower computes them from a batch's column segment with numpy (never per event) and
merges them into the partition's `roll` DB:
    b"t" + type(4) + slot(4)            -> uint64 count of events of that type in the slot
    b"c" + dim(4) + type(4) + slot(4)   -> uint32 codes[k] + uint32 counts[k] (sorted by code)
    b"u" + type(4) + slot(4)            -> sorted uint64 actor hashes (distinct set); type 0 = any type
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
    mat = np.array(raw, dtype=bytes)
    width = mat.dtype.itemsize
    u8 = mat.view(np.uint8).reshape(len(raw), width)
    lens = np.fromiter(map(len, raw), np.int64, len(raw))
    h = np.full(len(raw), _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(width):
            live = lens > j            # bytes past a value's end (padding) must not change its hash
            nh = (h ^ u8[:, j].astype(np.uint64)) * _FNV_PRIME
            h = np.where(live, nh, h)
    h[h == 0] = 1
    return h


def value_hash(v: Any) -> int:
    """hash_values for one value."""
    return int(hash_values([v])[0])


def hash_table(values: list[Any]) -> np.ndarray:
    """Local code -> 64-bit hash (index 0 = missing -> 0)."""
    return np.concatenate([np.zeros(1, np.uint64), hash_values(values)])


def actor_hashes(cols: dict[str, np.ndarray], dicts: dict[str, list[Any]], n: int) -> np.ndarray:
    """Per-row hash of the actor: attrs.user, else attrs.visitor (0 = none)."""
    actor = np.zeros(n, np.uint64)
    for name in reversed(ACTOR_ATTRS):
        c = cols.get("c:" + name)
        if c is not None:
            h = hash_table(dicts.get("c:" + name, []))[c]
            actor = np.where(c != 0, h, actor)
    return actor


def global_codes(seg: Segment, name: str, d: Dictionary) -> np.ndarray | None:
    """The column's values as store-wide dictionary codes (for rollups), or None."""
    c = seg.cols.get("c:" + name)
    if c is None:
        return None
    table = np.array([0] + [d.code(v) for v in seg.dicts.get("c:" + name, [])], np.uint32)
    return table[c]


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted unique keys, their first index into the sorted order, and the sort order."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    if len(sk) == 0:
        return sk, np.zeros(0, np.int64), order
    starts = np.flatnonzero(np.concatenate([[True], sk[1:] != sk[:-1]]))
    return sk[starts], starts, order


def compute(seg: Segment, dims: Iterable[tuple[int, str]], d: Dictionary) -> dict[bytes, tuple[str, Any]]:
    """Rollup deltas of one segment: key -> ("t", count) | ("c", (codes, counts)) | ("u", codes)."""
    out: dict[bytes, tuple[str, Any]] = {}
    if seg.n == 0:
        return out
    cols = seg.cols
    slots = cols["@t"] // SLOT_US
    types = cols["@y"].astype(np.int64)
    ts = (types << 32) | slots                       # (type, slot) in one int64
    uk, counts = np.unique(ts, return_counts=True)
    for k, c in zip(uk.tolist(), counts.tolist()):
        out[b"t" + _TS.pack(k >> 32, k & 0xFFFFFFFF)] = ("t", c)
    # per dimension: sort by (type, slot) then value code
    for dim_code, name in dims:
        col = global_codes(seg, name, d)
        if col is None:
            continue
        m = col != 0
        if not m.any():
            continue
        sel_ts, sel_code = ts[m], col[m]
        order = np.lexsort((sel_code, sel_ts))
        sts, scode = sel_ts[order], sel_code[order]
        # unique (ts, code) pairs with counts
        brk = np.concatenate([[True], (sts[1:] != sts[:-1]) | (scode[1:] != scode[:-1])])
        starts = np.flatnonzero(brk)
        cnt = np.diff(np.append(starts, len(sts))).astype(np.uint32)
        pts, pcode = sts[starts], scode[starts]
        gstarts = np.flatnonzero(np.concatenate([[True], pts[1:] != pts[:-1]]))
        gends = np.append(gstarts[1:], len(pts))
        for s, e in zip(gstarts.tolist(), gends.tolist()):
            k = int(pts[s])
            out[b"c" + _CTS.pack(dim_code, k >> 32, k & 0xFFFFFFFF)] = ("c", (pcode[s:e], cnt[s:e]))
    actor = actor_hashes(cols, seg.dicts, seg.n)
    m = actor != 0
    if m.any():
        sel_a = actor[m]
        # per (type, slot) and per (any type, slot): type code 0 never names a type
        for sel_ts in (ts[m], slots[m]):
            order = np.lexsort((sel_a, sel_ts))
            sts, sa = sel_ts[order], sel_a[order]
            gstarts = np.flatnonzero(np.concatenate([[True], sts[1:] != sts[:-1]]))
            gends = np.append(gstarts[1:], len(sts))
            for s, e in zip(gstarts.tolist(), gends.tolist()):
                k = int(sts[s])
                out[b"u" + _TS.pack(k >> 32, k & 0xFFFFFFFF)] = ("u", np.unique(sa[s:e]))
    return out


def merge_into(txn: Any, db: Any, deltas: dict[bytes, tuple[str, Any]]) -> None:
    """Add deltas to the stored rollups (read-modify-write in the follower's transaction)."""
    items = []
    get = txn.get
    for key in sorted(deltas):
        kind, val = deltas[key]
        old = get(key, db=db)
        if kind == "t":
            total = val + (int.from_bytes(old, "little") if old is not None else 0)
            items.append((key, total.to_bytes(8, "little")))
        elif kind == "c":
            codes, counts = val
            if old is not None:
                arr = np.frombuffer(old, np.uint32)
                k = len(arr) // 2
                codes = np.concatenate([arr[:k], codes])
                counts = np.concatenate([arr[k:], counts])
                uc, inv = np.unique(codes, return_inverse=True)
                counts = np.bincount(inv, weights=counts, minlength=len(uc)).astype(np.uint32)
                codes = uc
            items.append((key, codes.astype(np.uint32).tobytes() + counts.astype(np.uint32).tobytes()))
        else:
            codes = val
            if old is not None:
                codes = np.union1d(np.frombuffer(old, np.uint64), codes)
            items.append((key, codes.astype(np.uint64).tobytes()))
    txn.cursor(db=db).putmulti(items)


def slot_key_range(prefix: bytes, slot_from: int, slot_to: int) -> tuple[bytes, bytes]:
    return prefix + slot_from.to_bytes(4, "big"), prefix + slot_to.to_bytes(4, "big")


def read_counts(txn: Any, db: Any, type_code: int, slot_from: int, slot_to: int) -> tuple[np.ndarray, np.ndarray]:
    """(slots, counts) of one type over [slot_from, slot_to)."""
    prefix = b"t" + type_code.to_bytes(4, "big")
    lo, hi = slot_key_range(prefix, slot_from, slot_to)
    slots, counts = [], []
    cur = txn.cursor(db=db)
    if cur.set_range(lo):
        for k, v in cur:
            if k >= hi:
                break
            slots.append(int.from_bytes(k[5:9], "big"))
            counts.append(int.from_bytes(v, "little"))
    return np.array(slots, np.int64), np.array(counts, np.int64)


def read_dim(txn: Any, db: Any, dim_code: int, type_code: int, slot_from: int,
             slot_to: int) -> Iterable[tuple[int, np.ndarray, np.ndarray]]:
    """(slot, codes, counts) blobs of one dimension and type over [slot_from, slot_to)."""
    prefix = b"c" + dim_code.to_bytes(4, "big") + type_code.to_bytes(4, "big")
    lo, hi = slot_key_range(prefix, slot_from, slot_to)
    cur = txn.cursor(db=db)
    if cur.set_range(lo):
        for k, v in cur:
            if k >= hi:
                break
            arr = np.frombuffer(v, np.uint32)
            n = len(arr) // 2
            yield int.from_bytes(k[9:13], "big"), arr[:n], arr[n:]


def read_users(txn: Any, db: Any, type_code: int, slot_from: int,
               slot_to: int) -> Iterable[tuple[int, np.ndarray]]:
    prefix = b"u" + type_code.to_bytes(4, "big")
    lo, hi = slot_key_range(prefix, slot_from, slot_to)
    cur = txn.cursor(db=db)
    if cur.set_range(lo):
        for k, v in cur:
            if k >= hi:
                break
            yield int.from_bytes(k[5:9], "big"), np.frombuffer(v, np.uint64)
