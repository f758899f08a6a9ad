"""URL parameters of the dashboard's JSON/CSV endpoints -> the telemetry query model.

Not an addon: the pure half of addons/dashboard.py. The parameters are the `portico query`
/ `portico export` / `portico funnel` flags without their dashes (`from`, `to`, `type`,
`filter`, `near`, `bbox`, `metric`, `interval`, `tz`, `by`, `order`, `limit`, `page_token`,
`org`, `project`, `supply`, `need`, the preset as `preset`, plus `geo_precision` as in the
gRPC `QueryRequest`) and build the same `telemetry.query.Query` the gRPC API builds for the
same flags (proto/convert.py `query_from_pb` after proxy/cli_analytics.py `build_query`):
same defaults, same preset merging, same validation, errors naming the field. The
dashboard adds no query semantics of its own.

The text forms (times, durations, coordinates, metrics, zones, funnel steps) and the preset
merging come from `telemetry.params`, which the CLI and the gRPC API use too (`addons` may
not import `proxy` or `proto`: tests/test_architecture.py). tests/dashboard/test_query_params.py
checks this module against `proxy.cli_analytics.build_query` + `proto.convert.query_from_pb`
for a table of flag sets, so the two cannot drift apart silently.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from telemetry import params as tp
from telemetry.errors import QueryError
from telemetry.params import DEFAULT_QUERY_PAGE, INTERVALS, MAX_FUNNEL_STEPS, MAX_PAGE, ORDERS, PRESETS
from telemetry.query import (
    Filter,
    FunnelQuery,
    FunnelStep,
    GeoFilter,
    Query,
    parse_filter,
    validate_funnel,
    validate_query,
)

Params = Mapping[str, Sequence[str]]

QUERY_PARAMS = ("from", "to", "type", "filter", "near", "bbox", "metric", "interval", "tz", "by", "order",
                "limit", "page_token", "preset", "org", "project", "supply", "need", "geo_precision")
FUNNEL_PARAMS = ("from", "to", "step", "within", "by")
REPEATABLE = ("type", "filter", "by", "step")


# ---- text forms (telemetry.params, as `portico query`) ---------------------------------------

def _parsed(field: str, parse: Callable[..., Any], *args: Any) -> Any:
    """`parse(*args)`, a ValueError becoming a QueryError that names the URL parameter."""
    try:
        return parse(*args)
    except ValueError as e:
        raise QueryError(field, str(e)) from None


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
    start = _parsed("from", tp.parse_time, _one(params, "from", default_from) or default_from, now)
    end = _parsed("to", tp.parse_time, _one(params, "to", "now") or "now", now)
    if start >= end:
        raise QueryError("to", f"{end.isoformat()} is not after from {start.isoformat()}")
    return start, end


def geo_filter(params: Params) -> GeoFilter | None:
    near, bbox = _one(params, "near"), _one(params, "bbox")
    if near and bbox:
        raise QueryError("near", "give near or bbox, not both")
    try:
        if near:
            point = _parsed("near", tp.parse_near, near)
            tp.check_near(*point)
            return GeoFilter(near=point)
        if bbox:
            box = _parsed("bbox", tp.parse_bbox, bbox)
            tp.check_bbox(*box)
            return GeoFilter(bbox=box)
    except tp.GeoRangeError as e:
        raise QueryError(e.area, f"{e.part} {e.message}" if e.part else e.message) from None
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
    if metric is not None:
        _parsed("metric", tp.check_metric, metric)
    interval = _choice(_one(params, "interval"), INTERVALS, "interval", "auto")
    tz = _one(params, "tz", default_tz) or default_tz
    _parsed("tz", tp.check_tz, tz)
    order = _choice(_one(params, "order"), ORDERS, "order", "time")
    limit_text = _one(params, "limit")
    limit = DEFAULT_QUERY_PAGE if limit_text is None else _int(limit_text, "limit", 1, MAX_PAGE)
    group_by = tuple(_many(params, "by"))
    kwargs: dict[str, Any] = dict(start=start, end=end, geo=geo_filter(params),
                                  interval=None if interval == "none" else interval, tz=tz, order=order,
                                  limit=limit, page_token=_one(params, "page_token"))
    if preset:
        kwargs.update(tp.preset_fields(preset, start=start, end=end, group_by=group_by, metric=metric,
                                       filters=filters))
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
        type_, expr = _parsed(f"step[{i}]", tp.split_step, text)
        steps.append(FunnelStep(type=type_, filters=(parse_filter(expr),) if expr else ()))
    within_text = _one(params, "within")
    if within_text is None:
        raise QueryError("within", "required for a funnel (e.g. 1d)")
    return validate_funnel(FunnelQuery(start=start, end=end, steps=tuple(steps),
                                       within=_parsed("within", tp.parse_duration, within_text), by=_one(params, "by", "user")
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
