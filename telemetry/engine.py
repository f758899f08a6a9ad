"""Answering queries: rollups when they reach, numpy over column segments otherwise.

Rollup path (count and distinct users): 15-minute UTC slot counters, used when the range
and every bucket boundary fall on slots, at most one configured dimension is filtered
(eq/in) and/or grouped by, optionally with type. Everything else (any attribute, list and
map expansion, numeric metrics and percentiles, geo, regex...) runs vectorised over the
column segments of the partitions in range; no row is decoded in Python.
Both paths produce {(bucket index, group key values): value}; rows are then filled, ordered
and keyset-paginated the same way.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import math
import re
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from telemetry import columns, rollups
from telemetry.errors import QueryError
from telemetry.predicate import forms, haversine_km, norm
from telemetry.query import (AnyFilter, BoolFilter, Filter, FunnelQuery, FunnelResult, FunnelStepResult, GeoFilter,
                             MAX_CELLS, Query, QueryResult, Row, parse_metric, resolve_interval,
                             validate_funnel, validate_query, zone)
from telemetry.timebuckets import boundaries, from_us, to_us

SLOT = rollups.SLOT_US
NONE = 0   # interned id of "missing"


class BoolKey:
    """A boolean group key: keeps True apart from 1 (equal as dict keys in Python)."""

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BoolKey) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("BoolKey", self.value))


def _plain(x: Any) -> Any:
    return x.value if isinstance(x, BoolKey) else x


class _Interner:
    """Per-query value <-> small int ids, shared by every segment (id 0 = None)."""

    def __init__(self) -> None:
        self.values: list[Any] = [None]
        self.ids: dict[Any, int] = {}

    def id(self, v: Any) -> int:
        if v is None:
            return NONE
        k = ("\x00b", v) if type(v) is bool else v
        i = self.ids.get(k)
        if i is None:
            i = self.ids[k] = len(self.values)
            self.values.append(BoolKey(v) if type(v) is bool else v)
        return i


# ---- filters on columns ----------------------------------------------------------------

def _attr_columns(attr: str) -> list[str]:
    if attr == "type":
        return ["@y"]
    return ["c:" + attr, "f:" + attr, "m:" + attr]


def filter_columns(f: AnyFilter, out: set[str]) -> None:
    if isinstance(f, BoolFilter):
        for x in f.items:
            filter_columns(x, out)
    else:
        out.update(_attr_columns(f.attr))


def _m_rows(m: np.ndarray, n: int, codes: np.ndarray | None) -> np.ndarray:
    """Boolean mask of rows having a multi-value member in `codes` (None: any member)."""
    k = len(m) // 2
    rows, vals = m[:k], m[k:]
    hit = rows if codes is None else rows[np.isin(vals, codes)]
    mask = np.zeros(n, bool)
    mask[hit.astype(np.int64)] = True
    return mask


class _Ctx:
    def __init__(self, store: Any) -> None:
        self.d = store.dictionary
        self._str_cache: dict[tuple[str, Any], np.ndarray] = {}

    def eq_codes(self, values: list[Any]) -> tuple[np.ndarray, list[float]]:
        codes, nums = set(), []
        for v in values:
            for kind, x in forms(v):
                if kind == "s" or kind == "b":
                    c = self.d.lookup(x)
                    if c:
                        codes.add(c)
                else:
                    nums.append(x)
                    if float(x).is_integer():
                        c = self.d.lookup(int(x))
                        if c:
                            codes.add(c)
        return np.array(sorted(codes), np.uint32), nums

    @staticmethod
    def local_eq_codes(values: list[Any], operands: list[Any]) -> tuple[np.ndarray, list[float]]:
        """Local codes (in a segment's dictionary `values`) equal to any operand form, and the numbers."""
        codes: set[int] = set()
        nums: list[float] = []
        for v in operands:
            for kind, x in forms(v):
                cands: list[Any] = [x]
                if kind == "n":
                    nums.append(x)
                    cands = [int(x), x] if float(x).is_integer() else [x]
                for cand in cands:
                    start = 0
                    while True:
                        try:
                            i = values.index(cand, start)
                        except ValueError:
                            break
                        if norm(values[i]) == (kind, x):
                            codes.add(i + 1)
                        start = i + 1
        return np.array(sorted(codes), np.uint32), nums

    @staticmethod
    def local_str_codes(values: list[Any], op: str, value: Any) -> np.ndarray:
        if op == "contains":
            sub = str(value)
            return np.array([i + 1 for i, v in enumerate(values) if type(v) is str and sub in v], np.uint32)
        rx = re.compile(value)
        return np.array([i + 1 for i, v in enumerate(values) if type(v) is str and rx.search(v) is not None],
                        np.uint32)


def filter_mask(ctx: _Ctx, f: AnyFilter, cols: dict[str, np.ndarray], dicts: dict[str, list[Any]],
                n: int) -> np.ndarray:
    if isinstance(f, BoolFilter):
        masks = [filter_mask(ctx, x, cols, dicts, n) for x in f.items]
        if f.op == "and":
            return np.logical_and.reduce(masks)
        if f.op == "or":
            return np.logical_or.reduce(masks)
        return ~masks[0]
    op, attr = f.op, f.attr
    if attr == "type":
        c, fl, m = cols["@y"], None, None
    else:
        c, fl, m = cols.get("c:" + attr), cols.get("f:" + attr), cols.get("m:" + attr)
    if op in ("eq", "ne", "in"):
        operands = list(f.value) if op == "in" else [f.value]
        mask = np.zeros(n, bool)
        nums: list[float] = []
        if attr == "type":
            codes, _ = ctx.eq_codes(operands)
            mask |= np.isin(c, codes)
        else:
            if c is not None:
                codes, nums = ctx.local_eq_codes(dicts.get("c:" + attr, []), operands)
                if len(codes) == 1:
                    mask |= c == codes[0]
                elif len(codes):
                    mask |= np.isin(c, codes)
            if m is not None:
                mcodes, nums = ctx.local_eq_codes(dicts.get("m:" + attr, []), operands)
                if len(mcodes):
                    mask |= _m_rows(m, n, mcodes)
            if fl is not None:
                nums = [x for v in operands for kind, x in forms(v) if kind == "n"]
                if nums:
                    mask |= np.isin(fl, np.array(nums))
        return ~mask if op == "ne" else mask
    if op in ("contains", "regex"):
        mask = np.zeros(n, bool)
        if attr == "type":
            vals = ctx.d.values
            codes = ctx.local_str_codes(vals[1:], op, f.value)
            return np.isin(c, codes)
        if c is not None:
            codes = ctx.local_str_codes(dicts.get("c:" + attr, []), op, f.value)
            if len(codes):
                mask |= np.isin(c, codes)
        if m is not None:
            codes = ctx.local_str_codes(dicts.get("m:" + attr, []), op, f.value)
            if len(codes):
                mask |= _m_rows(m, n, codes)
        return mask
    if op in ("gt", "ge", "lt", "le"):
        if fl is None:
            return np.zeros(n, bool)
        x = float(f.value)
        with np.errstate(invalid="ignore"):
            return {"gt": fl > x, "ge": fl >= x, "lt": fl < x, "le": fl <= x}[op]
    mask = np.zeros(n, bool)
    if c is not None:
        mask |= c != 0
    if fl is not None:
        mask |= ~np.isnan(fl)
    if m is not None:
        mask |= _m_rows(m, n, None)
    return mask if op == "exists" else ~mask


def geo_mask(g: GeoFilter, cols: dict[str, np.ndarray], n: int) -> np.ndarray:
    lat, lon = cols.get("f:lat"), cols.get("f:lon")
    if lat is None or lon is None:
        return np.zeros(n, bool)
    with np.errstate(invalid="ignore"):
        if g.bbox is not None:
            s, w, nn, e = g.bbox
            ok = (lat >= s) & (lat <= nn)
            ok &= ((lon >= w) & (lon <= e)) if w <= e else ((lon >= w) | (lon <= e))
            return ok
        la, lo, km = g.near  # type: ignore[misc]
        return haversine_km(lat, lon, la, lo) <= km


# ---- group keys --------------------------------------------------------------------------

def _map_codes(it: _Interner, codes: np.ndarray, value_of: Callable[[int], Any]) -> np.ndarray:
    """Group ids for codes; `value_of(code)` gives the value of a non-zero code."""
    if len(codes) == 0:
        return np.zeros(0, np.int64)
    top = int(codes.max())
    if top < 4 * len(codes) + 1024:
        # dense codes: a lookup table beats sorting
        present = np.flatnonzero(np.bincount(codes, minlength=top + 1))
        table = np.zeros(top + 1, np.int64)
        table[present] = [it.id(value_of(int(c))) if c else NONE for c in present.tolist()]
        return table[codes]
    uq, inv = np.unique(codes, return_inverse=True)
    ids = np.fromiter((it.id(value_of(int(c))) if c else NONE for c in uq.tolist()), np.int64, len(uq))
    return ids[inv]


def _local(values: list[Any]) -> Callable[[int], Any]:
    return lambda c: values[c - 1]


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() and abs(v) < 2**53 else v


def _map_floats(it: _Interner, vals: np.ndarray) -> np.ndarray:
    if len(vals) == 0:
        return np.zeros(0, np.int64)
    uq, inv = np.unique(vals, return_inverse=True)
    ids = np.fromiter((NONE if math.isnan(v) else it.id(_num(v)) for v in uq.tolist()), np.int64, len(uq))
    return ids[inv]


def explode(ctx: _Ctx, it: _Interner, attr: str, cols: dict[str, np.ndarray], dicts: dict[str, list[Any]],
            n: int, rows: np.ndarray, precision: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions into `rows`, group ids): one entry per row, or per list member / map key."""
    k = len(rows)
    if attr == "geo_cell":
        lat, lon = cols.get("f:lat"), cols.get("f:lon")
        ids = np.zeros(k, np.int64)
        if lat is not None and lon is not None:
            la, lo = lat[rows], lon[rows]
            ok = ~(np.isnan(la) | np.isnan(lo))
            size = 10.0 ** -precision
            cla = np.floor(la[ok] / size).astype(np.int64)
            clo = np.floor(lo[ok] / size).astype(np.int64)
            pair = np.stack([cla, clo], axis=1)
            if len(pair):
                uq, inv = np.unique(pair, axis=0, return_inverse=True)
                inv = inv.reshape(-1)
                uids = np.array([it.id((round((a + 0.5) * size, precision + 1), round((b + 0.5) * size, precision + 1)))
                                 for a, b in uq.tolist()], np.int64)
                ids[ok] = uids[inv]
        return np.arange(k), ids
    if attr == "type":
        return np.arange(k), _map_codes(it, cols["@y"][rows], ctx.d.value)
    c, f, m = cols.get("c:" + attr), cols.get("f:" + attr), cols.get("m:" + attr)
    base = np.zeros(k, np.int64)
    if c is not None:
        cc = c[rows]
        nz = cc != 0
        base[nz] = _map_codes(it, cc[nz], _local(dicts.get("c:" + attr, [])))
    if f is not None:
        ff = f[rows]
        sel = ~np.isnan(ff)
        if c is not None:
            sel &= c[rows] == 0
        if sel.any():
            base[sel] = _map_floats(it, ff[sel])
    if m is None:
        return np.arange(k), base
    half = len(m) // 2
    mr, mc = m[:half].astype(np.int64), m[half:]
    pos = np.full(n, -1, np.int64)
    pos[rows] = np.arange(k)
    ep = pos[mr]
    keep = ep >= 0
    ep, ids = ep[keep], _map_codes(it, mc[keep], _local(dicts.get("m:" + attr, [])))
    has = np.zeros(k, bool)
    has[ep] = True
    rest = np.flatnonzero(~has)
    allpos = np.concatenate([rest, ep])
    allids = np.concatenate([base[rest], ids])
    order = np.argsort(allpos, kind="stable")
    return allpos[order], allids[order]


def join(cur_pos: np.ndarray, cur_keys: list[np.ndarray], pos2: np.ndarray,
         ids2: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Cartesian product per row of the current entries with another exploded attribute."""
    starts = np.searchsorted(pos2, cur_pos, "left")
    ends = np.searchsorted(pos2, cur_pos, "right")
    cnt = ends - starts
    rep = np.repeat(np.arange(len(cur_pos)), cnt)
    total = int(cnt.sum())
    offs = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    idx2 = np.repeat(starts, cnt) + offs
    return cur_pos[rep], [k[rep] for k in cur_keys] + [ids2[idx2]]


# ---- the segment path ---------------------------------------------------------------------

def _segments(store: Any, s_us: int, e_us: int, types: tuple[str, ...], names: set[str]):
    """Yield (n, cols) of every segment overlapping [s_us, e_us) (only the named columns)."""
    for part in store.partitions(s_us, e_us, types):
        if part.derived is None or part.segs is None:
            continue
        with part.derived.begin() as txn:
            for seg_id, h in list(columns.iter_headers(txn, part.segs)):
                if h["n"] == 0 or h["tmax"] < s_us or h["tmin"] >= e_us:
                    continue
                yield (h["n"], columns.read_columns(txn, part.segs, seg_id, names | {"@t", "@y"}),
                       columns.read_dicts(txn, part.segs, seg_id, names))


def _row_mask(ctx: _Ctx, cols: dict[str, np.ndarray], dicts: dict[str, list[Any]], n: int, s_us: int, e_us: int,
              types: tuple[str, ...], filters: tuple[AnyFilter, ...], geo: GeoFilter | None) -> np.ndarray:
    t = cols["@t"]
    mask = (t >= s_us) & (t < e_us)
    if types:
        codes = np.array([c for c in (ctx.d.lookup(x) for x in types) if c], np.uint32)
        mask &= np.isin(cols["@y"], codes)
    for f in filters:
        if not mask.any():
            break
        mask &= filter_mask(ctx, f, cols, dicts, n)
    if geo is not None:
        mask &= geo_mask(geo, cols, n)
    return mask


def _scan(store: Any, q: Query, B: np.ndarray | None, func: str, attr: str | None, s_us: int,
          e_us: int) -> dict[tuple[int, tuple], Any]:
    ctx = _Ctx(store)
    it = _Interner()
    names: set[str] = set()
    for f in q.filters:
        filter_columns(f, names)
    for g in q.group_by:
        names.update(["f:lat", "f:lon"] if g == "geo_cell" else _attr_columns(g))
    if q.geo is not None:
        names.update(["f:lat", "f:lon"])
    if func == "users":
        names.update("c:" + a for a in rollups.ACTOR_ATTRS)
    elif attr is not None:
        names.add("f:" + attr)
    simple = (func == "count" and not q.filters and q.geo is None and len(q.group_by) == 1
              and q.group_by[0] not in ("type", "geo_cell"))
    if simple:
        fast = _scan_simple_count(store, q, B, s_us, e_us, names, it)
        if fast is not None:
            return fast
    parts: list[list[np.ndarray]] = []
    for n, cols, dicts in _segments(store, s_us, e_us, q.types, names):
        mask = _row_mask(ctx, cols, dicts, n, s_us, e_us, q.types, q.filters, q.geo)
        rows = np.flatnonzero(mask)
        if not len(rows):
            continue
        if func not in ("count", "users"):
            vcol = cols.get("f:" + attr)  # type: ignore[operator]
            if vcol is None:
                continue
            rows = rows[~np.isnan(vcol[rows])]
            if not len(rows):
                continue
        pos = np.arange(len(rows))
        keys: list[np.ndarray] = []
        if B is not None:
            keys.append(np.searchsorted(B, cols["@t"][rows], "right") - 1)
        for g in q.group_by:
            p2, ids2 = explode(ctx, it, g, cols, dicts, n, rows, q.geo_precision)
            pos, keys = join(pos, keys, p2, ids2)
        r = rows[pos]
        if func == "users":
            val = rollups.actor_hashes(cols, dicts, n)[r]
            ok = val != 0
            keys, val = [k[ok] for k in keys], val[ok]
        elif func == "count":
            val = np.ones(len(r))
        else:
            val = cols["f:" + attr][r]  # type: ignore[operator]
        parts.append(keys + [val])
    nkeys = (1 if B is not None else 0) + len(q.group_by)
    if not parts:
        return {}
    cat = [np.concatenate([p[i] for p in parts]) for i in range(nkeys + 1)]
    keys, val = cat[:nkeys], cat[nkeys]
    out: dict[tuple[int, tuple], Any] = {}
    if not len(val):
        return out
    b_off = 1 if B is not None else 0
    sizes = ([len(B)] if B is not None else []) + [len(it.values)] * len(q.group_by)
    if func in ("count", "sum", "avg") and math.prod(sizes) <= 20_000_000:
        # Dense group index + bincount: no sort of the rows at all.
        dense = np.zeros(len(val), np.int64)
        for k, size in zip(keys, sizes):
            dense = dense * size + k
        total = math.prod(sizes) if sizes else 1
        cnt = np.bincount(dense, minlength=total)
        nz = np.flatnonzero(cnt)
        sums = np.bincount(dense, weights=val, minlength=total)[nz] if func != "count" else None
        comps = []
        rest = nz
        for size in reversed(sizes):
            comps.append(rest % size)
            rest = rest // size
        comps = [c.tolist() for c in reversed(comps)]
        counts = cnt[nz].tolist()
        vals = counts if func == "count" else (sums.tolist() if func == "sum" else (sums / cnt[nz]).tolist())
        for i, v in enumerate(vals):
            bucket = comps[0][i] if B is not None else -1
            gk = tuple(it.values[comps[j][i]] for j in range(b_off, nkeys))
            out[(bucket, gk)] = _num(v) if func != "avg" else v
        return out
    order = np.lexsort([val] + keys[::-1]) if keys else np.argsort(val, kind="stable")
    keys = [k[order] for k in keys]
    val = val[order]
    brk = np.zeros(len(val), bool)
    brk[0] = True
    for k in keys:
        brk[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], len(val))
    cnt = ends - starts
    if func == "count":
        res = cnt
    elif func == "users":
        distinct = np.ones(len(val), bool)
        distinct[1:] = (val[1:] != val[:-1]) | brk[1:]
        res = np.add.reduceat(distinct.astype(np.int64), starts)
    elif func == "sum":
        res = np.add.reduceat(val, starts)
    elif func == "avg":
        res = np.add.reduceat(val, starts) / cnt
    elif func == "min":
        res = val[starts]
    elif func == "max":
        res = val[ends - 1]
    else:
        qf = 0.5 if func == "p50" else 0.95
        h = (cnt - 1) * qf
        lo = np.floor(h).astype(np.int64)
        hi = np.minimum(lo + 1, cnt - 1)
        frac = h - lo
        res = val[starts + lo] * (1 - frac) + val[starts + hi] * frac
    b_off = 1 if B is not None else 0
    klists = [k[starts].tolist() for k in keys]
    for i, v in enumerate(res.tolist()):
        bucket = klists[0][i] if B is not None else -1
        gk = tuple(it.values[klists[j][i]] for j in range(b_off, nkeys))
        out[(bucket, gk)] = _num(v) if func not in ("avg", "p50", "p95") else v
    return out


