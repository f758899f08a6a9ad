"""The query model: what callers (gRPC, CLI, dashboard) ask the store, and its validation.

Dataclasses only describe a question; `telemetry.store.Store.query/list_events/funnel`
answer it (execution lives in `telemetry.engine`). `validate_*` turn bad input into
`QueryError(field, message)` naming the field and the allowed values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from telemetry.errors import QueryError
from telemetry.events import Event

INTERVALS = ("minute", "hour", "day", "week", "month", "auto")
ORDERS = ("time", "value_desc", "value_asc")
FILTER_OPS = ("eq", "ne", "in", "contains", "regex", "gt", "ge", "lt", "le", "exists", "missing")
BOOL_OPS = ("and", "or", "not")
METRIC_FUNCS = ("sum", "avg", "min", "max", "p50", "p95")
MAX_LIMIT = 10_000
MAX_GROUP_BY = 4
MAX_BUCKETS = 100_000
# groups x buckets of one answer (each group gets every bucket, zeros included): ~450 bytes a
# row while it is built, so ~110 MB at most; 5 million took 2.3 GB and 40 s in a review
MAX_CELLS = 250_000

USER_TYPES = ("user.joined", "user.left", "user.role_changed")
ENROLMENT_TYPES = ("enrolment.enrolled", "enrolment.unenrolled")


@dataclass(frozen=True)
class Filter:
    """A leaf condition `attr op value` ("type" is the event type; "a.b" a map member)."""

    attr: str
    op: str
    value: Any = None


@dataclass(frozen=True)
class BoolFilter:
    """and / or / not over filters ("not" takes exactly one item)."""

    op: str
    items: tuple[Filter | BoolFilter, ...]


@dataclass(frozen=True)
class GeoFilter:
    """A bounding box (south, west, north, east) or a radius (lat, lon, km), on attrs lat/lon."""

    bbox: tuple[float, float, float, float] | None = None
    near: tuple[float, float, float] | None = None


AnyFilter = Filter | BoolFilter

_FILTER_RE = re.compile(r"^\s*(?P<attr>[^!=<>~?\s][^!=<>~?]*?)\s*(?P<op>!=|>=|<=|=|>|<|~)\s*(?P<value>.*?)\s*$")
_NUM_OPS = {">": "gt", ">=": "ge", "<": "lt", "<=": "le"}


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def parse_filter(expr: str) -> Filter:
    """Parse the compact filter syntax used by the CLI and URLs.

    "org=acme" eq, "org!=acme" ne, "org=acme,globex" in, "status>=500" (> >= < <=),
    "path~^/api/" regex, "user?" exists, "!user" missing, "needs=Legal Help" (list
    member), "supplies.Childcare>0" (map member). Values of = stay text except in
    numeric comparisons.

    Raises:
        QueryError: field "filter" with the expression and the accepted forms.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise QueryError("filter", f"empty filter {expr!r}; use e.g. org=acme, status>=500, path~^/api/, user?, !user")
    text = expr.strip()
    if text.endswith("?") and not re.search(r"[=<>~!]", text[:-1]):
        return Filter(_attr(text[:-1].strip(), expr), "exists")
    if text.startswith("!") and not re.search(r"[=<>~]", text):
        return Filter(_attr(text[1:].strip(), expr), "missing")
    m = _FILTER_RE.match(text)
    if not m:
        raise QueryError("filter", f"cannot parse {expr!r}; use attr=value, attr!=value, attr=a,b, "
                                   "attr>=n, attr~regex, attr? or !attr")
    attr, op, value = _attr(m["attr"], expr), m["op"], m["value"]
    if op in _NUM_OPS:
        n = _number(value)
        if n is None:
            raise QueryError("filter", f"{expr!r}: {op} needs a number, got {value!r}")
        return Filter(attr, _NUM_OPS[op], n)
    if op == "~":
        return validate_filter(Filter(attr, "regex", value), "filter")  # type: ignore[return-value]
    if op == "=" and "," in value:
        return Filter(attr, "in", tuple(v.strip() for v in value.split(",")))
    return Filter(attr, "eq" if op == "=" else "ne", value)


