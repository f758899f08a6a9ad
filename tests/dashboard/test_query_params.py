"""The dashboard's URL parameters build exactly the Query the CLI + gRPC path builds for the same flags.

Each case is a `portico query` command line; the dashboard gets the same flags as URL
parameters (without dashes). Both sides must give equal `telemetry.query.Query` objects,
or the same failing field.
"""

from __future__ import annotations

import shlex
from datetime import datetime, timezone

import pytest

from addons import dashboard_query as dq
from proto import convert
from proxy.cli import build_parser
from proxy.cli_analytics import build_query
from proxy.cli_common import CliError
from telemetry.errors import QueryError

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
FLAG = {"--from": "from", "--to": "to", "--type": "type", "--filter": "filter", "--near": "near", "--bbox": "bbox",
        "--metric": "metric", "--interval": "interval", "--tz": "tz", "--by": "by", "--order": "order",
        "--limit": "limit", "--page-token": "page_token", "--org": "org", "--project": "project",
        "--supply": "supply", "--need": "need"}

CASES = [
    "--from 2026-11-01 --to 2026-11-08 --type request",
    "--from 2026-11-01T10:00:00Z --to 2026-11-01T13:00:00+02:00 --type request --type pageview --interval hour",
    "--from 2026-10-01 --to 2026-11-01 --filter org=acme --filter 'status>=500' --filter 'path~^/api/' --by path",
    "--from 2026-10-01 --to 2026-11-01 --type request --metric p95:duration_ms --interval none --tz Asia/Kathmandu",
    "--from 2026-10-01 --to 2026-11-01 --type request --by geo_cell --near 52.52,13.40,25 --interval none",
    "--from 2026-10-01 --to 2026-11-01 --type request --bbox=-10,-20,30,40 --order value_desc --limit 10",
    "users --from 2026-10-01 --to 2026-11-01 --org acme --project 'alpha, beta' --by org --interval week",
    "enrolments --from 2026-10-01 --to 2026-11-01 --supply Childcare --need 'Legal Help' --filter user?",
    "enrolments --from 2026-10-01 --to 2026-11-01 --metric users --tz Europe/Berlin --interval month",
    "--from 2026-10-01 --to 2026-11-01 --type request --metric users --page-token abc --interval day",
]


def cli_query(line: str):
    args = build_parser().parse_args(["query", *shlex.split(line)])
    return convert.query_from_pb(build_query(args))


def url_params(line: str) -> dict[str, list[str]]:
    words = shlex.split(line)
    params: dict[str, list[str]] = {}
    if words and not words[0].startswith("--"):
        params["preset"] = [words.pop(0)]
    pairs = []
    while words:
        word = words.pop(0)
        flag, eq, value = word.partition("=")
        pairs.append((flag, value) if eq and flag.startswith("--") else (word, words.pop(0)))
    for flag, value in pairs:
        params.setdefault(FLAG[flag], []).append(value)
    return params


@pytest.mark.parametrize("line", CASES)
def test_same_query_as_the_cli_and_grpc(line):
    assert dq.query_from_params(url_params(line), now=NOW) == cli_query(line)


@pytest.mark.parametrize(("line", "field"), [
    ("--from 2026-11-01 --to 2026-11-01", "to"),
    ("--from yesterday", "from"),
    ("--interval hr", "interval"),
    ("--metric median:x", "metric"),
    ("--tz Mars/Olympus", "tz"),
    ("--filter 'status>=high'", "filter"),
    ("--filter 'path~(['", "filter"),
    ("--near 1,2", "near"),
    ("--near 95,0,10", "near"),
    ("--bbox 10,0,5,1", "bbox"),
    ("--limit 0", "limit"),
    ("--limit 20000", "limit"),
    ("--order random", "order"),
    ("users --type request", "type"),
])
def test_bad_parameters_name_the_field(line, field):
    params = url_params(line)
    with pytest.raises(QueryError) as e:
        dq.query_from_params(params, now=NOW)
    assert e.value.field.startswith(field), str(e.value)
    # the CLI refuses the same input too (its own message, or the server's INVALID_ARGUMENT)
    with pytest.raises((CliError, SystemExit, QueryError, convert.InvalidRequest)):
        q = cli_query(line)
        from telemetry.query import validate_query
        validate_query(q)


def test_unknown_and_repeated_parameters_are_errors():
    with pytest.raises(QueryError, match="unknown parameter; allowed: from, to"):
        dq.query_from_params({"form": ["-7d"]}, now=NOW)
    with pytest.raises(QueryError, match="given 2 times"):
        dq.query_from_params({"interval": ["day", "hour"]}, now=NOW)
    with pytest.raises(QueryError, match="near or bbox"):
        dq.query_from_params({"near": ["1,2,3"], "bbox": ["0,0,1,1"]}, now=NOW)


def test_relative_times_and_dashboard_defaults():
    q = dq.query_from_params({}, now=NOW, default_tz="Europe/Berlin", default_from="-24h")
    assert (q.start, q.end, q.tz, q.interval, q.limit) == (datetime(2026, 11, 19, 12, tzinfo=timezone.utc), NOW,
                                                          "Europe/Berlin", "auto", 1000)


@pytest.mark.parametrize(("params", "error"), [
    ({}, "step"), ({"step": ["a"]}, "within"), ({"step": ["a"], "within": ["soon"]}, "within"),
    ({"step": [","], "within": ["1d"]}, "step[0]"), ({"step": ["a,=x"], "within": ["1d"]}, "filter"),
])
def test_funnel_parameters(params, error):
    with pytest.raises(QueryError) as e:
        dq.funnel_from_params(params, now=NOW)
    assert e.value.field == error


def test_funnel_matches_the_cli():
    line = "--step signup.started --step 'signup.form,org=acme,globex' --within 1h30m --by visitor " \
           "--from 2026-11-01 --to 2026-11-08"
    args = build_parser().parse_args(["funnel", *shlex.split(line)])
    from proxy.cli_analytics import build_funnel
    expected = convert.funnel_query_from_pb(build_funnel(args, args.by))
    got = dq.funnel_from_params({"step": ["signup.started", "signup.form,org=acme,globex"], "within": ["1h30m"],
                                 "by": ["visitor"], "from": ["2026-11-01"], "to": ["2026-11-08"]}, now=NOW)
    assert got == expected