def _scan_simple_count(store: Any, q: Query, B: np.ndarray | None, s_us: int, e_us: int, names: set[str],
                       it: _Interner) -> dict[tuple[int, tuple], Any] | None:
    """count grouped by one scalar string/int attribute: a bincount of local codes per segment.

    Returns None (use the general path) when a segment holds the attribute as a list/map or
    as floats only.
    """
    attr = q.group_by[0]
    ctx = _Ctx(store)
    acc: dict[tuple[int, int], int] = {}    # (bucket, interned value id) -> count
    for n, cols, dicts in _segments(store, s_us, e_us, q.types, names):
        if ("m:" + attr) in cols or (("f:" + attr) in cols and ("c:" + attr) not in cols):
            return None
        t = cols["@t"]
        c = cols.get("c:" + attr)
        if q.types:
            mask = _row_mask(ctx, cols, dicts, n, s_us, e_us, q.types, (), None)
        elif not n or (t.min() >= s_us and t.max() < e_us):
            mask = None
        else:
            mask = (t >= s_us) & (t < e_us)
        codes = c if c is not None else np.zeros(n, np.uint32)
        if mask is not None:
            codes, t = codes[mask], t[mask]
        if not len(codes):
            continue
        values = dicts.get("c:" + attr, [])
        width = len(values) + 1
        if B is not None:
            b = np.searchsorted(B, t, "right") - 1
            counts = np.bincount(b * width + codes, minlength=len(B) * width)
        else:
            counts = np.bincount(codes, minlength=width)
        ids = [NONE] + [it.id(v) for v in values]
        for k in np.flatnonzero(counts).tolist():
            bucket, code = (divmod(k, width) if B is not None else (-1, k))
            key = (bucket, ids[code])
            acc[key] = acc.get(key, 0) + int(counts[k])
    return {(b, (it.values[i],)): v for (b, i), v in acc.items()}


