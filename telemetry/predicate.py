"""Filters evaluated on one decoded event (raw listing, funnels, and the reference for tests).

Semantics shared with the columnar engine (telemetry.engine):
- an attribute's values: a scalar -> [it]; a list -> its members; a map -> its keys;
  "map.key" -> [the member]; "type" -> [event type]; absent -> [].
- eq / in: any value equal to the operand; text that looks like a number or true/false also
  matches that number/boolean ("status=500" matches 500), and numbers match their text.
- ne: not eq (events without the attribute match). contains / regex: any string value.
- gt ge lt le: numeric scalar values (not list members, not booleans).
- exists / missing: at least one value / none.
- geo: attrs lat / lon (numbers); bbox west > east crosses the antimeridian.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from telemetry.events import Event
from telemetry.query import AnyFilter, BoolFilter, Filter, GeoFilter

EARTH_KM = 6371.0088


def values_of(attrs: Mapping[str, Any], etype: str, attr: str) -> list[Any]:
    if attr == "type":
        return [etype]
    v = attrs.get(attr)
    if v is None:
        if "." in attr:
            m, _, k = attr.partition(".")
            mv = attrs.get(m)
            if type(mv) is dict and k in mv:
                return [mv[k]]
        return []
    tv = type(v)
    if tv is list:
        return v
    if tv is dict:
        return list(v)
    return [v]


def scalar_numbers(attrs: Mapping[str, Any], attr: str) -> list[float]:
    v = attrs.get(attr)
    if v is None and "." in attr:
        m, _, k = attr.partition(".")
        mv = attrs.get(m)
        v = mv.get(k) if type(mv) is dict else None
    if type(v) in (int, float):
        return [float(v)]
    return []


def forms(value: Any) -> set[tuple[str, Any]]:
    """Typed forms an operand matches: ("s", text), ("n", number), ("b", bool)."""
    out: set[tuple[str, Any]] = set()
    t = type(value)
    if t is bool:
        out.add(("b", value))
        out.add(("s", "true" if value else "false"))
    elif t in (int, float):
        out.add(("n", float(value)))
        out.add(("s", str(value)))
    elif t is str:
        out.add(("s", value))
        low = value.strip().lower()
        if low in ("true", "false"):
            out.add(("b", low == "true"))
        try:
            x = float(value)
            if math.isfinite(x):
                out.add(("n", x))
        except ValueError:
            pass
    else:
        out.add(("s", str(value)))
    return out


def norm(v: Any) -> tuple[str, Any]:
    t = type(v)
    if t is bool:
        return ("b", v)
    if t is int or t is float:
        return ("n", float(v))
    return ("s", v)


def compile_filter(f: AnyFilter) -> Callable[[Event], bool]:
    """A function event -> bool for a (validated) filter tree."""
    if isinstance(f, BoolFilter):
        parts = [compile_filter(x) for x in f.items]
        if f.op == "and":
            return lambda e: all(p(e) for p in parts)
        if f.op == "or":
            return lambda e: any(p(e) for p in parts)
        p0 = parts[0]
        return lambda e: not p0(e)
    attr, op, value = f.attr, f.op, f.value
    if op in ("eq", "ne", "in"):
        fs = set()
        for v in (value if op == "in" else [value]):
            fs |= forms(v)
        if op == "ne":
            return lambda e: not any(norm(x) in fs for x in values_of(e.attrs, e.type, attr))
        return lambda e: any(norm(x) in fs for x in values_of(e.attrs, e.type, attr))
    if op == "contains":
        sub = str(value)
        return lambda e: any(type(x) is str and sub in x for x in values_of(e.attrs, e.type, attr))
    if op == "regex":
        rx = re.compile(value)
        return lambda e: any(type(x) is str and rx.search(x) is not None for x in values_of(e.attrs, e.type, attr))
    if op in ("gt", "ge", "lt", "le"):
        x0 = float(value)
        cmp = {"gt": lambda x: x > x0, "ge": lambda x: x >= x0, "lt": lambda x: x < x0, "le": lambda x: x <= x0}[op]
        return lambda e: any(cmp(x) for x in scalar_numbers(e.attrs, attr))
    if op == "exists":
        return lambda e: bool(values_of(e.attrs, e.type, attr))
    return lambda e: not values_of(e.attrs, e.type, attr)


def haversine_km(lat1: Any, lon1: Any, lat2: float, lon2: float) -> Any:
    """Great-circle distance (works on floats and numpy arrays)."""
    import numpy as np

    p1, p2 = np.radians(lat1), math.radians(lat2)
    dphi = p2 - p1
    dl = math.radians(lon2) - np.radians(lon1)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * math.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.minimum(1.0, a)))


def compile_geo(g: GeoFilter) -> Callable[[Event], bool]:
    def coords(e: Event) -> tuple[float, float] | None:
        lat, lon = e.attrs.get("lat"), e.attrs.get("lon")
        if type(lat) in (int, float) and type(lon) in (int, float):
            return float(lat), float(lon)
        return None

    if g.bbox is not None:
        s, w, n, east = g.bbox

        def in_bbox(e: Event) -> bool:
            c = coords(e)
            if c is None:
                return False
            lat, lon = c
            return s <= lat <= n and ((w <= lon <= east) if w <= east else (lon >= w or lon <= east))
        return in_bbox
    lat0, lon0, km = g.near  # type: ignore[misc]

    def near(e: Event) -> bool:
        c = coords(e)
        return c is not None and float(haversine_km(c[0], c[1], lat0, lon0)) <= km
    return near


def compile_all(types: tuple[str, ...], filters: tuple[AnyFilter, ...], geo: GeoFilter | None) -> Callable[[Event], bool]:
    tset = set(types)
    preds = [compile_filter(f) for f in filters]
    if geo is not None:
        preds.append(compile_geo(geo))

    def match(e: Event) -> bool:
        if tset and e.type not in tset:
            return False
        for p in preds:
            if not p(e):
                return False
        return True
    return match


__all__ = ["Filter", "compile_all", "compile_filter", "compile_geo", "forms", "haversine_km", "values_of"]
