"""The analytics CLI's parsing and rendering, and its exit codes when no server answers."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import pytest

from proto.portico.v1 import analytics_pb2 as pb
from proxy import cli_analytics as ca
from proxy.cli import main

NOW = datetime(2026, 11, 8, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, expected", [
    ("now", NOW),
    ("-7d", NOW - timedelta(days=7)),
    ("-12h", NOW - timedelta(hours=12)),
    ("-30m", NOW - timedelta(minutes=30)),
    ("-2w", NOW - timedelta(weeks=2)),
    ("+1d", NOW + timedelta(days=1)),
    ("2026-11-01T10:00:00Z", datetime(2026, 11, 1, 10, tzinfo=timezone.utc)),
    ("2026-11-01T10:00:00+01:00", datetime(2026, 11, 1, 9, tzinfo=timezone.utc)),
    ("2026-11-01", datetime(2026, 11, 1, tzinfo=timezone.utc)),
])
def test_times_accept_rfc3339_dates_and_relative_forms(text, expected):
    assert ca.parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "-7x", "7d", "2026-13-01", ""])
def test_bad_times_say_what_is_accepted(text):
    with pytest.raises(ValueError, match="RFC 3339 .* relative time like -7d"):
        ca.parse_time(text, NOW)


@pytest.mark.parametrize("text, expected", [
    ("30m", timedelta(minutes=30)), ("1h30m", timedelta(minutes=90)), ("7d", timedelta(days=7)),
    ("1w", timedelta(weeks=1)), ("90s", timedelta(seconds=90)),
])
def test_durations(text, expected):
    assert ca.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["0d", "", "1x", "d", "1h 30m", "-1d"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="positive duration"):
        ca.parse_duration(text)


def test_geo_flags():
    near = ca.geo_from_args("52.52,13.40,25", None)
    assert (near.near.lat, near.near.lon, near.near.km) == (52.52, 13.40, 25)
    box = ca.geo_from_args(None, "52.3,13.0,52.7,13.8")
    assert (box.bbox.south, box.bbox.west, box.bbox.north, box.bbox.east) == (52.3, 13.0, 52.7, 13.8)
    with pytest.raises(ValueError, match="--near '52,13': expected LAT,LON,KM"):
        ca.geo_from_args("52,13", None)
    with pytest.raises(ValueError, match="--bbox"):
        ca.geo_from_args(None, "a,b,c,d")


def test_funnel_step_keeps_commas_of_in_filters():
    step = ca.parse_step("signup,org=acme,globex")
    assert step.type == "signup" and [f.expr for f in step.filters] == ["org=acme,globex"]
    assert not ca.parse_step("signup").filters


def test_json_line_to_event():
    ev = ca.event_from_json_line('{"id": "e1", "time": "2026-11-01T10:00:00.5Z", "type": "user.joined", '
                                 '"attrs": {"org": "acme", "n": 3, "x": 1.5, "ok": true, "needs": ["a"], '
                                 '"supplies": {"Childcare": 2}}}')
    assert ev.id == "e1" and ev.type == "user.joined"
    assert ev.time.seconds == int(datetime(2026, 11, 1, 10, tzinfo=timezone.utc).timestamp())
    assert ev.time.nanos == 500_000_000
    assert ev.attrs["n"].int_value == 3 and ev.attrs["x"].double_value == 1.5 and ev.attrs["ok"].bool_value
    assert ev.attrs["supplies"].map_value.fields["Childcare"].int_value == 2


def test_json_line_to_wire_event():
    wire = ca.wire_event_from_json_line('{"id": "e1", "time": "2026-11-01T10:00:00.5Z", "type": "user.joined", '
                                        '"attrs": {"org": "acme", "needs": ["a"]}}')
    assert wire == {"type": "user.joined", "id": "e1", "time_us": 1_793_527_200_500_000,
                    "attrs": {"org": "acme", "needs": ["a"]}}
    # epoch seconds; an empty id or attrs means "server fills in" as in the typed form
    assert ca.wire_event_from_json_line('{"type": "x", "time": 1.5, "id": "", "attrs": {}}') == {
        "type": "x", "time_us": 1_500_000}


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"),
    ('{"type": "x", "time": 1e300}', "time: 1e+300 is not epoch seconds"),
    ('{"type": "x", "id": 5}', "id: expected a string"),
    ('{"type": "x", "attrs": "a=b"}', "attrs: expected a JSON object"),
    ("[1]", "expected a JSON object"),
    ('{"time": "2026-11-01T10:00:00Z"}', "type: required"),
    ('{"type": "x", "time": "soon"}', "time: "),
    ('{"type": "x", "extra": 1}', "unknown field(s) extra"),
    ('{"type": "x", "attrs": [1]}', "attrs: expected a JSON object"),
])
def test_bad_json_lines_name_the_field(line, message):
    with pytest.raises(ValueError, match=None) as err:
        ca.event_from_json_line(line)
    assert message in str(err.value)


def _page() -> pb.QueryResponse:
    page = pb.QueryResponse(total_rows=3, next_page_token="tok2", interval="day", tz="UTC",
                            group_by=["org"], metric="count")
    for day, org, value in ((1, "acme", 3), (1, "globex-international", 12), (2, "acme", 1)):
        row = page.rows.add(int_value=value)
        row.bucket.FromDatetime(datetime(2026, 11, day))
        row.keys["org"].string_value = org
    return page


def test_table_is_aligned_with_the_next_page_token_at_the_bottom():
    out = io.StringIO()
    ca.print_query_table([_page()], out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["bucket", "org", "count"]
    assert lines[1] == "2026-11-01T00:00:00Z  acme                      3"
    assert lines[2] == "2026-11-01T00:00:00Z  globex-international     12"
    assert len({len(line) for line in lines[1:4]}) == 1  # right-aligned values: same width
    assert lines[-1] == "next page: --page-token tok2"
    assert "," not in lines[1]  # a table, not CSV


def test_json_output_shape():
    data = ca.query_json([_page()])
    assert data == {"rows": [
        {"bucket": "2026-11-01T00:00:00Z", "keys": {"org": "acme"}, "value": 3},
        {"bucket": "2026-11-01T00:00:00Z", "keys": {"org": "globex-international"}, "value": 12},
        {"bucket": "2026-11-02T00:00:00Z", "keys": {"org": "acme"}, "value": 1},
    ], "next_page_token": "tok2", "total_rows": 3}
    json.dumps(data)


def test_buckets_render_in_the_query_zone():
    ts = pb.Row().bucket
    ts.FromDatetime(datetime(2026, 11, 1, 23))
    assert ca.format_bucket(ts, "Europe/Berlin") == "2026-11-02T00:00:00+01:00"


def test_unreachable_server_is_one_line_and_exit_1(capsys, refused_port):
    port = refused_port
    code = main(["query", "--server", f"127.0.0.1:{port}", "--from", "-7d", "--to", "now"])
    err = capsys.readouterr().err
    assert code == 1
    assert err == f"portico: server 127.0.0.1:{port} unreachable (connection refused)\n"


def test_record_to_an_unreachable_server_is_one_line_and_exit_1(tmp_path, capsys, refused_port):
    port = refused_port
    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "signup"}\n' * 5)
    code = main(["events", "record", str(path), "--server", f"127.0.0.1:{port}", "--batch-size", "2"])
    assert code == 1
    assert capsys.readouterr().err == f"portico: server 127.0.0.1:{port} unreachable (connection refused)\n"


def test_server_from_environment(capsys, monkeypatch, refused_port):
    port = refused_port
    monkeypatch.setenv("PORTICO_SERVER", f"127.0.0.1:{port}")
    assert main(["stats"]) == 1
    assert f"127.0.0.1:{port} unreachable" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["query", "--from", "yesterday"], "time 'yesterday'"),
    (["query", "--from", "now", "--to", "-1d"], "is not before --to"),
    (["query", "--metric", "median"], "--metric 'median'"),
    (["query", "--tz", "Mars/Olympus"], "--tz 'Mars/Olympus'"),
    (["query", "--near", "1,2"], "--near '1,2'"),
    (["query", "--limit", "0"], "--limit 0"),
    (["query", "users", "--type", "x"], "preset chooses the event types"),
    (["funnel", "--step", "a", "--within", "soon"], "duration 'soon'"),
    (["events", "record", "/nonexistent/file.jsonl"], "no such file"),
])
def test_usage_errors_exit_2_without_contacting_a_server(capsys, argv, message, refused_port):
    port = refused_port
    assert main([*argv, "--server", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["query", "--interval", "hr"])
    assert exit_.value.code == 2
    assert "invalid choice: 'hr'" in capsys.readouterr().err