def _attr(name: str, expr: str) -> str:
    if not name or len(name) > 130 or not re.fullmatch(r"[^\s=<>~!?]+(?: [^\s=<>~!?]+)*", name):
        raise QueryError("filter", f"{expr!r}: {name!r} is not an attribute name")
    return name


# ---- queries --------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """An aggregation over [start, end): metric per bucket and group."""

    start: datetime
    end: datetime
    types: tuple[str, ...] = ()
    filters: tuple[AnyFilter, ...] = ()
    geo: GeoFilter | None = None
    metric: str = "count"
    interval: str | None = "auto"
    tz: str = "UTC"
    group_by: tuple[str, ...] = ()
    geo_precision: int = 2
    order: str = "time"
    limit: int = 1000
    page_token: str | None = None


@dataclass(frozen=True)
class Row:
    """One result row: bucket start in the query's zone (None without interval), group keys, value."""

    bucket: datetime | None
    keys: Mapping[str, Any]
    value: float | int


@dataclass(frozen=True)
class QueryResult:
    rows: list[Row]
    total_rows: int
    next_page_token: str | None
    interval: str | None
    approximate: bool = False


@dataclass(frozen=True)
class ListQuery:
    """Raw events in time order over [start, end), keyset-paginated."""

    start: datetime
    end: datetime
    types: tuple[str, ...] = ()
    filters: tuple[AnyFilter, ...] = ()
    geo: GeoFilter | None = None
    limit: int = 100
    page_token: str | None = None
    descending: bool = False


@dataclass(frozen=True)
class EventPage:
    events: list[Event]
    next_page_token: str | None


@dataclass(frozen=True)
class FunnelStep:
    type: str
    filters: tuple[AnyFilter, ...] = ()


@dataclass(frozen=True)
class FunnelQuery:
    """Actors entering step 1 in [start, end) and doing each next step in order within `within`."""

    start: datetime
    end: datetime
    steps: tuple[FunnelStep, ...]
    within: timedelta
    by: str = "user"


@dataclass(frozen=True)
class FunnelStepResult:
    step: int
    type: str
    entered: int
    converted: int
    drop_off: int


@dataclass(frozen=True)
class FunnelResult:
    steps: list[FunnelStepResult]


# ---- presets --------------------------------------------------------------------------

def _location_filters(org: str | None, project: str | None) -> tuple[Filter, ...]:
    out = []
    if org:
        out.append(Filter("org", "eq", org))
    if project:
        out.append(Filter("project", "eq", project))
    return tuple(out)


def users_query(start: datetime, end: datetime, *, org: str | None = None, project: str | None = None,
                geo: GeoFilter | None = None, interval: str | None = "auto", tz: str = "UTC",
                limit: int = 1000) -> Query:
    """Preset (a): user.joined / user.left / user.role_changed counted over time, per type.

    Filter by org and project (attrs `org`, `project`) and optionally by location (`geo`
    on attrs lat/lon). One row per bucket and type, empty buckets filled with 0.
    """
    return Query(start=start, end=end, types=USER_TYPES, filters=_location_filters(org, project), geo=geo,
                 metric="count", interval=interval, tz=tz, group_by=("type",), limit=limit)


def enrolments_query(start: datetime, end: datetime, *, org: str | None = None, project: str | None = None,
                     supply: str | None = None, need: str | None = None, geo: GeoFilter | None = None,
                     interval: str | None = "auto", tz: str = "UTC", limit: int = 1000) -> Query:
    """Preset (b): enrolment.enrolled / enrolment.unenrolled counted over time, per type.

    Filter by org, project, supply name (a key of the map attr `supplies`, e.g.
    {"Childcare": 5}) and need name (a member of the list attr `needs`), and optionally
    by location (`geo`).
    """
    filters = list(_location_filters(org, project))
    if supply:
        filters.append(Filter(f"supplies.{supply}", "exists"))
    if need:
        filters.append(Filter("needs", "eq", need))
    return Query(start=start, end=end, types=ENROLMENT_TYPES, filters=tuple(filters), geo=geo,
                 metric="count", interval=interval, tz=tz, group_by=("type",), limit=limit)


