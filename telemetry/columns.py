"""Column segments: a batch of events turned into numpy arrays, for vectorised queries.

A segment holds up to SEG_ROWS events of one partition, stored as one LMDB value per
column so a query reads only the columns it needs:
    seg_id(8)                 -> msgpack header {n, tmin, tmax, cols}
    seg_id(8) + b"@t"         -> int64 time_us
    seg_id(8) + b"@y"         -> uint32 type code
    seg_id(8) + b"c:" + name  -> uint32 dictionary codes of strings/ints/bools (0 = missing)
    seg_id(8) + b"f:" + name  -> float64 numbers (NaN = missing)
    seg_id(8) + b"m:" + name  -> uint32 [rows..., codes...]: list members and map keys
Map members are columns of their own, named "map.key" (e.g. "supplies.Childcare").
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import numpy as np

from telemetry.dictionary import Dictionary
from telemetry.events import Event

SEG_ROWS = 65_536
_SEG = struct.Struct(">Q")


class Segment:
    """Columns of n events (in memory)."""

    __slots__ = ("n", "cols")

    def __init__(self, n: int, cols: dict[str, np.ndarray]) -> None:
        self.n = n
        self.cols = cols

    @property
    def tmin(self) -> int:
        return int(self.cols["@t"].min()) if self.n else 0

    @property
    def tmax(self) -> int:
        return int(self.cols["@t"].max()) if self.n else 0


def _code_column(vals: list[Any], n: int, code: Any) -> np.ndarray:
    """uint32 codes of a column of hashable scalars/None (0 for None): one dict lookup per row."""
    uniq = set(vals)
    uniq.discard(None)
    local = {v: code(v) for v in uniq}
    local[None] = 0
    return np.fromiter(map(local.__getitem__, vals), np.uint32, n)


def build_segment(events: Sequence[Event], d: Dictionary) -> Segment:
    """Columns for `events` (codes assigned in `d`; commit `d` before storing the segment).

    Column at a time, not event at a time: one list comprehension per attribute name, then
    a type census decides the column kinds; only lists, maps and mixed-type columns take
    the per-value path.
    """
    n = len(events)
    times = np.fromiter((e.time_us for e in events), np.int64, n)
    code = d.code
    attrs = [e.attrs for e in events]
    types = _code_column([e.type for e in events], n, code)
    names: set[str] = set()
    for a in attrs:
        names.update(a)
    cols: dict[str, np.ndarray] = {"@t": times, "@y": types}
    nan = float("nan")
    for name in names:
        vals = [a.get(name) for a in attrs]
        kinds = set(map(type, vals))
        kinds.discard(type(None))
        if kinds <= {str, bool}:
            # booleans and strings never collide as dict keys (True == 1 only for ints)
            cols["c:" + name] = _code_column(vals, n, code) if bool not in kinds else \
                np.fromiter((code(v) if v is not None else 0 for v in vals), np.uint32, n)
        elif kinds <= {int, float}:
            cols["f:" + name] = np.fromiter((nan if v is None else v for v in vals), np.float64, n)
            if float not in kinds:
                cols["c:" + name] = _code_column(vals, n, code)
        else:
            _mixed_column(name, vals, n, code, cols)
    return Segment(n, cols)


def _mixed_column(name: str, vals: list[Any], n: int, code: Any, cols: dict[str, np.ndarray]) -> None:
    """Lists (members), maps (keys, plus one column per member) and mixed scalar types."""
    c = np.zeros(n, np.uint32)
    f = np.full(n, np.nan)
    mrows: list[int] = []
    mvals: list[Any] = []
    members: dict[str, tuple[list[int], list[Any]]] = {}
    for i, v in enumerate(vals):
        if v is None:
            continue
        tv = type(v)
        if tv is list:
            mrows.extend([i] * len(v))
            mvals.extend(v)
        elif tv is dict:
            mrows.extend([i] * len(v))
            mvals.extend(v)
            for mk, mv in v.items():
                ent = members.get(mk)
                if ent is None:
                    ent = members[mk] = ([], [])
                ent[0].append(i)
                ent[1].append(mv)
        else:
            if tv is not float:
                c[i] = code(v)
            if tv is int or tv is float:
                f[i] = v
    if c.any():
        cols["c:" + name] = c
    if not np.isnan(f).all():
        cols["f:" + name] = f
    if mrows:
        cols["m:" + name] = np.concatenate([np.array(mrows, dtype=np.uint32),
                                            np.fromiter(map(code, mvals), np.uint32, len(mvals))])
    for mk, (rows, mv) in members.items():
        full: list[Any] = [None] * n
        for r, v in zip(rows, mv):
            full[r] = v
        sub = build_scalar_column(full, n, code)
        for kind, arr in sub.items():
            cols[f"{kind}:{name}.{mk}"] = arr


def build_scalar_column(vals: list[Any], n: int, code: Any) -> dict[str, np.ndarray]:
    kinds = set(map(type, vals))
    kinds.discard(type(None))
    out: dict[str, np.ndarray] = {}
    if kinds <= {str}:
        out["c"] = _code_column(vals, n, code)
    elif kinds <= {int, float}:
        out["f"] = np.fromiter((np.nan if v is None else v for v in vals), np.float64, n)
        if float not in kinds:
            out["c"] = _code_column(vals, n, code)
    else:
        c = np.zeros(n, np.uint32)
        f = np.full(n, np.nan)
        for i, v in enumerate(vals):
            if v is None:
                continue
            tv = type(v)
            if tv is not float:
                c[i] = code(v)
            if tv is int or tv is float:
                f[i] = v
        if c.any():
            out["c"] = c
        if not np.isnan(f).all():
            out["f"] = f
    return out


def concat(a: Segment, b: Segment) -> Segment:
    """One segment holding a's rows then b's."""
    n = a.n + b.n
    cols: dict[str, np.ndarray] = {}
    for name in set(a.cols) | set(b.cols):
        x, y = a.cols.get(name), b.cols.get(name)
        kind = name[0]
        if kind == "m":
            parts = []
            for seg, arr, off in ((a, x, 0), (b, y, a.n)):
                if arr is not None:
                    k = len(arr) // 2
                    parts.append((arr[:k] + off, arr[k:]))
            cols[name] = np.concatenate([np.concatenate([p[0] for p in parts]).astype(np.uint32),
                                         np.concatenate([p[1] for p in parts])])
            continue
        if x is None:
            x = np.full(a.n, np.nan) if kind == "f" else np.zeros(a.n, y.dtype)  # type: ignore[union-attr]
        if y is None:
            y = np.full(b.n, np.nan) if kind == "f" else np.zeros(b.n, x.dtype)
        cols[name] = np.concatenate([x, y])
    return Segment(n, cols)


def seg_key(seg_id: int) -> bytes:
    return _SEG.pack(seg_id)


def encode_segment(seg_id: int, seg: Segment) -> list[tuple[bytes, bytes]]:
    """LMDB items for a segment (header first)."""
    k = _SEG.pack(seg_id)
    items = [(k, msgpack.packb({"n": seg.n, "tmin": seg.tmin, "tmax": seg.tmax, "cols": sorted(seg.cols)}))]
    for name, arr in sorted(seg.cols.items()):
        items.append((k + name.encode(), np.ascontiguousarray(arr).tobytes()))
    return items


_DTYPES = {"@": None, "c": np.uint32, "f": np.float64, "m": np.uint32}


def decode_column(name: str, raw: bytes | memoryview) -> np.ndarray:
    if name == "@t":
        return np.frombuffer(raw, np.int64)
    return np.frombuffer(raw, _DTYPES[name[0]] or np.uint32)


def read_header(txn: Any, db: Any, seg_id: int) -> dict[str, Any] | None:
    raw = txn.get(_SEG.pack(seg_id), db=db)
    return msgpack.unpackb(raw) if raw is not None else None


def iter_headers(txn: Any, db: Any) -> Iterable[tuple[int, dict[str, Any]]]:
    """(seg_id, header) of every segment, in id order."""
    cur = txn.cursor(db=db)
    for k, v in cur:
        if len(k) == 8:
            yield _SEG.unpack(k)[0], msgpack.unpackb(v)


def read_columns(txn: Any, db: Any, seg_id: int, names: Iterable[str], copy: bool = True) -> dict[str, np.ndarray]:
    """The named columns of a segment that exist (copied out of the transaction unless copy=False)."""
    k = _SEG.pack(seg_id)
    out = {}
    for name in names:
        raw = txn.get(k + name.encode(), db=db)
        if raw is not None:
            arr = decode_column(name, raw)
            out[name] = arr.copy() if copy else arr
    return out


def read_segment(txn: Any, db: Any, seg_id: int) -> Segment:
    h = read_header(txn, db, seg_id)
    assert h is not None
    return Segment(h["n"], read_columns(txn, db, seg_id, h["cols"]))
