"""Time buckets in an IANA zone, as UTC microsecond boundaries.

Buckets start at local minute / hour / midnight / Monday / first of month in the query's
zone; across a DST change a local day is 23 or 25 hours long. Every real UTC offset is a
multiple of 15 minutes, so hour-or-longer boundaries fall on the rollups' 15-minute UTC slots.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np

from telemetry.errors import QueryError
from telemetry.query import MAX_BUCKETS

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_us(dt: datetime) -> int:
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def from_us(us: int, tz: ZoneInfo) -> datetime:
    return (_EPOCH + timedelta(microseconds=us)).astimezone(tz)


def _floor_local(local: datetime, interval: str) -> datetime:
    if interval == "minute":
        return local.replace(second=0, microsecond=0)
    if interval == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "day":
        return day
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_local(local: datetime, interval: str) -> datetime:
    if interval == "day":
        return local + timedelta(days=1)
    if interval == "week":
        return local + timedelta(days=7)
    if interval == "month":
        return local.replace(year=local.year + 1, month=1) if local.month == 12 else local.replace(month=local.month + 1)
    raise AssertionError(interval)


def _localize(naive: datetime, tz: ZoneInfo) -> int:
    """UTC µs of a local wall time (fold=0: first occurrence; a skipped time maps past the gap)."""
    return to_us(naive.replace(tzinfo=tz))


def boundaries(start: datetime, end: datetime, interval: str, tz: ZoneInfo) -> np.ndarray:
    """Sorted UTC µs boundaries b0 <= start < b1 < ... < bn >= end; bucket i is [b_i, b_i+1)."""
    s_us, e_us = to_us(start), to_us(end)
    out: list[int] = []
    if interval in ("minute", "hour"):
        step = 60_000_000 if interval == "minute" else 3_600_000_000
        if (e_us - s_us) // step > MAX_BUCKETS:
            raise QueryError("interval", f"{interval} buckets over this range exceed {MAX_BUCKETS}; use a longer interval")
        # Local minute/hour starts are a fixed UTC phase apart except where the offset
        # changes; compute the phase from the local floor at each step.
        cur = to_us(_floor_local(from_us(s_us, tz), interval))
        while True:
            out.append(cur)
            if cur >= e_us:
                break
            nxt = cur + step
            floored = to_us(_floor_local(from_us(nxt, tz), interval))
            cur = floored if floored > cur else nxt
    else:
        local = _floor_local(from_us(s_us, tz).replace(tzinfo=None), interval)
        cur = _localize(local, tz)
        while True:
            out.append(cur)
            if cur >= e_us or len(out) > MAX_BUCKETS:
                break
            local = _next_local(local, interval)
            cur = _localize(local, tz)
    if len(out) < 2:
        out.append(out[-1] + 1)
    return np.array(out, dtype=np.int64)
