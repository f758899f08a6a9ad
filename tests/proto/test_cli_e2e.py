"""The analytics CLI end to end against a real gRPC server over a real store."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main
from tests.proto.conftest import settle
from tests.proto.data import jsonl, sample_events

RANGE = ["--from", "2026-11-01", "--to", "2026-11-11"]


@pytest.fixture
def recorded(tmp_path, server, store, capsys):
    events = sample_events(400)
    path = tmp_path / "events.jsonl"
    path.write_text(jsonl(events))
    assert main(["events", "record", str(path), "--server", server.address, "--batch-size", "150"]) == 0
    assert capsys.readouterr().out == "accepted 400, duplicates 0, rejected 0\n"
    settle(store)
    return events


def test_record_reports_rejected_line_numbers_and_exits_1(tmp_path, server, capsys):
    good = sample_events(3)
    path = tmp_path / "events.jsonl"
    path.write_text(jsonl(good[:1]) + "{broken\n\n" + jsonl(good[1:2]) + '{"type": "Bad Type"}\n' + jsonl(good[:1]))
    assert main(["events", "record", str(path), "--server", server.address]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "accepted 2, duplicates 1, rejected 2"
    assert out[1].startswith("  line 2: not JSON")
    assert out[2].startswith("  line 5: type: 'Bad Type' is not an event type")


def test_record_rejects_a_line_whose_value_cannot_travel_and_sends_the_rest(tmp_path, server, capsys):
    good = sample_events(2)
    path = tmp_path / "events.jsonl"
    path.write_text(jsonl(good[:1]) + '{"type": "signup", "attrs": {"big": 18446744073709551616}}\n'
                    + '{"type": "signup", "time": 1e300}\n' + jsonl(good[1:]))
    assert main(["events", "record", str(path), "--server", server.address, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["accepted"], out["duplicates"]) == (2, 0)
    assert [r["line"] for r in out["rejected"]] == [2, 3]
    assert out["rejected"][0]["message"].startswith("attrs.big: cannot encode int")
    assert out["rejected"][1]["message"].startswith("time: 1e+300 is not epoch seconds")


def test_record_with_batches_in_flight_maps_each_rejection_to_its_line(tmp_path, server, capsys):
    good = sample_events(8)
    bad_type, too_big = '{"type": "Bad Type"}\n', '{"type": "signup", "attrs": {"n": 99999999999999999999}}\n'
    text = (jsonl(good[:1]) + bad_type + jsonl(good[1:4]) + too_big + jsonl(good[4:6]) + bad_type
            + jsonl(good[6:]))
    path = tmp_path / "events.jsonl"
    path.write_text(text)
    # batches of 2: five Record calls, two in flight at a time
    assert main(["events", "record", str(path), "--server", server.address, "--batch-size", "2", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["accepted"], out["duplicates"]) == (8, 0)
    assert [(r["line"], r["message"].split(":")[0]) for r in out["rejected"]] == [
        (2, "type"), (6, "attrs.n"), (9, "type")]


def test_record_from_stdin_json(server, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(jsonl(sample_events(5))))
    assert main(["events", "record", "-", "--server", server.address, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"accepted": 5, "duplicates": 0, "rejected": []}


def test_query_table_and_json(server, recorded, capsys):
    args = ["query", *RANGE, "--type", "signup", "--by", "org", "--interval", "day", "--server", server.address]
    assert main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["bucket", "org", "count"]
    assert table[1].startswith("2026-11-01T00:00:00Z  ")
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"rows", "next_page_token", "total_rows"}
    assert data["next_page_token"] is None and data["total_rows"] == len(data["rows"]) == len(table) - 3
    assert sum(r["value"] for r in data["rows"]) == sum(1 for e in recorded if e["type"] == "signup")
    assert set(data["rows"][0]) == {"bucket", "keys", "value"} and set(data["rows"][0]["keys"]) == {"org"}


def test_query_pages_with_limit_and_all(server, recorded, capsys):
    args = ["query", *RANGE, "--by", "org", "--interval", "day", "--server", server.address, "--json"]
    assert main([*args, "--limit", "7"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert len(first["rows"]) == 7 and first["next_page_token"]
    assert main([*args, "--limit", "7", "--page-token", first["next_page_token"]]) == 0
    second = json.loads(capsys.readouterr().out)
    assert main([*args, "--limit", "7", "--all"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert everything["rows"][:14] == first["rows"] + second["rows"]
    assert len(everything["rows"]) == everything["total_rows"] and everything["next_page_token"] is None
    assert main([*args[:-1], "--limit", "7"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"next page: --page-token {first['next_page_token']}")


def test_preset_queries(server, recorded, capsys):
    assert main(["query", "enrolments", *RANGE, "--interval", "none", "--need", "Legal Help",
                 "--server", server.address, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = sum(1 for e in recorded if "Legal Help" in e["attrs"].get("needs", []))
    assert sum(r["value"] for r in data["rows"]) == expected > 0
    assert main(["query", "users", *RANGE, "--by", "org", "--near", "52.52,13.40,30",
                 "--server", server.address]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["bucket", "type", "org", "count"]


def test_events_list(server, recorded, capsys):
    assert main(["events", "list", *RANGE, "--type", "request", "--filter", "status=500",
                 "--server", server.address, "--all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = [e["id"] for e in sorted(recorded, key=lambda e: e["time"])
                if e["type"] == "request" and e["attrs"]["status"] == 500]
    assert [e["id"] for e in data["events"]] == expected


def test_export_csv_matches_the_query(tmp_path, server, recorded, capsys):
    out = tmp_path / "out.csv"
    args = [*RANGE, "--by", "org", "--interval", "hour", "--server", server.address]
    assert main(["export", *args, "--output", str(out), "--limit", "25"]) == 0
    assert capsys.readouterr().out == f"wrote {len(out.read_text().splitlines()) - 1} rows to {out}\n"
    assert main(["query", *args, "--all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = list(csv.reader(out.open()))
    assert len(rows) - 1 == len(data["rows"])
    assert [float(r[-1]) for r in rows[1:]] == [float(r["value"]) for r in data["rows"]]
    assert not (tmp_path / "out.csv.part").exists()


def test_export_events_and_funnel(tmp_path, server, recorded, capsys):
    out = tmp_path / "events.csv"
    assert main(["export", "--events", *RANGE, "--type", "signup", "--output", str(out),
                 "--server", server.address]) == 0
    assert len(out.read_text().splitlines()) - 1 == sum(1 for e in recorded if e["type"] == "signup")
    capsys.readouterr()
    out = tmp_path / "funnel.csv"
    assert main(["export", "--funnel", *RANGE, "--step", "user.joined", "--step", "signup", "--within", "7d",
                 "--output", str(out), "--server", server.address]) == 0
    assert len(out.read_text().splitlines()) == 3


def test_funnel_and_stats(server, recorded, capsys):
    assert main(["funnel", *RANGE, "--step", "user.joined", "--step", "signup,org=acme", "--within", "10d",
                 "--server", server.address, "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert [s["type"] for s in steps] == ["user.joined", "signup"]
    assert main(["stats", "--server", server.address, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 400


def test_server_side_invalid_argument_exits_2(server, capsys):
    assert main(["query", *RANGE, "--filter", "=oops", "--server", server.address]) == 2
    err = capsys.readouterr().err
    assert err.startswith("portico: filters[0]") or err.startswith("portico: filter")
    assert err.count("\n") == 1


def test_console_script_in_a_subprocess(server, recorded):
    script = Path(sys.executable).with_name("portico")
    if not script.exists():
        pytest.skip("console script not installed: run .venv/bin/pip install -e .")
    done = subprocess.run([str(script), "query", "users", *RANGE, "--interval", "none", "--json"],
                          env={"PORTICO_SERVER": server.address, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sum(r["value"] for r in json.loads(done.stdout)["rows"]) == sum(
        1 for e in recorded if e["type"].startswith("user."))


def test_export_progress_bar_only_when_asked_or_on_a_terminal(tmp_path, server, recorded, capsys):
    out = tmp_path / "q.csv"
    args = ["export", *RANGE, "--by", "org", "--interval", "hour", "--output", str(out), "--server", server.address]
    assert main(args) == 0  # stderr is not a terminal under pytest: no bar
    assert capsys.readouterr().err == ""
    assert main([*args, "--progress", "always"]) == 0
    err = capsys.readouterr().err
    rows = len(out.read_text().splitlines()) - 1
    assert err.startswith("\r[") and err.endswith(f"{rows:>10,} / {rows:,} rows 100%\n")