# ---- the rollup path ----------------------------------------------------------------------

def _rollup_plan(store: Any, q: Query, B: np.ndarray | None, func: str, s_us: int, e_us: int):
    """(dim, filter values or None, group_by_type, group_by_dim) when rollups can answer, else None."""
    if func not in ("count", "users") or q.geo is not None:
        return None
    if s_us % SLOT or e_us % SLOT or (B is not None and (B % SLOT).any()):
        return None
    dims = {name for name in store.settings.dimensions if name != "geo_cell"}
    dim = None
    values = None
    types = set(q.types) if q.types else None
    for f in q.filters:
        if not isinstance(f, Filter) or f.op not in ("eq", "in"):
            return None
        vals = list(f.value) if f.op == "in" else [f.value]
        if f.attr == "type":
            vs = {v for v in vals if isinstance(v, str)}
            types = vs if types is None else types & vs
            continue
        if f.attr not in dims or (dim is not None and dim != f.attr) or values is not None:
            return None
        dim, values = f.attr, vals
    gb_type = False
    gb_dim = False
    for g in q.group_by:
        if g == "type" and not gb_type:
            gb_type = True
        elif g in dims and (dim is None or dim == g) and not gb_dim:
            dim, gb_dim = g, True
        else:
            return None
    if func == "users" and dim is not None:
        return None
    return dim, values, types, gb_type, gb_dim