# ---- validation -----------------------------------------------------------------------

def validate_filter(f: Any, where: str) -> AnyFilter:
    """Check one filter tree; regexes are compiled here so errors name the filter."""
    if isinstance(f, Filter):
        if not isinstance(f.attr, str) or not f.attr:
            raise QueryError(where, f"attr must be a non-empty attribute name, got {f.attr!r}")
        if f.op not in FILTER_OPS:
            raise QueryError(where, f"op {f.op!r} is not one of {', '.join(FILTER_OPS)}")
        if f.op == "in" and not isinstance(f.value, (list, tuple, set, frozenset)):
            raise QueryError(where, f"'in' needs a list of values, got {f.value!r}")
        if f.op in ("gt", "ge", "lt", "le") and (isinstance(f.value, bool) or not isinstance(f.value, (int, float))):
            raise QueryError(where, f"{f.op} needs a number, got {f.value!r}")
        if f.op == "regex":
            if not isinstance(f.value, str):
                raise QueryError(where, f"regex needs a pattern string, got {f.value!r}")
            try:
                re.compile(f.value)
            except re.error as e:
                raise QueryError(where, f"bad regex {f.value!r}: {e}") from None
        if f.op == "contains" and f.value is None:
            raise QueryError(where, "contains needs a value")
        return f
    if isinstance(f, BoolFilter):
        if f.op not in BOOL_OPS:
            raise QueryError(where, f"op {f.op!r} is not one of and, or, not")
        if f.op == "not" and len(f.items) != 1:
            raise QueryError(where, f"'not' takes exactly one item, got {len(f.items)}")
        if not f.items:
            raise QueryError(where, f"'{f.op}' needs at least one item")
        for i, item in enumerate(f.items):
            validate_filter(item, f"{where}.items[{i}]")
        return f
    raise QueryError(where, f"expected a Filter or BoolFilter, got {type(f).__name__}")


def validate_geo(g: GeoFilter | None) -> None:
    if g is None:
        return
    if (g.bbox is None) == (g.near is None):
        raise QueryError("geo", "give exactly one of bbox (south, west, north, east) or near (lat, lon, km)")
    if g.bbox is not None:
        if len(g.bbox) != 4:
            raise QueryError("geo.bbox", f"expected (south, west, north, east), got {g.bbox!r}")
        s, w, n, e = g.bbox
        if not (-90 <= s <= n <= 90 and -180 <= w <= 180 and -180 <= e <= 180):
            raise QueryError("geo.bbox", f"{g.bbox!r}: need -90 <= south <= north <= 90 and "
                                         "west, east in -180..180 (west > east crosses the antimeridian)")
    else:
        if len(g.near) != 3:  # type: ignore[arg-type]
            raise QueryError("geo.near", f"expected (lat, lon, km), got {g.near!r}")
        lat, lon, km = g.near  # type: ignore[misc]
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise QueryError("geo.near", f"lat {lat} / lon {lon} out of range")
        if not km > 0:
            raise QueryError("geo.near", f"km must be > 0, got {km}")


def parse_metric(metric: str) -> tuple[str, str | None]:
    """("count", None) | ("users", None) | (func, attr) for func:attr."""
    if metric in ("count", "users"):
        return metric, None
    func, _, attr = (metric or "").partition(":")
    if func not in METRIC_FUNCS or not attr:
        raise QueryError("metric", f"{metric!r} is not a metric: use count, users, or one of "
                                   f"{', '.join(f + ':ATTR' for f in METRIC_FUNCS)}")
    return func, attr


def zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise QueryError("tz", f"{tz!r} is not an IANA time zone (e.g. UTC, Europe/London, "
                               "Asia/Kathmandu)") from None


EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)  # events are keyed by microseconds since 1970
LATEST = datetime(9999, 1, 1, tzinfo=timezone.utc)    # room for a last month's bucket before year 10000


