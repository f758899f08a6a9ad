"""CSV export: RFC 4180, formula injection neutralised, streaming."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest

from telemetry.events import make_event
from telemetry.export import csv_cell, write_events_csv, write_funnel_csv, write_query_csv
from telemetry.query import FunnelResult, FunnelStepResult, Query, Row
from tests.telemetry.conftest import T0


@pytest.mark.parametrize("value, cell", [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+1+2", "'+1+2"), ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"), ("plain", "plain"), (-5, "-5"),
    (2.5, "2.5"), (True, "true"), (None, ""), (["=a"], '["=a"]'),
])
def test_csv_cell_neutralises_formulas(value, cell):
    assert csv_cell(value) == cell


def test_query_rows_csv_has_header_iso_buckets_and_quoting(store):
    store.record([make_event("pageview", {"path": '=cmd|"/c calc"!A1'}, time=T0),
                  make_event("pageview", {"path": "/a,b"}, time=T0)])
    store.flush(5)
    r = store.query(Query(start=T0, end=T0 + timedelta(hours=2), interval="hour", group_by=("path",)))
    out = io.StringIO()
    n = write_query_csv(r.rows, out, group_by=("path",), metric="count")
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["bucket", "path", "count"] and n == len(rows) - 1 == 4
    assert ["2026-03-01T00:00:00+00:00", "'=cmd|\"/c calc\"!A1", "1"] in rows
    assert ["2026-03-01T00:00:00+00:00", "/a,b", "1"] in rows
    assert out.getvalue().endswith("\r\n")


def test_events_csv_streams_a_generator_and_neutralises(store):
    def gen():
        for i in range(10_000):
            yield make_event("pageview", {"q": "@evil" if i == 0 else f"v{i}"}, id=f"id{i}", time=T0)
    out = io.StringIO()
    assert write_events_csv(gen(), out, attrs=["q"]) == 10_000
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["id", "time", "type", "q"]
    assert rows[1] == ["id0", "2026-03-01T00:00:00.000000Z", "pageview", "'@evil"]


def test_geo_cells_become_lat_lon_columns_and_funnel_csv():
    out = io.StringIO()
    write_query_csv([Row(None, {"lat": 1.5, "lon": -2.5}, 3)], out, group_by=("geo_cell",), metric="count",
                    with_bucket=False)
    assert out.getvalue().splitlines() == ["lat,lon,count", "1.5,-2.5,3"]
    out = io.StringIO()
    write_funnel_csv(FunnelResult([FunnelStepResult(1, "=visit", 3, 1, 2)]), out)
    assert out.getvalue().splitlines()[1] == "1,'=visit,3,1,2"
