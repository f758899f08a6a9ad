"""Conversion between `portico.v1` messages and the telemetry dataclasses.

Request messages become `telemetry.query` objects here, with proto3 defaults (empty string,
0) turned into the telemetry defaults and out-of-range values refused with an
`InvalidRequest` that names the field and what is allowed. Results go the other way.
No I/O and no gRPC here: the servicer (`proto/service.py`) maps errors to status codes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from proto.portico.v1 import analytics_pb2 as pb
from telemetry import params
from telemetry.params import DEFAULT_QUERY_PAGE, INTERVALS, MAX_FUNNEL_STEPS, ORDERS, PRESETS

MAX_PAGE_SIZE = params.MAX_PAGE
DEFAULT_LIST_PAGE = 100
BOOL_OPS = ("and", "or", "not")


class InvalidRequest(ValueError):
    """A request field is missing or out of range; str() names the field and what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# ---- values -----------------------------------------------------------------------------

def value_to_py(value: pb.Value) -> Any:
    """The Python value of a `Value` (None when no kind is set)."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "list_value":
        return [value_to_py(v) for v in value.list_value.values]
    if kind == "map_value":
        return {k: value_to_py(v) for k, v in value.map_value.fields.items()}
    return getattr(value, kind)


def set_value(out: pb.Value, value: Any) -> None:
    """Fill `out` from a Python scalar / list / dict (None leaves it empty).

    Raises:
        TypeError: a value of a type events can't hold.
    """
    # bool before int: bool is a subclass of int
    if value is None:
        return
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, (list, tuple)):
        lv = out.list_value
        lv.SetInParent()
        for item in value:
            set_value(lv.values.add(), item)
    elif isinstance(value, Mapping):
        mv = out.map_value
        mv.SetInParent()
        for k, item in value.items():
            set_value(mv.fields[str(k)], item)
    else:
        raise TypeError(f"cannot send a {type(value).__name__} value ({value!r})")


def attrs_to_py(attrs: Mapping[str, pb.Value]) -> dict[str, Any]:
    return {k: value_to_py(v) for k, v in attrs.items()}


# ---- times ------------------------------------------------------------------------------

def timestamp_to_datetime(ts: Any) -> datetime:
    """An aware UTC datetime with microsecond precision from a Timestamp."""
    return datetime.fromtimestamp(ts.seconds, tz=timezone.utc) + timedelta(microseconds=ts.nanos // 1000)


def set_timestamp_us(out: Any, time_us: int) -> None:
    out.seconds, rem = divmod(time_us, 1_000_000)
    out.nanos = rem * 1000


def set_timestamp(out: Any, dt: datetime) -> None:
    """Fill a Timestamp from an aware datetime (naive ones are taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    set_timestamp_us(out, (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _time_range(msg: Any) -> tuple[datetime, datetime]:
    for name in ("start", "end"):
        if not msg.HasField(name):
            raise InvalidRequest(name, "required (a timestamp)")
    times = []
    for name in ("start", "end"):
        ts = getattr(msg, name)
        try:
            times.append(timestamp_to_datetime(ts))
        except (OverflowError, ValueError, OSError):
            raise InvalidRequest(name, f"{ts.seconds} s is outside years 1 to 9999") from None
    start, end = times
    if start >= end:
        raise InvalidRequest("end", f"{end.isoformat()} is not after start {start.isoformat()}")
    return start, end


def _page_size(value: int, default: int, field: str = "page_size") -> int:
    if value == 0:
        return default
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise InvalidRequest(field, f"{value} is out of range 1..{MAX_PAGE_SIZE}")
    return value


def _choice(value: str, allowed: Sequence[str], field: str, default: str) -> str:
    if not value:
        return default
    if value not in allowed:
        raise InvalidRequest(field, f"{value!r} is not one of {', '.join(allowed)}")
    return value


# ---- events -----------------------------------------------------------------------------

def event_from_pb(msg: pb.Event) -> Any:
    """A validated `telemetry.events.Event`.

    Raises:
        telemetry.errors.EventError: the event is invalid (names the field).
    """
    from telemetry.events import make_event

    attrs = {k: value_to_py(v) for k, v in msg.attrs.items()}
    if msg.HasField("time"):
        ts = msg.time
        return make_event(msg.type, attrs, id=msg.id or None, time_us=ts.seconds * 1_000_000 + ts.nanos // 1000)
    return make_event(msg.type, attrs, id=msg.id or None)


def batch_result(good: list[Any], errors: list[tuple[int, str]], total: int
                 ) -> tuple[list[Any], list[int] | None, list[tuple[int, str]]]:
    """(accepted events, their indexes in the batch or None when all were accepted, errors)."""
    if not errors:
        return good, None, errors
    bad = {i for i, _ in errors}
    return good, [i for i in range(total) if i not in bad], errors


def events_from_pb(msgs: Sequence[pb.Event]) -> tuple[list[Any], list[int] | None, list[tuple[int, str]]]:
    """Validated Events of typed messages: (events, their indexes or None when all, errors).

    Errors are (index, message naming the field); the good events are kept.
    """
    from telemetry.errors import EventError

    good: list[Any] = []
    errors: list[tuple[int, str]] = []
    for i, msg in enumerate(msgs):
        try:
            good.append(event_from_pb(msg))
        except (EventError, TypeError, ValueError, OverflowError) as e:
            errors.append((i, str(e)))
    return batch_result(good, errors, len(msgs))


def event_to_pb(event: Any, out: pb.Event) -> pb.Event:
    out.id = event.id
    set_timestamp_us(out.time, event.time_us)
    out.type = event.type
    for k, v in event.attrs.items():
        set_value(out.attrs[k], v)
    return out


# ---- filters ----------------------------------------------------------------------------

def filter_from_pb(msg: pb.Filter, field: str) -> Any:
    """A `telemetry.query.Filter` / `BoolFilter` from a `Filter` message."""
    from telemetry.query import BoolFilter, Filter, parse_filter

    kind = msg.WhichOneof("kind")
    if kind == "expr":
        return parse_filter(msg.expr)
    if kind == "condition":
        c = msg.condition
        if not c.attr:
            raise InvalidRequest(f"{field}.condition.attr", "required")
        if not c.op:
            raise InvalidRequest(f"{field}.condition.op", "required")
        return Filter(attr=c.attr, op=c.op, value=value_to_py(c.value) if c.HasField("value") else None)
    if kind == "bool":
        op = _choice(msg.bool.op, BOOL_OPS, f"{field}.bool.op", "")
        if not op:
            raise InvalidRequest(f"{field}.bool.op", f"required, one of {', '.join(BOOL_OPS)}")
        items = tuple(filter_from_pb(item, f"{field}.bool.items[{i}]") for i, item in enumerate(msg.bool.items))
        if not items:
            raise InvalidRequest(f"{field}.bool.items", "needs at least one filter")
        return BoolFilter(op=op, items=items)
    raise InvalidRequest(field, "empty filter: set expr, condition or bool")


def filters_from_pb(msgs: Iterable[pb.Filter], field: str = "filters") -> tuple[Any, ...]:
    return tuple(filter_from_pb(m, f"{field}[{i}]") for i, m in enumerate(msgs))


def geo_from_pb(msg: Any, has: bool) -> Any:
    from telemetry.query import GeoFilter

    if not has:
        return None
    kind = msg.WhichOneof("area")
    try:
        if kind == "bbox":
            b = msg.bbox
            params.check_bbox(b.south, b.west, b.north, b.east)
            return GeoFilter(bbox=(b.south, b.west, b.north, b.east))
        if kind == "near":
            n = msg.near
            params.check_near(n.lat, n.lon, n.km)
            return GeoFilter(near=(n.lat, n.lon, n.km))
    except params.GeoRangeError as e:
        raise InvalidRequest(f"geo.{e.area}{'.' + e.part if e.part else ''}", e.message) from None
    raise InvalidRequest("geo", "empty: set bbox or near")


# ---- Query ------------------------------------------------------------------------------

def query_from_pb(msg: pb.QueryRequest) -> Any:
    """A `telemetry.query.Query` for a QueryRequest (presets applied)."""
    from telemetry import query as tq

    start, end = _time_range(msg)
    interval = _choice(msg.interval, INTERVALS, "interval", "auto")
    order = _choice(msg.order, ORDERS, "order", "time")
    preset = _choice(msg.preset, PRESETS, "preset", "")
    kwargs: dict[str, Any] = dict(
        start=start,
        end=end,
        filters=filters_from_pb(msg.filters),
        geo=geo_from_pb(msg.geo, msg.HasField("geo")),
        interval=None if interval == "none" else interval,
        tz=msg.tz or "UTC",
        limit=_page_size(msg.page_size, DEFAULT_QUERY_PAGE),
        page_token=msg.page_token or None,
    )
    if preset:
        if msg.types:
            raise InvalidRequest("types", f"the {preset!r} preset chooses the event types itself; leave types empty")
        # group_by adds to the preset's grouping ("type"): e.g. by type and org
        kwargs.update(params.preset_fields(preset, start=start, end=end, group_by=msg.group_by,
                                           metric=msg.metric, filters=kwargs["filters"]))
    else:
        kwargs.update(types=tuple(msg.types), group_by=tuple(msg.group_by), metric=msg.metric or "count")
    if msg.geo_precision:
        if not 0 <= msg.geo_precision <= 6:
            raise InvalidRequest("geo_precision", f"{msg.geo_precision} is out of range 0..6")
        kwargs["geo_precision"] = msg.geo_precision
    kwargs["order"] = order
    return tq.Query(**kwargs)


def _set_bucket(ts: Any, dt: datetime) -> None:
    # floor(timestamp()) is the exact second: a microsecond fraction (<= 0.999999) can't round
    # up at today's magnitudes; this is ~3x faster than datetime arithmetic per row
    ts.seconds = math.floor(dt.timestamp())
    ts.nanos = dt.microsecond * 1000


def row_to_pb(row: Any, out: pb.Row) -> pb.Row:
    if row.bucket is not None:
        _set_bucket(out.bucket, row.bucket)
    for k, v in row.keys.items():
        set_value(out.keys[str(k)], v)
    value = row.value
    if type(value) is int:
        out.int_value = value
    else:
        out.double_value = float(value)
    return out


def rows_to_pb(rows: Iterable[Any], out: Any) -> None:
    """Append result rows to a repeated Row field (the hot loop of Query responses)."""
    add = out.add
    for row in rows:
        value = row.value
        r = add(int_value=value) if type(value) is int else add(double_value=float(value))
        if row.bucket is not None:
            _set_bucket(r.bucket, row.bucket)
        if row.keys:
            for k, v in row.keys.items():
                set_value(r.keys[str(k)], v)


def query_result_to_pb(result: Any, q: Any) -> pb.QueryResponse:
    out = pb.QueryResponse(
        next_page_token=result.next_page_token or "",
        total_rows=result.total_rows,
        interval=result.interval or "",
        approximate=bool(getattr(result, "approximate", False)),
        tz=q.tz,
        group_by=list(q.group_by),
        metric=q.metric,
    )
    rows_to_pb(result.rows, out.rows)
    return out


# ---- ListEvents -------------------------------------------------------------------------

def list_query_from_pb(msg: pb.ListEventsRequest) -> Any:
    from telemetry.query import ListQuery

    start, end = _time_range(msg)
    return ListQuery(
        start=start,
        end=end,
        types=tuple(msg.types),
        filters=filters_from_pb(msg.filters),
        geo=geo_from_pb(msg.geo, msg.HasField("geo")),
        limit=_page_size(msg.page_size, DEFAULT_LIST_PAGE),
        page_token=msg.page_token or None,
        descending=msg.descending,
    )


def event_page_to_pb(page: Any) -> pb.ListEventsResponse:
    out = pb.ListEventsResponse(next_page_token=page.next_page_token or "")
    for event in page.events:
        event_to_pb(event, out.events.add())
    return out


# ---- Funnel -----------------------------------------------------------------------------

def funnel_query_from_pb(msg: pb.FunnelRequest) -> Any:
    from telemetry.query import FunnelQuery, FunnelStep

    start, end = _time_range(msg)
    if not msg.steps:
        raise InvalidRequest("steps", "needs at least one step")
    if len(msg.steps) > MAX_FUNNEL_STEPS:
        raise InvalidRequest("steps", f"{len(msg.steps)} steps; at most {MAX_FUNNEL_STEPS}")
    steps = []
    for i, step in enumerate(msg.steps):
        if not step.type:
            raise InvalidRequest(f"steps[{i}].type", "required (an event type)")
        steps.append(FunnelStep(type=step.type, filters=filters_from_pb(step.filters, f"steps[{i}].filters")))
    if not msg.HasField("within"):
        raise InvalidRequest("within", "required (a duration > 0)")
    try:
        within = msg.within.ToTimedelta()
    except OverflowError:
        raise InvalidRequest("within", f"{msg.within.seconds} s is longer than any time range") from None
    if within <= timedelta(0):
        raise InvalidRequest("within", f"must be > 0, got {within}")
    return FunnelQuery(start=start, end=end, steps=tuple(steps), within=within, by=msg.by or "user")


def funnel_result_to_pb(result: Any) -> pb.FunnelResponse:
    out = pb.FunnelResponse()
    for s in result.steps:
        out.steps.add(step=s.step, type=s.type, entered=s.entered, converted=s.converted, drop_off=s.drop_off)
    return out


# ---- Stats ------------------------------------------------------------------------------

def stats_to_pb(stats: Any) -> pb.StatsResponse:
    """Every public field of the store's stats object (dataclass or mapping) as a Value."""
    import dataclasses

    if dataclasses.is_dataclass(stats):
        items = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    elif isinstance(stats, Mapping):
        items = dict(stats)
    else:
        items = {k: v for k, v in vars(stats).items() if not k.startswith("_")}
    out = pb.StatsResponse()
    for k, v in items.items():
        set_value(out.values[k], _plain(v))
    return out


def _plain(v: Any) -> Any:
    """Stats values that protobuf can carry: paths, datetimes and durations as text."""
    import dataclasses

    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, timedelta):
        return v.total_seconds()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)
