"""Streaming CSV (RFC 4180, UTF-8) of query rows, raw events and funnels.

Only formats: callers pass iterators (e.g. every page of a query, chained) and rows are
written one at a time, so memory stays constant however many rows there are. Cells that a
spreadsheet would run as a formula (starting with = + - @ tab or CR) are neutralised with a
leading apostrophe, as OWASP recommends; numbers are written as numbers.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TextIO

from telemetry.events import Event, format_time_us
from telemetry.query import FunnelResult, Row

_DANGEROUS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """The text of one cell, with formula injection neutralised.

    None -> "", booleans -> true/false, numbers as they are (a negative number stays a
    number), datetimes in ISO 8601, lists/maps as JSON; text starting with = + - @ tab
    or CR gets a leading apostrophe.
    """
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    if text.startswith(_DANGEROUS):
        return "'" + text
    return text


def _writer(out: TextIO) -> Any:
    return csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)


def write_query_csv(result_rows: Iterable[Row], out: TextIO, *, group_by: Sequence[str], metric: str,
                    with_bucket: bool = True) -> int:
    """Header (bucket, group-by names, metric) then one line per row; returns rows written.

    A "geo_cell" group-by becomes two columns, lat and lon.
    """
    w = _writer(out)
    names = []
    for g in group_by:
        names.extend(["lat", "lon"] if g == "geo_cell" else [g])
    w.writerow([csv_cell(h) for h in (["bucket"] if with_bucket else []) + names + [metric]])
    n = 0
    for row in result_rows:
        cells = [csv_cell(row.bucket)] if with_bucket else []
        cells.extend(csv_cell(row.keys.get(k)) for k in names)
        cells.append(csv_cell(row.value))
        w.writerow(cells)
        n += 1
    return n


def write_events_csv(events: Iterable[Event], out: TextIO, *, attrs: Sequence[str] | None = None) -> int:
    """id, time, type, then one column per attribute (named in `attrs`, else a JSON `attrs` column)."""
    w = _writer(out)
    if attrs:
        w.writerow(["id", "time", "type", *[csv_cell(a) for a in attrs]])
    else:
        w.writerow(["id", "time", "type", "attrs"])
    n = 0
    for e in events:
        head = [csv_cell(e.id), format_time_us(e.time_us), csv_cell(e.type)]
        if attrs:
            w.writerow(head + [csv_cell(e.attrs.get(a)) for a in attrs])
        else:
            w.writerow(head + [csv_cell(dict(e.attrs))])
        n += 1
    return n


def write_funnel_csv(result: FunnelResult, out: TextIO) -> int:
    w = _writer(out)
    w.writerow(["step", "type", "entered", "converted", "drop_off"])
    for s in result.steps:
        w.writerow([s.step, csv_cell(s.type), s.entered, s.converted, s.drop_off])
    return len(result.steps)