def check_range(start: Any, end: Any) -> None:
    for name, v in (("start", start), ("end", end)):
        if not isinstance(v, datetime) or v.tzinfo is None:
            raise QueryError(name, f"expected an aware datetime, got {v!r}")
        if not EARLIEST <= v <= LATEST:
            raise QueryError(name, f"{v.isoformat()} is outside the times the store can hold "
                                   f"({EARLIEST.date()} to {LATEST.date()})")
    if not start < end:
        raise QueryError("end", f"end {end.isoformat()} must be after start {start.isoformat()}")


def resolve_interval(interval: str | None, start: datetime, end: datetime) -> str | None:
    """The interval to use; "auto": <= 48 h hour, <= 40 d day, <= 52 w week, else month."""
    if interval is None:
        return None
    if interval not in INTERVALS:
        raise QueryError("interval", f"{interval!r} is not one of {', '.join(INTERVALS)} (or none)")
    if interval != "auto":
        return interval
    span = end - start
    if span <= timedelta(hours=48):
        return "hour"
    if span <= timedelta(days=40):
        return "day"
    if span <= timedelta(weeks=52):
        return "week"
    return "month"


def validate_query(q: Query) -> Query:
    """Raise QueryError for the first bad field of `q`; returns q."""
    check_range(q.start, q.end)
    for t in q.types:
        if not isinstance(t, str) or not t:
            raise QueryError("types", f"{t!r} is not an event type")
    for i, f in enumerate(q.filters):
        validate_filter(f, f"filters[{i}]")
    validate_geo(q.geo)
    parse_metric(q.metric)
    resolve_interval(q.interval, q.start, q.end)
    zone(q.tz)
    if len(q.group_by) > MAX_GROUP_BY:
        raise QueryError("group_by", f"{len(q.group_by)} attributes; at most {MAX_GROUP_BY}")
    for g in q.group_by:
        if not isinstance(g, str) or not g:
            raise QueryError("group_by", f"{g!r} is not an attribute name")
    if not isinstance(q.geo_precision, int) or not 0 <= q.geo_precision <= 6:
        raise QueryError("geo_precision", f"{q.geo_precision!r} is not 0..6 decimal digits")
    if q.order not in ORDERS:
        raise QueryError("order", f"{q.order!r} is not one of {', '.join(ORDERS)}")
    if not isinstance(q.limit, int) or not 1 <= q.limit <= MAX_LIMIT:
        raise QueryError("limit", f"{q.limit!r} is not 1..{MAX_LIMIT}")
    return q


def validate_list_query(q: ListQuery) -> ListQuery:
    check_range(q.start, q.end)
    for i, f in enumerate(q.filters):
        validate_filter(f, f"filters[{i}]")
    validate_geo(q.geo)
    if not isinstance(q.limit, int) or not 1 <= q.limit <= MAX_LIMIT:
        raise QueryError("limit", f"{q.limit!r} is not 1..{MAX_LIMIT}")
    return q


def validate_funnel(q: FunnelQuery) -> FunnelQuery:
    check_range(q.start, q.end)
    if not q.steps:
        raise QueryError("steps", "needs at least one step")
    for i, s in enumerate(q.steps):
        if not isinstance(s, FunnelStep) or not isinstance(s.type, str) or not s.type:
            raise QueryError(f"steps[{i}]", "expected FunnelStep(type, filters)")
        for j, f in enumerate(s.filters):
            validate_filter(f, f"steps[{i}].filters[{j}]")
    if not isinstance(q.within, timedelta) or q.within <= timedelta(0):
        raise QueryError("within", f"must be a positive duration, got {q.within!r}")
    if not isinstance(q.by, str) or not q.by:
        raise QueryError("by", f"{q.by!r} is not an attribute name")
    return q


__all__ = [
    "AnyFilter", "BoolFilter", "EventPage", "Filter", "FunnelQuery", "FunnelResult", "FunnelStep",
    "FunnelStepResult", "GeoFilter", "ListQuery", "Query", "QueryResult", "Row", "enrolments_query",
    "parse_filter", "users_query",
]
