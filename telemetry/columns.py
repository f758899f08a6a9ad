"""Column segments: a batch of events turned into numpy arrays, for vectorised queries.

A segment holds up to SEG_ROWS events of one partition, stored as one LMDB value per
column so a query reads only the columns it needs:
    b"H" + seg_id(8)                  -> msgpack header {n, tmin, tmax, cols}
    b"C" + seg_id(8) + b"@t"          -> int64 time_us
    b"C" + seg_id(8) + b"@y"          -> uint32 type code (store-wide dictionary: types are few)
    b"C" + seg_id(8) + b"c:" + name   -> uint32 local codes of strings/ints/bools (0 = missing)
    b"C" + seg_id(8) + b"Dc:" + name  -> msgpack list: the values of those local codes (code i+1)
    b"C" + seg_id(8) + b"f:" + name   -> float64 numbers (NaN = missing)
    b"C" + seg_id(8) + b"m:" + name   -> uint32 [rows..., local codes...]: list members and map keys
    b"C" + seg_id(8) + b"Dm:" + name  -> msgpack list of their values
Map members are columns of their own, named "map.key" (e.g. "supplies.Childcare").
Dictionaries are local to a segment, so high-cardinality values (sessions, visitors) cost
nothing outside their segment and the follower's memory stays bounded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import numpy as np

from telemetry.dictionary import Dictionary

SEG_ROWS = 65_536
_SEG = struct.Struct(">Q")


class Segment:
    """Columns of n events (in memory); `dicts` holds the local dictionary of each c:/m: column."""

    __slots__ = ("n", "cols", "dicts", "hashes")

    def __init__(self, n: int, cols: dict[str, np.ndarray], dicts: dict[str, list[Any]],
                 hashes: dict[str, np.ndarray] | None = None) -> None:
        self.n = n
        self.cols = cols
        self.dicts = dicts
        # in memory only: code -> 64-bit value hash tables (rollups.column_hashes), computed once
        self.hashes: dict[str, np.ndarray] = hashes if hashes is not None else {}

    @property
    def tmin(self) -> int:
        return int(self.cols["@t"].min()) if self.n else 0

    @property
    def tmax(self) -> int:
        return int(self.cols["@t"].max()) if self.n else 0


def _vkey(v: Any) -> Any:
    return ("\x00b", v) if type(v) is bool else v


class _Coder:
    """Local codes for one column: value -> 1..k, in first-seen order."""

    __slots__ = ("codes", "values")

    def __init__(self) -> None:
        self.codes: dict[Any, int] = {}
        self.values: list[Any] = []

    def code(self, v: Any) -> int:
        k = _vkey(v)
        c = self.codes.get(k)
        if c is None:
            self.values.append(v)
            c = self.codes[k] = len(self.values)
        return c


def _code_column(vals: list[Any], n: int) -> tuple[np.ndarray, list[Any]]:
    """Local codes (0 for None) and the values list, for a column without booleans mixed with ints."""
    uniq = set(vals)
    uniq.discard(None)
    values = list(uniq)
    local: dict[Any, int] = {v: i + 1 for i, v in enumerate(values)}
    local[None] = 0
    return np.fromiter(map(local.__getitem__, vals), np.uint32, n), values


def build_segment_parts(times_l: Sequence[int] | np.ndarray, types_l: list[str], attrs: list[Any],
                        d: Dictionary) -> Segment:
    """Columns of events given as parallel lists of times, types and attribute maps (type
    codes assigned in `d`: commit `d` before storing). The Python path; the follower takes
    arrowseg's when it can.

    Column at a time, not event at a time: one list comprehension per attribute name, then
    a type census decides the column kinds; only lists, maps and mixed-type columns take
    the per-value path.
    """
    n = len(times_l)
    times = np.array(times_l, np.int64)
    tcodes = {t: d.code(t) for t in set(types_l)}
    types = np.fromiter(map(tcodes.__getitem__, types_l), np.uint32, n)
    names: set[str] = set()
    for a in attrs:
        names.update(a)
    cols: dict[str, np.ndarray] = {"@t": times, "@y": types}
    dicts: dict[str, list[Any]] = {}
    for name in names:
        _add_scalar_or_mixed(name, [a.get(name) for a in attrs], n, cols, dicts)
    return Segment(n, cols, dicts)


def _add_scalar_or_mixed(name: str, vals: list[Any], n: int, cols: dict[str, np.ndarray],
                         dicts: dict[str, list[Any]]) -> None:
    kinds = set(map(type, vals))
    kinds.discard(type(None))
    if kinds <= {str} or kinds <= {str, bool} and not kinds & {int}:
        if bool in kinds:
            coder = _Coder()
            codes = np.fromiter((coder.code(v) if v is not None else 0 for v in vals), np.uint32, n)
            cols["c:" + name], dicts["c:" + name] = codes, coder.values
        else:
            cols["c:" + name], dicts["c:" + name] = _code_column(vals, n)
        return
    if kinds <= {int, float}:
        cols["f:" + name] = np.array(vals, np.float64)    # None -> NaN, in C
        if float not in kinds:
            cols["c:" + name], dicts["c:" + name] = _code_column(vals, n)
        return
    _mixed_column(name, vals, n, cols, dicts)


def _mixed_column(name: str, vals: list[Any], n: int, cols: dict[str, np.ndarray],
                  dicts: dict[str, list[Any]]) -> None:
    """Lists (members), maps (keys, plus one column per member) and mixed scalar types."""
    c = np.zeros(n, np.uint32)
    f = np.full(n, np.nan)
    cc, mc = _Coder(), _Coder()
    mrows: list[int] = []
    mcodes: list[int] = []
    members: dict[str, list[Any]] = {}
    for i, v in enumerate(vals):
        if v is None:
            continue
        tv = type(v)
        if tv is list or tv is dict:
            mrows.extend([i] * len(v))
            mcodes.extend(mc.code(x) for x in v)
            if tv is dict:
                for mk, mv in v.items():
                    col = members.get(mk)
                    if col is None:
                        col = members[mk] = [None] * n
                    col[i] = mv
        else:
            if tv is not float:
                c[i] = cc.code(v)
            if tv is int or tv is float:
                f[i] = v
    if cc.values:
        cols["c:" + name], dicts["c:" + name] = c, cc.values
    if not np.isnan(f).all():
        cols["f:" + name] = f
    if mrows:
        cols["m:" + name] = np.concatenate([np.array(mrows, dtype=np.uint32), np.array(mcodes, dtype=np.uint32)])
        dicts["m:" + name] = mc.values
    for mk, col in members.items():
        _add_scalar_or_mixed(f"{name}.{mk}", col, n, cols, dicts)


def _remap(values_a: list[Any], values_b: list[Any],
           pos: dict[Any, int] | None = None) -> tuple[list[Any], np.ndarray]:
    """Merged dictionary (a's values, then b's new ones) and b's code -> merged code table.

    With `pos` (a's value -> code, as `_positions` builds it, kept by the caller from the
    previous merge) a's values are neither walked nor copied: `values_a` and `pos` are
    extended in place with b's new values. That is what makes the follower's small folds
    cheap: it merges each new chunk into the same tail segment again and again.
    """
    if pos is None:
        pos = _positions(values_a)
        merged = list(values_a)
    else:
        merged = values_a
    table = np.zeros(len(values_b) + 1, np.uint32)
    for j, v in enumerate(values_b):
        k = _vkey(v)
        c = pos.get(k)
        if c is None:
            merged.append(v)
            c = pos[k] = len(merged)
        table[j + 1] = c
    return merged, table


def _positions(values: list[Any]) -> dict[Any, int]:
    """Local dictionary value (under `_vkey`) -> its code (1-based)."""
    return {_vkey(v): i + 1 for i, v in enumerate(values)}


def concat(a: Segment, b: Segment, positions: dict[str, dict[Any, int]] | None = None) -> Segment:
    """One segment holding a's rows then b's (local dictionaries merged).

    `positions` (name -> value -> code of a's local dictionaries, possibly empty) is for a
    caller that merges into the result again (the follower's tail): missing entries are
    built, all are extended to the result's dictionaries, and a's dictionary lists are
    extended in place, so `a` must not be used afterwards.
    """
    n = a.n + b.n
    cols: dict[str, np.ndarray] = {}
    dicts: dict[str, list[Any]] = {}
    for name in set(a.cols) | set(b.cols):
        x, y = a.cols.get(name), b.cols.get(name)
        kind = name[0]
        table = None
        if kind in "cm":
            if positions is None:
                merged, table = _remap(a.dicts.get(name, []), b.dicts.get(name, []))
            else:
                values_a = a.dicts.get(name)
                if values_a is None:
                    values_a = []
                    positions.pop(name, None)
                elif type(values_a) is not list:  # extended in place below
                    values_a = list(values_a)
                pos = positions.get(name)
                if pos is None:
                    pos = positions[name] = _positions(values_a)
                merged, table = _remap(values_a, b.dicts.get(name, []), pos)
            dicts[name] = merged
        if kind == "m":
            rows, codes = [], []
            if x is not None:
                k = len(x) // 2
                rows.append(x[:k])
                codes.append(x[k:])
            if y is not None:
                k = len(y) // 2
                rows.append(y[:k] + a.n)
                codes.append(table[y[k:]])  # type: ignore[index]
            cols[name] = np.concatenate([np.concatenate(rows).astype(np.uint32),
                                         np.concatenate(codes).astype(np.uint32)])
            continue
        if y is not None and table is not None:
            y = table[y]
        if x is None:
            x = np.full(a.n, np.nan) if kind == "f" else np.zeros(a.n, y.dtype)  # type: ignore[union-attr]
        if y is None:
            y = np.full(b.n, np.nan) if kind == "f" else np.zeros(b.n, x.dtype)
        cols[name] = np.concatenate([x, y])
    return Segment(n, cols, dicts)


def seg_key(seg_id: int) -> bytes:
    return _SEG.pack(seg_id)


def encode_segment(seg_id: int, seg: Segment) -> list[tuple[bytes, bytes]]:
    """LMDB items for a segment (header first)."""
    k = b"C" + _SEG.pack(seg_id)
    items = [(b"H" + _SEG.pack(seg_id), msgpack.packb({"n": seg.n, "tmin": seg.tmin, "tmax": seg.tmax, "cols": sorted(seg.cols)}))]
    for name, arr in sorted(seg.cols.items()):
        items.append((k + name.encode(), np.ascontiguousarray(arr).tobytes()))
    for name, values in sorted(seg.dicts.items()):
        items.append((k + b"D" + name.encode(), msgpack.packb(values, use_bin_type=True)))
    return items


_DTYPES = {"@": None, "c": np.uint32, "f": np.float64, "m": np.uint32}


def decode_column(name: str, raw: bytes | memoryview) -> np.ndarray:
    if name == "@t":
        return np.frombuffer(raw, np.int64)
    return np.frombuffer(raw, _DTYPES[name[0]] or np.uint32)


def read_header(txn: Any, db: Any, seg_id: int) -> dict[str, Any] | None:
    raw = txn.get(b"H" + _SEG.pack(seg_id), db=db)
    return msgpack.unpackb(raw) if raw is not None else None


def iter_headers(txn: Any, db: Any) -> Iterable[tuple[int, dict[str, Any]]]:
    """(seg_id, header) of every segment, in id order."""
    cur = txn.cursor(db=db)
    if not cur.set_range(b"H"):
        return
    for k, v in cur:
        if k[:1] != b"H":
            return
        yield _SEG.unpack(k[1:])[0], msgpack.unpackb(v)


def read_columns(txn: Any, db: Any, seg_id: int, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The named columns of a segment that exist (read-only arrays over copied bytes)."""
    k = b"C" + _SEG.pack(seg_id)
    out = {}
    for name in names:
        raw = txn.get(k + name.encode(), db=db)
        if raw is not None:
            out[name] = decode_column(name, raw)
    return out


def read_dicts(txn: Any, db: Any, seg_id: int, names: Iterable[str]) -> dict[str, list[Any]]:
    """Local dictionaries of the named c:/m: columns that exist."""
    k = b"C" + _SEG.pack(seg_id)
    out = {}
    for name in names:
        if name[0] in "cm":
            raw = txn.get(k + b"D" + name.encode(), db=db)
            if raw is not None:
                out[name] = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    return out


def read_segment(txn: Any, db: Any, seg_id: int) -> Segment:
    h = read_header(txn, db, seg_id)
    assert h is not None
    return Segment(h["n"], read_columns(txn, db, seg_id, h["cols"]), read_dicts(txn, db, seg_id, h["cols"]))