def _type_codes(store: Any, part: Any, txn: Any, types: set[str] | None) -> list[int]:
    if types is not None:
        return sorted(c for c in (store.dictionary.lookup(t) for t in types) if c)
    found = set()
    cur = txn.cursor(db=part.roll)
    key = b"t"
    while cur.set_range(key):
        k = cur.key()
        if not k.startswith(b"t"):
            break
        code = int.from_bytes(k[1:5], "big")
        found.add(code)
        key = b"t" + (code + 1).to_bytes(4, "big")
    return sorted(found)


def _day_plan(B: np.ndarray | None, s_us: int, e_us: int) -> tuple[set[int], list[tuple[int, int]]]:
    """UTC days answerable from day-level rollups (inside [s, e) and inside one bucket), and
    the remaining [slot_from, slot_to) ranges."""
    DAY = 86_400_000_000
    days: set[int] = set()
    d0, d1 = -(-s_us // DAY), e_us // DAY
    for day in range(d0, d1):
        a, b = day * DAY, (day + 1) * DAY
        if B is None or np.searchsorted(B, a, "right") == np.searchsorted(B, b - 1, "right"):
            days.add(day)
    ranges: list[tuple[int, int]] = []
    cur = s_us // SLOT
    end = e_us // SLOT
    for day in sorted(days):
        ds = day * rollups.DAY_SLOTS
        if cur < ds:
            ranges.append((cur, ds))
        cur = ds + rollups.DAY_SLOTS
    if cur < end:
        ranges.append((cur, end))
    return days, ranges


def _rollups(store: Any, q: Query, B: np.ndarray | None, plan: tuple, func: str, s_us: int,
             e_us: int, total_hint: list[int | None] | None = None) -> dict[tuple[int, tuple], Any]:
    """Answer from the rollups: counters, per-value counters, code/count blobs or actor sets."""
    dim, values, types, gb_type, gb_dim = plan
    d = store.dictionary
    if total_hint is None:
        total_hint = [None]
    fcodes = None
    if values is not None:
        fcodes, _ = _Ctx(store).eq_codes(values)
    dim_code = d.lookup(dim) if dim is not None else 0
    days, ranges = _day_plan(B, s_us, e_us)
    day_us = 86_400_000_000
    # (start_us of the slot or day, type code, value code, count) pieces, or actor sets
    piece_t: list[np.ndarray] = []
    piece_type: list[np.ndarray] = []
    piece_code: list[np.ndarray] = []
    piece_n: list[np.ndarray] = []
    sets: dict[tuple[int, int], list[np.ndarray]] = {}

    def bucket_of(us: int) -> int:
        return int(np.searchsorted(B, us, "right") - 1) if B is not None else -1

    tq = tuple(sorted(types)) if types is not None else ()
    for part in store.partitions(s_us, e_us, tq):
        if part.derived is None or part.roll is None:
            continue
        with part.derived.begin() as txn:
            any_type = func == "users" and types is None and not gb_type
            tcodes = [0] if any_type else _type_codes(store, part, txn, types)
            p_days = [x for x in days if part.name.start_us <= x * day_us < part.name.end_us]
            for tc in tcodes:
                if func == "users":
                    if any_type and p_days:
                        for day, hs in rollups.read_users(txn, part.roll, 0, min(p_days), max(p_days) + 1, day=True):
                            if day in days:
                                sets.setdefault((bucket_of(day * day_us), 0), []).append(hs)
                        slot_ranges = ranges
                    else:
                        slot_ranges = [(s_us // SLOT, e_us // SLOT)]
                    for a, b in slot_ranges:
                        for slot, hs in rollups.read_users(txn, part.roll, tc, a, b):
                            sets.setdefault((bucket_of(slot * SLOT), tc if gb_type else 0), []).append(hs)
                elif dim is None or (not gb_dim and dim_code == 0):
                    if dim is not None:
                        continue
                    sl, cn = rollups.read_counts(txn, part.roll, tc, s_us // SLOT, e_us // SLOT)
                    piece_t.append(sl * SLOT)
                    piece_type.append(np.full(len(sl), tc, np.int64))
                    piece_code.append(np.zeros(len(sl), np.int64))
                    piece_n.append(cn)
                elif not gb_dim and dim in rollups.V_DIMS:
                    if not dim_code or fcodes is None:
                        continue
                    for vc in fcodes.tolist():
                        sl, cn = rollups.read_value_counts(txn, part.roll, dim_code, vc, tc,
                                                           s_us // SLOT, e_us // SLOT)
                        piece_t.append(sl * SLOT)
                        piece_type.append(np.full(len(sl), tc, np.int64))
                        piece_code.append(np.zeros(len(sl), np.int64))
                        piece_n.append(cn)
                else:
                    if not dim_code:
                        continue
                    blobs = []
                    if p_days:
                        blobs += [(day * day_us, c, n) for day, c, n in
                                  rollups.read_dim(txn, part.roll, dim_code, tc, min(p_days), max(p_days) + 1, day=True)
                                  if day in days]
                    for a, b in ranges:
                        blobs += [(slot * SLOT, c, n) for slot, c, n in rollups.read_dim(txn, part.roll, dim_code, tc, a, b)]
                    for t0, codes, counts in blobs:
                        if fcodes is not None:
                            keep = np.isin(codes, fcodes)
                            codes, counts = codes[keep], counts[keep]
                        if not len(codes):
                            continue
                        piece_t.append(np.full(len(codes), t0, np.int64))
                        piece_type.append(np.full(len(codes), tc, np.int64))
                        piece_code.append(codes.astype(np.int64))
                        piece_n.append(counts.astype(np.int64))
    out: dict[tuple[int, tuple], Any] = {}
    if func == "users":
        for (b, tc), arrs in sets.items():
            v = len(arrs[0]) if len(arrs) == 1 else len(np.unique(np.concatenate(arrs)))
            if v:
                out[(b, tuple(d.value(tc) if g == "type" else None for g in q.group_by))] = v
        return out
    if not piece_t:
        return out
    t = np.concatenate(piece_t)
    if not len(t):
        return out
    bidx = (np.searchsorted(B, t, "right") - 1) if B is not None else np.full(len(t), -1)
    tcs = np.concatenate(piece_type) if gb_type else np.zeros(len(t), np.int64)
    ccs = np.concatenate(piece_code) if gb_dim else np.zeros(len(t), np.int64)
    vals = np.concatenate(piece_n)
    # dense radix index (bucket+1, type, code) -> bincount; no sort of the pieces
    rb, rt, rc = (len(B) + 1) if B is not None else 1, int(tcs.max()) + 1, int(ccs.max()) + 1
    if rb * rt * rc <= 50_000_000:
        dense = ((bidx + 1) * rt + tcs) * rc + ccs
        sums = np.bincount(dense, weights=vals, minlength=rb * rt * rc)
        nz = np.flatnonzero(sums)
        if B is None and q.order != "time" and not q.page_token and len(nz) > 4 * (q.limit + 1):
            # Top-N: decode only the groups that can make the first page (ties included).
            total_hint[0] = len(nz)
            score = -sums[nz] if q.order == "value_desc" else sums[nz]
            kth = np.partition(score, q.limit)[q.limit]
            nz = nz[score <= kth]
        trip = zip((nz // (rt * rc) - 1).tolist(), ((nz // rc) % rt).tolist(), (nz % rc).tolist(),
                   sums[nz].tolist())
    else:
        ub, ib = np.unique(bidx, return_inverse=True)
        ut, it_ = np.unique(tcs, return_inverse=True)
        uc, ic = np.unique(ccs, return_inverse=True)
        dense = (ib.reshape(-1) * len(ut) + it_.reshape(-1)) * len(uc) + ic.reshape(-1)
        keys, inv = np.unique(dense, return_inverse=True)
        sums = np.bincount(inv.reshape(-1), weights=vals, minlength=len(keys))
        trip = zip(ub[keys // (len(ut) * len(uc))].tolist(), ut[(keys // len(uc)) % len(ut)].tolist(),
                   uc[keys % len(uc)].tolist(), sums.tolist())
    for b, tc, c, v in trip:
        if v:
            gk = tuple(d.value(tc) if g == "type" else d.value(c) for g in q.group_by)
            out[(b, gk)] = int(v)
    return out


# ---- rows, ordering, paging --------------------------------------------------------------

def _rank(v: Any) -> tuple:
    v = _plain(v)
    if v is None:
        return (0, 0)
    if type(v) is bool:
        return (1, int(v))
    if isinstance(v, (int, float)):
        return (2, v)
    if isinstance(v, tuple):
        return (4, v)
    return (3, str(v))


def _fingerprint(q: Query, interval: str | None) -> str:
    text = repr((q.start.timestamp(), q.end.timestamp(), q.types, q.filters, q.geo, q.metric, interval, q.tz,
                 q.group_by, q.geo_precision, q.order))
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(i) for i in x) if isinstance(x, list) else x


def run_query(store: Any, q: Query) -> QueryResult:
    """Answer an aggregate query (see module docstring)."""
    validate_query(q)
    interval = resolve_interval(q.interval, q.start, q.end)
    tz = zone(q.tz)
    s_us, e_us = to_us(q.start), to_us(q.end)
    B = boundaries(q.start, q.end, interval, tz) if interval else None
    func, attr = parse_metric(q.metric)
    plan = _rollup_plan(store, q, B, func, s_us, e_us)
    total_hint: list[int | None] = [None]     # set when the rollups pruned groups for top-N
    groups = _rollups(store, q, B, plan, func, s_us, e_us, total_hint) if plan is not None else \
        _scan(store, q, B, func, attr, s_us, e_us)
    if B is not None:
        nb = len(B) - 1
        gkeys = {gk for _, gk in groups} or ({()} if not q.group_by else set())
        if len(gkeys) * nb > MAX_CELLS:  # every group gets every bucket, zeros included: bound it
            raise QueryError("group_by", f"{len(gkeys)} groups x {nb} {interval} buckets = {len(gkeys) * nb} rows, "
                                         f"more than {MAX_CELLS}; use a longer interval, a shorter range, "
                                         "or a filter")
        for gk in gkeys:
            for b in range(nb):
                groups.setdefault((b, gk), 0)
    nb = len(B) - 1 if B is not None else 0
    items = [(b, gk, v) for (b, gk), v in groups.items() if B is None or 0 <= b < nb]
    total = total_hint[0] if total_hint[0] is not None else len(items)
    fp = _fingerprint(q, interval)
    after = None
    if q.page_token:
        try:
            raw = msgpack.unpackb(base64.urlsafe_b64decode(q.page_token + "=" * (-len(q.page_token) % 4)))
            tfp, after = raw[0], _tuplify(raw[1])
        except Exception:  # noqa: BLE001 - any garbage is the same user error
            raise QueryError("page_token", "not a page token from this API; start again without it") from None
        if tfp != fp:
            raise QueryError("page_token", "belongs to a different query; start again without it")
    desc = q.order == "value_desc"

    def skey(item: tuple[int, tuple, Any]) -> tuple:
        b, gk, v = item
        ks = (b, tuple(_rank(x) for x in gk))
        return ks if q.order == "time" else ((-v if desc else v), ks)

    if q.order == "time":
        entries = sorted(((skey(it), it) for it in items), key=lambda x: x[0])
        start_i = bisect.bisect_right([e[0] for e in entries], after) if after is not None else 0
        page = entries[start_i:start_i + q.limit]
        more = start_i + q.limit < total
    else:
        # Top-N without sorting every group: keep groups whose value can reach the page.
        vals = np.array([float(v) for _, _, v in items]) if items else np.zeros(0)
        score = -vals if desc else vals                   # smaller score first
        idx = np.arange(len(items))
        if after is not None:
            tv = float(after[0])
            ties = [i for i in np.flatnonzero(score == tv).tolist() if skey(items[i]) > after]
            idx = np.concatenate([np.flatnonzero(score > tv), np.array(ties, np.int64)])
        k = q.limit + 1
        if len(idx) > k:
            kth = np.partition(score[idx], k - 1)[k - 1]
            cand = idx[score[idx] <= kth]
        else:
            cand = idx
        entries = sorted(((skey(items[i]), items[i]) for i in cand.tolist()), key=lambda x: x[0])
        page = entries[:q.limit]
        more = len(idx) > q.limit
    token = None
    if more and page:
        token = base64.urlsafe_b64encode(msgpack.packb([fp, page[-1][0]])).decode().rstrip("=")
    page = [(sk, b, gk, v) for sk, (b, gk, v) in page]
    rows = []
    for _, b, gk, v in page:
        keys: dict[str, Any] = {}
        for g, x in zip(q.group_by, gk):
            if g == "geo_cell":
                keys["lat"], keys["lon"] = (x if x is not None else (None, None))
            else:
                keys[g] = _plain(x)
        rows.append(Row(from_us(int(B[b]), tz) if B is not None else None, keys, v))
    return QueryResult(rows, total, token, interval, False)


def _vk(v: Any) -> Any:
    return ("\x00b", v) if type(v) is bool else v


# ---- funnels -------------------------------------------------------------------------------

def run_funnel(store: Any, q: FunnelQuery) -> FunnelResult:
    """Actors whose step-1 event is in [start, end), then each next step strictly later and
    within `within` of step 1. entered[i] = actors reaching step i; converted[i] = those also
    reaching step i+1 (for the last step: those completing it); drop_off = entered - converted.
    """
    validate_funnel(q)
    ctx = _Ctx(store)
    s_us, e_us = to_us(q.start), to_us(q.end)
    win = int(q.within.total_seconds() * 1_000_000)
    end_scan = e_us + win
    names: set[str] = {"c:" + q.by}
    for st in q.steps:
        for f in st.filters:
            filter_columns(f, names)
    types = tuple(sorted({s.type for s in q.steps}))
    per_step: list[dict[int, list[int]]] = [dict() for _ in q.steps]
    for n, cols, dicts in _segments(store, s_us, end_scan, types, names):
        actor = cols.get("c:" + q.by)
        if actor is None:
            continue
        values = dicts.get("c:" + q.by, [])
        for i, st in enumerate(q.steps):
            hi = e_us if i == 0 else end_scan
            mask = _row_mask(ctx, cols, dicts, n, s_us, hi, (st.type,), st.filters, None) & (actor != 0)
            r = np.flatnonzero(mask)
            for a, t in zip(actor[r].tolist(), cols["@t"][r].tolist()):
                per_step[i].setdefault(_vk(values[a - 1]), []).append(t)
    for m in per_step:
        for v in m.values():
            v.sort()
    k = len(q.steps)
    reached = [0] * (k + 1)
    for a, starts in per_step[0].items():
        best = 1
        for t0 in starts:
            depth, t = 1, t0
            for j in range(1, k):
                times = per_step[j].get(a)
                if not times:
                    break
                i = bisect.bisect_right(times, t)
                if i >= len(times) or times[i] > t0 + win:
                    break
                t = times[i]
                depth += 1
            best = max(best, depth)
            if best == k:
                break
        for j in range(best):
            reached[j] += 1
    out = []
    for j, st in enumerate(q.steps):
        entered = reached[j]
        converted = reached[j + 1] if j + 1 < k else entered
        out.append(FunnelStepResult(j + 1, st.type, entered, converted, entered - converted))
    return FunnelResult(out)
