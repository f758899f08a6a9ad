"""Column segments straight from stored rows, through Arrow's C++ JSON reader.

The follower's old path decoded every row into Python dicts and coded each attribute value
with dict lookups: ~9 us per event for 14 attributes, which capped the whole store at the
speed of one core of Python. Stored rows are single-line JSON objects {"i", "y", "a"}
(telemetry/events.py), so a batch joined with newlines is NDJSON, and `pyarrow.json`
turns it into typed columns in C++ (~0.9 us per event); dictionary encoding is Arrow's
too. No Python object is built per value.

The result is the same `Segment` that `columns.build_segment_parts` builds (the same column
kinds and values; local codes may be numbered differently, which nothing depends on), and a
property test holds the two equal. Whatever Arrow cannot type the way Portico's schemaless
model does returns None, and the caller takes the Python path for that batch:
- an attribute with mixed kinds in one batch (a string here, a number there);
- rows in the older msgpack form;
- lists of floats (Arrow would turn 1 into 1.0 next to 2.5).
Strings that look like timestamps ("2026-03-01") are inferred as timestamps by Arrow; the
segmenter remembers those attribute paths and reads them as strings from then on (one
re-read of the batch where it first sees one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from telemetry.columns import Segment
from telemetry.dictionary import Dictionary
from telemetry.rollups import ACTOR_ATTRS, utf8_hash_table

MAX_BLOCK = 1 << 30          # larger batches go the Python way (Arrow's buffers use 32-bit offsets)
# A batch bigger than this is parsed in blocks of about this size, on Arrow's thread pool:
# the parse is the follower's largest cost (~1 us per event), and spread over two cores it
# takes half the wall time for the same CPU. Arrow unifies the types it infers per block
# (null -> any, int -> float) as it does within one, and a property test holds the result
# equal to the Python path with tiny blocks.
PARALLEL_BLOCK = 1 << 20
MAX_STRING_PATHS = 1_000     # attribute paths learned as strings; past that, such batches go the Python way
_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
_ITEM_TYPES = (pa.types.is_string, pa.types.is_int64, pa.types.is_boolean)
HASHED = frozenset(ACTOR_ATTRS) | {"session"}   # columns whose value hashes rollups and indexes need


class Unsupported(Exception):
    """This batch needs the Python path (see the module docstring)."""


class JsonSegmenter:
    """Builds segments from JSON rows; remembers which attribute paths must stay strings."""

    def __init__(self, block_bytes: int = PARALLEL_BLOCK) -> None:
        """`block_bytes` must exceed the longest row: Arrow refuses a row that straddles two
        block boundaries (such a batch would take the Python path)."""
        self.block_bytes = block_bytes
        self.string_paths: dict[tuple[str, ...], pa.DataType] = {}
        self._schema: pa.Schema | None = None

    def segment(self, times: np.ndarray, values: list[bytes], d: Dictionary) -> Segment | None:
        """The segment of rows `values` (times from their keys), or None: use the Python path."""
        n = len(values)
        blob = b"\n".join(values)
        if not n or len(blob) >= MAX_BLOCK:
            return None
        try:
            table = self._read(blob)
            if table.num_rows != n:
                return None
            found = _timestamp_paths(table.schema.field("a").type, ())
            if found:                       # learn them, read this batch again with them as strings
                if len(self.string_paths) + len(found) > MAX_STRING_PATHS:
                    return None
                self.string_paths.update(found)
                self._schema = None
                table = self._read(blob)
                if table.num_rows != n or _timestamp_paths(table.schema.field("a").type, ()):
                    return None
            return _build(times, table, n, d)
        except (*_ERRORS, Unsupported, KeyError):
            return None

    def _read(self, blob: bytes) -> pa.Table:
        if len(blob) > 2 * self.block_bytes:
            blocks = max(2, min(len(blob) // self.block_bytes, 4 * pa.cpu_count()))
            opts = pj.ReadOptions(use_threads=True, block_size=len(blob) // blocks + 1)
        else:
            opts = pj.ReadOptions(use_threads=False, block_size=len(blob) + 1)
        return pj.read_json(pa.BufferReader(blob), read_options=opts,
                            parse_options=pj.ParseOptions(explicit_schema=self._explicit(),
                                                          unexpected_field_behavior="infer"))

    def _explicit(self) -> pa.Schema:
        """id and type are always strings (a type like "2026-01" would look like a date), and so
        is every attribute path learned as string."""
        if self._schema is None:
            tops: dict[str, Any] = {}
            for path, dtype in sorted(self.string_paths.items()):
                if len(path) == 1:
                    tops[path[0]] = dtype
                elif not isinstance(tops.get(path[0]), pa.DataType):
                    tops.setdefault(path[0], {})[path[1]] = dtype
            fields = [pa.field(k, v if isinstance(v, pa.DataType) else pa.struct(list(v.items())))
                      for k, v in tops.items()]
            self._schema = pa.schema([("i", pa.string()), ("y", pa.string()), ("a", pa.struct(fields))])
        return self._schema


def _is_time(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t)


def _timestamp_paths(t: pa.DataType, prefix: tuple[str, ...]) -> dict[tuple[str, ...], pa.DataType]:
    """Attribute paths Arrow typed as times, with the string type to read them as instead."""
    out: dict[tuple[str, ...], pa.DataType] = {}
    for f in t:
        if _is_time(f.type):
            out[prefix + (f.name,)] = pa.string()
        elif pa.types.is_list(f.type) and _is_time(f.type.value_type):
            out[prefix + (f.name,)] = pa.list_(pa.string())
        elif pa.types.is_struct(f.type) and not prefix:
            out.update(_timestamp_paths(f.type, (f.name,)))
    return out


def _item_type_ok(t: pa.DataType) -> bool:
    return any(p(t) for p in _ITEM_TYPES)


def _build(times: np.ndarray, table: pa.Table, n: int, d: Dictionary) -> Segment:
    y = table.column("y").combine_chunks()
    if y.null_count:
        raise Unsupported("a row without a type")
    de = pc.dictionary_encode(y)
    tcodes = np.array([d.code(t) for t in de.dictionary.to_pylist()], np.uint32)
    cols: dict[str, np.ndarray] = {"@t": np.asarray(times, np.int64),
                                   "@y": tcodes[de.indices.to_numpy(zero_copy_only=False)]}
    dicts: dict[str, list[Any]] = {}
    hashes: dict[str, np.ndarray] = {}
    a = table.column("a").combine_chunks()
    if a.null_count:
        raise Unsupported("a row without attributes")
    for i, f in enumerate(a.type):
        if f.name in HASHED and pa.types.is_string(f.type) and a.field(i).null_count < n:
            codes, values, dictionary = _codes_dict(a.field(i))
            cols["c:" + f.name], dicts["c:" + f.name] = codes, values
            hashes["c:" + f.name] = utf8_hash_table(*_utf8_parts(dictionary))
            continue
        _add(f.name, a.field(i), n, cols, dicts, top=True)
    return Segment(n, cols, dicts, hashes)


def _utf8_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and UTF-8 bytes of a string array, as numpy views of Arrow's buffers."""
    _, offsets, data = arr.buffers()
    off = np.frombuffer(offsets, np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    return off, (np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8))


