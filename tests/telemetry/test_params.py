"""telemetry.params: the text forms the CLI, the dashboard and the gRPC API share."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from telemetry import params
from telemetry.query import Filter

NOW = datetime(2026, 11, 8, 12, 0, tzinfo=timezone.utc)


def test_relative_and_absolute_times():
    assert params.parse_time("-7d", NOW) == NOW - timedelta(days=7)
    assert params.parse_time("2026-11-01", NOW) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="^time 'soon': expected RFC 3339"):
        params.parse_time("soon", NOW)


def test_times_and_durations_too_large_for_python_are_value_errors():
    with pytest.raises(ValueError, match="out of range"):
        params.parse_time("-99999999d", NOW)
    with pytest.raises(ValueError, match="too long"):
        params.parse_duration("99999999999d")


def test_durations_must_be_positive():
    assert params.parse_duration("1h30m") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="^duration '0d': expected a positive duration"):
        params.parse_duration("0d")


@pytest.mark.parametrize(("text", "parse", "expected"), [
    ("52.52,13.40,25", params.parse_near, (52.52, 13.40, 25.0)),
    ("-10,-20,30,40", params.parse_bbox, (-10.0, -20.0, 30.0, 40.0)),
])
def test_coordinates_parse_to_tuples(text, parse, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(("text", "parse"), [
    ("52,13", params.parse_near), ("1,2,nan", params.parse_near), ("a,b,c,d", params.parse_bbox),
])
def test_bad_coordinates_show_an_example_without_a_field_name(text, parse):
    with pytest.raises(ValueError, match=rf"^'{text}': expected .* as numbers, e.g. "):
        parse(text)


@pytest.mark.parametrize(("check", "values", "area", "part"), [
    (params.check_near, (95, 0, 10), "near", ""),
    (params.check_near, (0, 0, 0), "near", "km"),
    (params.check_bbox, (10, 0, 5, 1), "bbox", ""),
    (params.check_bbox, (0, -200, 1, 1), "bbox", ""),
])
def test_out_of_range_coordinates_say_which_part(check, values, area, part):
    with pytest.raises(params.GeoRangeError) as e:
        check(*values)
    assert (e.value.area, e.value.part) == (area, part)


def test_in_range_coordinates_pass():
    params.check_near(52.5, 13.4, 0.1)
    params.check_bbox(-90, -180, 90, 180)


def test_metric_zone_and_step_checks():
    params.check_metric("p95:duration_ms")
    with pytest.raises(ValueError, match="'median:x': expected count, users"):
        params.check_metric("median:x")
    params.check_tz("Asia/Kathmandu")
    with pytest.raises(ValueError, match="'Mars/Olympus': not a known IANA time zone"):
        params.check_tz("Mars/Olympus")
    assert params.split_step(" signup , org=acme,globex ") == ("signup", "org=acme,globex")
    assert params.split_step("signup") == ("signup", "")
    with pytest.raises(ValueError, match="expected TYPE or TYPE,FILTER"):
        params.split_step(",org=acme")


def test_preset_fields_add_to_the_presets_grouping_and_filters():
    start, end = NOW - timedelta(days=7), NOW
    base = params.preset_query("users", start=start, end=end)
    extra = Filter("org", "eq", "acme")
    fields = params.preset_fields("users", start=start, end=end, group_by=("org", *base.group_by),
                                  metric=None, filters=[extra])
    assert fields["types"] == base.types
    assert fields["group_by"] == tuple(dict.fromkeys((*base.group_by, "org")))
    assert fields["metric"] == base.metric
    assert fields["filters"] == (*base.filters, extra)
    assert params.preset_fields("users", start=start, end=end, group_by=(), metric="users",
                                filters=())["metric"] == "users"
