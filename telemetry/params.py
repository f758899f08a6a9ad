"""The text forms of analytics query parameters, parsed once for every front end.

`portico query` (proxy/cli_analytics.py), the dashboard's URL parameters
(addons/dashboard_query.py) and the gRPC API (proto/convert.py) accept the same times,
durations, coordinates, metrics and presets. The parsing lives here, in the plain
library all three may import (`addons` may not import `proxy` or `proto`), so the three
cannot drift apart.

Every parser raises `ValueError` with a message that shows the offending text and the
accepted forms but no field name: each caller knows its own name for the field (`--near`,
`near`, `geo.near`) and puts it in front.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from telemetry.query import enrolments_query, users_query

INTERVALS = ("auto", "minute", "hour", "day", "week", "month", "none")
ORDERS = ("time", "value_desc", "value_asc")
PRESETS = ("users", "enrolments")
METRIC_RE = re.compile(r"^(count|users|(sum|avg|min|max|p50|p95):[A-Za-z0-9_.-]+)$")
DEFAULT_QUERY_PAGE = 1000
MAX_PAGE = 10_000
MAX_FUNNEL_STEPS = 20
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# ---- times ----------------------------------------------------------------------------------

def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An aware datetime from RFC 3339, a date, `now`, or a relative `-7d` / `+2h`.

    Args:
        now: what `now` and relative times count from (default: the current UTC time).

    Raises:
        ValueError: with a message showing the accepted forms.
    """
    now = now or datetime.now(timezone.utc)
    s = text.strip()
    if s == "now":
        return now
    m = re.fullmatch(r"([+-])(\d+)([smhdw])", s)
    if m:
        try:
            delta = timedelta(seconds=int(m.group(2)) * _UNITS[m.group(3)])
            return now - delta if m.group(1) == "-" else now + delta
        except OverflowError:
            raise ValueError(f"time {text!r}: out of range (years 1 to 9999)") from None
    try:
        dt = datetime.fromisoformat(s[:-1] + "+00:00" if s[-1:] in "zZ" and s else s)
    except ValueError:
        raise ValueError(f"time {text!r}: expected RFC 3339 (2026-11-01T10:00:00Z), a date (2026-11-01), "
                         "'now' or a relative time like -7d, -12h, -30m") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `2h`, `7d`, `1w` (or a combination like `1h30m`).

    Raises:
        ValueError: not a positive duration.
    """
    parts = re.findall(r"(\d+)([smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip() or all(int(n) == 0 for n, _ in parts):
        raise ValueError(f"duration {text!r}: expected a positive duration like 30m, 2h, 7d, 1w, 1h30m")
    try:
        return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))
    except OverflowError:
        raise ValueError(f"duration {text!r}: too long (at most 999999999 days)") from None


# ---- geography ------------------------------------------------------------------------------

class GeoRangeError(ValueError):
    """A coordinate is out of range.

    `area` is "near" or "bbox"; `part` is "km" when only the radius is wrong, else "", so
    each caller can name the field its own way (`near`, `geo.near.km`).
    """

    def __init__(self, area: str, part: str, message: str) -> None:
        super().__init__(f"{area}{'.' + part if part else ''}: {message}")
        self.area = area
        self.part = part
        self.message = message


def parse_floats(text: str, names: Sequence[str]) -> list[float]:
    """`len(names)` finite numbers separated by commas (`52.52,13.40,25`).

    Raises:
        ValueError: `'<text>': expected LAT,LON,KM as numbers, e.g. ...`.
    """
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if len(values) != len(names) or not all(math.isfinite(v) for v in values):
        example = "52.52,13.40,25" if len(names) == 3 else "52.3,13.0,52.7,13.8"
        raise ValueError(f"{text!r}: expected {','.join(names)} as numbers, e.g. {example}")
    return values


def parse_near(text: str) -> tuple[float, float, float]:
    """`LAT,LON,KM` as numbers (ranges are checked by `check_near`)."""
    lat, lon, km = parse_floats(text, ("LAT", "LON", "KM"))
    return lat, lon, km


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """`S,W,N,E` as numbers (ranges are checked by `check_bbox`)."""
    s, w, n, e = parse_floats(text, ("S", "W", "N", "E"))
    return s, w, n, e


def check_near(lat: float, lon: float, km: float) -> None:
    """Raises GeoRangeError unless lat is in -90..90, lon in -180..180 and km > 0."""
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise GeoRangeError("near", "", f"lat must be in -90..90 and lon in -180..180, got {lat}, {lon}")
    if not km > 0:
        raise GeoRangeError("near", "km", f"must be > 0, got {km}")


def check_bbox(south: float, west: float, north: float, east: float) -> None:
    """Raises GeoRangeError unless -90 <= south <= north <= 90 and west, east are in -180..180."""
    if not -90 <= south <= north <= 90:
        raise GeoRangeError("bbox", "", f"need -90 <= south <= north <= 90, got south={south} north={north}")
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise GeoRangeError("bbox", "", f"west and east must be in -180..180, got {west}, {east}")


# ---- aggregation ----------------------------------------------------------------------------

def check_metric(metric: str) -> None:
    """Raises ValueError unless `metric` is count, users or FUNC:ATTR."""
    if not METRIC_RE.match(metric):
        raise ValueError(f"{metric!r}: expected count, users, or sum|avg|min|max|p50|p95:ATTR")


def check_tz(tz: str) -> None:
    """Raises ValueError unless `tz` is an IANA zone this system knows."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{tz!r}: not a known IANA time zone (e.g. Europe/Berlin, UTC)") from None


def split_step(text: str) -> tuple[str, str]:
    """A funnel step `TYPE` or `TYPE,FILTER` -> (type, filter expression or "").

    The filter may itself contain commas (`signup,org=a,b`): only the first comma splits.

    Raises:
        ValueError: no type before the comma.
    """
    type_, _, expr = text.partition(",")
    if not type_.strip():
        raise ValueError(f"{text!r}: expected TYPE or TYPE,FILTER (e.g. signup,org=acme)")
    return type_.strip(), expr.strip()


# ---- presets --------------------------------------------------------------------------------

def preset_query(name: str, *, start: datetime, end: datetime) -> Any:
    """The telemetry store's preset query `name` ("users" or "enrolments")."""
    factory = {"users": users_query, "enrolments": enrolments_query}[name]
    return factory(start=start, end=end)


def preset_fields(name: str, *, start: datetime, end: datetime, group_by: Sequence[str], metric: str | None,
                  filters: Sequence[Any]) -> dict[str, Any]:
    """The `Query` fields `types`, `group_by`, `metric`, `filters` of preset `name` merged with the caller's.

    The preset chooses the event types; the caller's grouping adds to the preset's (e.g. by
    type and org), its metric replaces the preset's, its filters narrow the preset's.
    """
    base = preset_query(name, start=start, end=end)
    return dict(types=base.types, group_by=tuple(dict.fromkeys((*base.group_by, *group_by))),
                metric=metric or base.metric, filters=tuple(base.filters) + tuple(filters))