def _codes_dict(arr: pa.Array) -> tuple[np.ndarray, list[Any], pa.Array]:
    """Local codes (1..k, 0 = missing), the values they stand for, and those as Arrow."""
    de = pc.dictionary_encode(arr)
    codes = (de.indices.fill_null(-1).to_numpy() + 1).astype(np.uint32)
    # through numpy: Arrow's own to_pylist builds a scalar object per value (12x slower)
    return codes, de.dictionary.to_numpy(zero_copy_only=False).tolist(), de.dictionary


def _codes(arr: pa.Array) -> tuple[np.ndarray, list[Any]]:
    codes, values, _ = _codes_dict(arr)
    return codes, values


def _floats(arr: pa.Array) -> np.ndarray:
    # safe=False: ints beyond 2**53 round, as numpy does on the Python path
    return pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)   # null -> NaN


def _members(rows: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return np.concatenate([rows.astype(np.uint32), codes.astype(np.uint32)])


def _add(name: str, arr: pa.Array, n: int, cols: dict[str, np.ndarray], dicts: dict[str, list[Any]],
         top: bool) -> None:
    """The columns of one attribute, as columns.build_segment_parts makes them."""
    t = arr.type
    if arr.null_count == n or pa.types.is_null(t):
        return                                            # absent from every row of the batch
    if pa.types.is_string(t) or pa.types.is_boolean(t):
        cols["c:" + name], dicts["c:" + name] = _codes(arr)
    elif pa.types.is_int64(t):
        cols["f:" + name] = _floats(arr)
        cols["c:" + name], dicts["c:" + name] = _codes(arr)
    elif pa.types.is_float64(t):
        cols["f:" + name] = _floats(arr)
    elif top and pa.types.is_list(t):
        if not _item_type_ok(t.value_type) and not pa.types.is_null(t.value_type):
            raise Unsupported(f"list items of type {t.value_type} in {name}")
        flat = pc.list_flatten(arr)
        if flat.null_count:
            raise Unsupported(f"null inside the list {name}")
        if len(flat):
            parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
            codes, values = _codes(flat)
            cols["m:" + name], dicts["m:" + name] = _members(parents, codes), values
    elif top and pa.types.is_struct(t):                   # a map: its keys, and a column per key
        children = arr.flatten()                          # children with the map's own nulls applied
        rows_parts, codes_parts, keys = [], [], []
        for j, f in enumerate(t):
            child = children[j]
            present = np.flatnonzero(child.is_valid().to_numpy(zero_copy_only=False))
            if not len(present):
                continue
            keys.append(f.name)
            rows_parts.append(present)
            codes_parts.append(np.full(len(present), len(keys), np.uint32))
            _add(f"{name}.{f.name}", child, n, cols, dicts, top=False)
        if keys:
            rows = np.concatenate(rows_parts)
            order = np.argsort(rows, kind="stable")       # row-major, like the Python path
            cols["m:" + name] = _members(rows[order], np.concatenate(codes_parts)[order])
            dicts["m:" + name] = keys
    else:
        raise Unsupported(f"attribute {name} of Arrow type {t}")
