"""URL parameters of the dashboard's JSON/CSV endpoints -> the telemetry query model.

Not an addon: the pure half of addons/dashboard.py. The parameters are the `portico query`
/ `portico export` / `portico funnel` flags without their dashes (`from`, `to`, `type`,
`filter`, `near`, `bbox`, `metric`, `interval`, `tz`, `by`, `order`, `limit`, `page_token`,
`org`, `project`, `supply`, `need`, the preset as `preset`, plus `geo_precision` as in the
gRPC `QueryRequest`) and build the same `telemetry.query.Query` the gRPC API builds for the
same flags (proto/convert.py `query_from_pb` after proxy/cli_analytics.py `build_query`):
same defaults, same preset merging, same validation, errors naming the field. The
dashboard adds no query semantics of its own.

Why a copy of the CLI's time/duration parsing: `addons` may not import `proxy` or `proto`
(tests/test_architecture.py). tests/dashboard/test_query_params.py checks this module
against `proxy.cli_analytics.build_query` + `proto.convert.query_from_pb` for a table of
flag sets, so the two cannot drift apart silently.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from telemetry.errors import QueryError
from telemetry.query import (
    Filter,
    FunnelQuery,
    FunnelStep,
    GeoFilter,
    Query,
    enrolments_query,
    parse_filter,
    users_query,
    validate_funnel,
    validate_query,
)

Params = Mapping[str, Sequence[str]]

INTERVALS = ("auto", "minute", "hour", "day", "week", "month", "none")
ORDERS = ("time", "value_desc", "value_asc")
PRESETS = ("users", "enrolments")
METRIC_RE = re.compile(r"^(count|users|(sum|avg|min|max|p50|p95):[A-Za-z0-9_.-]+)$")
DEFAULT_QUERY_PAGE = 1000
MAX_PAGE = 10_000
MAX_FUNNEL_STEPS = 20
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

QUERY_PARAMS = ("from", "to", "type", "filter", "near", "bbox", "metric", "interval", "tz", "by", "order",
                "limit", "page_token", "preset", "org", "project", "supply", "need", "geo_precision")
FUNNEL_PARAMS = ("from", "to", "step", "within", "by")
REPEATABLE = ("type", "filter", "by", "step")


# ---- times (same forms as `portico query --from/--to/--within`) -----------------------------

def parse_time(text: str, now: datetime, field: str) -> datetime:
    """An aware datetime from RFC 3339, a date, `now`, or a relative `-7d` / `+2h`."""
    s = text.strip()
    if s == "now":
        return now
    m = re.fullmatch(r"([+-])(\d+)([smhdw])", s)
    if m:
        delta = timedelta(seconds=int(m.group(2)) * _UNITS[m.group(3)])
        return now - delta if m.group(1) == "-" else now + delta
    try:
        dt = datetime.fromisoformat(s[:-1] + "+00:00" if s[-1:] in "zZ" and s else s)
    except ValueError:
        raise QueryError(field, f"time {text!r}: expected RFC 3339 (2026-11-01T10:00:00Z), a date (2026-11-01), "
                                "'now' or a relative time like -7d, -12h, -30m") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def parse_duration(text: str, field: str) -> timedelta:
    """`90s`, `30m`, `2h`, `7d`, `1w` or a combination like `1h30m`."""
    parts = re.findall(r"(\d+)([smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip() or all(int(n) == 0 for n, _ in parts):
        raise QueryError(field, f"duration {text!r}: expected a positive duration like 30m, 2h, 7d, 1w, 1h30m")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


# ---- parameter access -----------------------------------------------------------------------

def check_names(params: Params, allowed: Sequence[str]) -> None:
    """Unknown or repeated single-valued parameters are errors (a typo must not be ignored)."""
    for name, values in params.items():
        if name not in allowed:
            raise QueryError(name, f"unknown parameter; allowed: {', '.join(allowed)}")
        if len(values) > 1 and name not in REPEATABLE:
            raise QueryError(name, f"given {len(values)} times; give it once")


def _one(params: Params, name: str, default: str | None = None) -> str | None:
    values = params.get(name) or ()
    value = values[-1] if values else None
    return default if value is None or value == "" else value


def _many(params: Params, name: str) -> list[str]:
    return [v for v in (params.get(name) or ()) if v != ""]


def _floats(text: str, names: Sequence[str], field: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if len(values) != len(names) or not all(math.isfinite(v) for v in values):
        example = "52.52,13.40,25" if len(names) == 3 else "52.3,13.0,52.7,13.8"
        raise QueryError(field, f"{text!r}: expected {','.join(names)} as numbers, e.g. {example}")
    return values


def _int(text: str, field: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise QueryError(field, f"{text!r} is not a whole number {low}..{high}") from None
    if not low <= value <= high:
        raise QueryError(field, f"{value} is out of range {low}..{high}")
    return value


def _choice(value: str | None, allowed: Sequence[str], field: str, default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        raise QueryError(field, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def time_range(params: Params, now: datetime | None = None, default_from: str = "-7d") -> tuple[datetime, datetime]:
    now = now or datetime.now(timezone.utc)
    start = parse_time(_one(params, "from", default_from) or default_from, now, "from")
    end = parse_time(_one(params, "to", "now") or "now", now, "to")
    if start >= end:
        raise QueryError("to", f"{end.isoformat()} is not after from {start.isoformat()}")
    return start, end


def geo_filter(params: Params) -> GeoFilter | None:
    near, bbox = _one(params, "near"), _one(params, "bbox")
    if near and bbox:
        raise QueryError("near", "give near or bbox, not both")
    if near:
        lat, lon, km = _floats(near, ("LAT", "LON", "KM"), "near")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise QueryError("near", f"lat must be in -90..90 and lon in -180..180, got {lat}, {lon}")
        if not km > 0:
            raise QueryError("near", f"km must be > 0, got {km}")
        return GeoFilter(near=(lat, lon, km))
    if bbox:
        s, w, n, e = _floats(bbox, ("S", "W", "N", "E"), "bbox")
        if not -90 <= s <= n <= 90:
            raise QueryError("bbox", f"need -90 <= south <= north <= 90, got south={s} north={n}")
        if not (-180 <= w <= 180 and -180 <= e <= 180):
            raise QueryError("bbox", f"west and east must be in -180..180, got {w}, {e}")
        return GeoFilter(bbox=(s, w, n, e))
    return None


# ---- Query ----------------------------------------------------------------------------------

def query_from_params(params: Params, now: datetime | None = None, default_tz: str = "UTC",
                      default_from: str = "-7d") -> Query:
    """The `telemetry.query.Query` for the dashboard's query parameters.

    Raises:
        QueryError: naming the parameter, the value and what is allowed.
    """
    check_names(params, QUERY_PARAMS)
    start, end = time_range(params, now, default_from)
    preset = _one(params, "preset")
    if preset is not None:
        _choice(preset, PRESETS, "preset", "")
    types = _many(params, "type")
    if preset and types:
        raise QueryError("type", f"the {preset!r} preset chooses the event types itself; leave type empty")
    filters: list[Any] = []
    for expr in _many(params, "filter"):
        filters.append(parse_filter(expr))
    # exact conditions like the CLI's --org/--project/--need/--supply: values may hold commas
    for attr, name in (("org", "org"), ("project", "project"), ("needs", "need")):
        value = _one(params, name)
        if value:
            filters.append(Filter(attr, "eq", value))
    supply = _one(params, "supply")
    if supply:
        filters.append(Filter(f"supplies.{supply}", "exists"))
    metric = _one(params, "metric")
    if metric is not None and not METRIC_RE.match(metric):
        raise QueryError("metric", f"{metric!r}: expected count, users, or sum|avg|min|max|p50|p95:ATTR")
    interval = _choice(_one(params, "interval"), INTERVALS, "interval", "auto")
    tz = _one(params, "tz", default_tz) or default_tz
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise QueryError("tz", f"{tz!r}: not a known IANA time zone (e.g. Europe/Berlin, UTC)") from None
    order = _choice(_one(params, "order"), ORDERS, "order", "time")
    limit_text = _one(params, "limit")
    limit = DEFAULT_QUERY_PAGE if limit_text is None else _int(limit_text, "limit", 1, MAX_PAGE)
    group_by = tuple(_many(params, "by"))
    kwargs: dict[str, Any] = dict(start=start, end=end, geo=geo_filter(params),
                                  interval=None if interval == "none" else interval, tz=tz, order=order,
                                  limit=limit, page_token=_one(params, "page_token"))
    if preset:
        base = {"users": users_query, "enrolments": enrolments_query}[preset](start=start, end=end)
        kwargs.update(types=base.types, group_by=tuple(dict.fromkeys((*base.group_by, *group_by))),
                      metric=metric or base.metric, filters=tuple(base.filters) + tuple(filters))
    else:
        kwargs.update(types=tuple(types), group_by=group_by, metric=metric or "count", filters=tuple(filters))
    precision = _one(params, "geo_precision")
    if precision is not None and precision != "0":
        kwargs["geo_precision"] = _int(precision, "geo_precision", 0, 6)
    return validate_query(Query(**kwargs))


def funnel_from_params(params: Params, now: datetime | None = None, default_from: str = "-7d") -> FunnelQuery:
    """The `FunnelQuery` for `step` (repeatable `TYPE` or `TYPE,FILTER`), `within`, `by`, `from`, `to`."""
    check_names(params, FUNNEL_PARAMS)
    start, end = time_range(params, now, default_from)
    texts = _many(params, "step")
    if not texts:
        raise QueryError("step", "give at least one step (repeat step=TYPE[,FILTER] in order)")
    if len(texts) > MAX_FUNNEL_STEPS:
        raise QueryError("step", f"{len(texts)} steps; at most {MAX_FUNNEL_STEPS}")
    steps = []
    for i, text in enumerate(texts):
        type_, _, expr = text.partition(",")
        if not type_.strip():
            raise QueryError(f"step[{i}]", f"{text!r}: expected TYPE or TYPE,FILTER (e.g. signup,org=acme)")
        steps.append(FunnelStep(type=type_.strip(), filters=(parse_filter(expr.strip()),) if expr.strip() else ()))
    within_text = _one(params, "within")
    if within_text is None:
        raise QueryError("within", "required for a funnel (e.g. 1d)")
    return validate_funnel(FunnelQuery(start=start, end=end, steps=tuple(steps),
                                       within=parse_duration(within_text, "within"), by=_one(params, "by", "user")
                                       or "user"))


# ---- results --------------------------------------------------------------------------------

def format_time(dt: datetime | None) -> str | None:
    """RFC 3339 with `Z` for UTC, as `portico query --json` prints buckets."""
    if dt is None:
        return None
    text = dt.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def query_json(result: Any, q: Query) -> dict[str, Any]:
    """The JSON body of `api/query`: the fields of the gRPC `QueryResponse`, buckets as text."""
    return {
        "rows": [{"bucket": format_time(r.bucket), "keys": {str(k): _plain(v) for k, v in r.keys.items()},
                  "value": _plain(r.value)} for r in result.rows],
        "total_rows": result.total_rows,
        "next_page_token": result.next_page_token,
        "interval": result.interval,
        "approximate": bool(getattr(result, "approximate", False)),
        "tz": q.tz,
        "group_by": list(q.group_by),
        "metric": q.metric,
    }


def funnel_json(result: Any) -> dict[str, Any]:
    return {"steps": [{"step": s.step, "type": s.type, "entered": s.entered, "converted": s.converted,
                       "drop_off": s.drop_off} for s in result.steps]}


class TooManyRows(Exception):
    """A dashboard CSV would exceed `max_rows`; the message tells the user to use `portico export`."""


def query_rows(store: Any, q: Query, max_rows: int) -> Iterator[Any]:
    """Every row of `q`, page after page (as the gRPC Export walks them)."""
    token, seen = q.page_token, 0
    while True:
        result = store.query(dataclasses.replace(q, page_token=token))
        seen += len(result.rows)
        if seen > max_rows:
            raise TooManyRows(f"this view has more than {max_rows} rows; narrow the filters or use "
                              "`portico export` for the full data")
        yield from result.rows
        token = result.next_page_token
        if not token:
            return


def query_csv(store: Any, q: Query, max_rows: int) -> bytes:
    """The CSV of every page of `q`, written by the same `telemetry.export` writer as `portico export`."""
    from telemetry import export

    out = io.StringIO(newline="")
    export.write_query_csv(query_rows(store, q, max_rows), out, group_by=q.group_by, metric=q.metric)
    return out.getvalue().encode("utf-8")


def funnel_csv(store: Any, fq: FunnelQuery) -> bytes:
    from telemetry import export

    out = io.StringIO(newline="")
    export.write_funnel_csv(store.funnel(fq), out)
    return out.getvalue().encode("utf-8")
