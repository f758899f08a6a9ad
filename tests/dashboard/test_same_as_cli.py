"""Through the real gateway: the dashboard's JSON equals `portico query --json`, and its CSV
is byte for byte `portico export` (gRPC Export) for the same parameters."""

from __future__ import annotations

import json

import pytest

from proxy.cli import main
from tests.dashboard.data import RANGE

# (URL parameters, the same as CLI flags)
CASES = [
    {"type": ["request"], "interval": ["day"]},
    {"type": ["request"], "by": ["cache"], "interval": ["day"], "tz": ["America/New_York"]},
    {"type": ["request"], "by": ["path"], "interval": ["none"], "order": ["value_desc"]},
    {"type": ["request"], "metric": ["p95:duration_ms"], "interval": ["none"], "filter": ["status>=500"]},
    {"type": ["request"], "metric": ["users"], "interval": ["day"], "filter": ["browser=Firefox,Safari"]},
    {"type": ["request"], "by": ["geo_cell"], "interval": ["none"], "bbox": ["30,-10,60,20"]},
    {"type": ["request"], "by": ["status"], "interval": ["hour"], "near": ["52.5,13.4,50"], "limit": ["7"]},
    {"preset": ["users"], "org": ["acme"], "interval": ["day"]},
    {"preset": ["enrolments"], "supply": ["Childcare"], "need": ["Housing"], "by": ["org"], "interval": ["week"]},
    {"type": ["email_open"], "by": ["campaign", "machine"], "interval": ["none"]},
]


def flags(params: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    for name, values in {**{k: [v] for k, v in RANGE.items()}, **params}.items():
        if name == "preset":
            out[:0] = values
            continue
        flag = "--" + {"page_token": "page-token"}.get(name, name)
        for v in values:
            out.append(f"{flag}={v}")
    return out


@pytest.mark.parametrize("params", CASES)
def test_json_rows_equal_portico_query(dash, params, capsys):
    status, body = dash.api("query", {**RANGE, **params})
    assert status == 200, body
    args = flags(params)
    preset = [args.pop(0)] if not args[0].startswith("--") else []
    capsys.readouterr()
    assert main(["query", *preset, *args, "--all", "--json", "--server", dash.grpc]) == 0
    cli = json.loads(capsys.readouterr().out)
    # the dashboard pages like the API; gather its pages the way the page does
    rows = body["rows"]
    while body["next_page_token"]:
        status, body = dash.api("query", {**RANGE, **params, "page_token": [body["next_page_token"]]})
        rows += body["rows"]
    assert rows == cli["rows"]
    assert rows, "seed data should give rows for every case"


@pytest.mark.parametrize("params", CASES)
def test_csv_equals_portico_export(dash, params, tmp_path, capsys):
    status, csv_bytes = dash.api("query.csv", {**RANGE, **params})
    assert status == 200, csv_bytes
    args = flags(params)
    preset = [args.pop(0)] if not args[0].startswith("--") else []
    out = tmp_path / "export.csv"
    assert main(["export", *preset, *args, "-o", str(out), "--progress", "never", "--server", dash.grpc]) == 0
    assert csv_bytes == out.read_bytes()
    assert csv_bytes.count(b"\n") > 1


def test_funnel_json_and_csv_equal_the_cli(dash, tmp_path, capsys):
    params = {**RANGE, "step": ["signup.started", "signup.form", "signup.done"], "within": ["1d"]}
    status, body = dash.api("funnel", params)
    assert status == 200
    assert [(s["entered"], s["converted"]) for s in body["steps"]] == [(20, 12), (12, 5), (5, 5)]
    capsys.readouterr()
    steps = ["--step=signup.started", "--step=signup.form", "--step=signup.done", "--within=1d"]
    rng = [f"--from={RANGE['from']}", f"--to={RANGE['to']}"]
    assert main(["funnel", *steps, *rng, "--json", "--server", dash.grpc]) == 0
    assert json.loads(capsys.readouterr().out) == body
    out = tmp_path / "funnel.csv"
    assert main(["export", "--funnel", *steps, *rng, "-o", str(out), "--progress", "never",
                 "--server", dash.grpc]) == 0
    assert dash.api("funnel.csv", params)[1] == out.read_bytes()


@pytest.mark.parametrize(("params", "field", "text"), [
    ({"filter": ["status>=lots"]}, "filter", "needs a number"),
    ({"interval": ["fortnight"]}, "interval", "not one of auto, minute"),
    ({"metric": ["median:x"]}, "metric", "expected count, users"),
    ({"tz": ["Nowhere/Town"]}, "tz", "IANA"),
    ({"colour": ["red"]}, "colour", "unknown parameter"),
])
def test_bad_input_is_a_400_naming_the_field(dash, params, field, text):
    status, body = dash.api("query", {**RANGE, **params})
    assert status == 400
    assert body["error"]["field"] == field and text in body["error"]["message"]
    status, body = dash.api("query.csv", {**RANGE, **params})
    assert status == 400 and body["error"]["field"] == field


def test_csv_larger_than_the_cap_asks_for_portico_export(tmp_path):
    from addons import dashboard_query as dq
    from tests.dashboard.conftest import Dash  # noqa: F401 - same store type as the gateway's
    from telemetry.store import Store, StoreSettings
    from tests.dashboard.data import seed_events

    store = Store.open(StoreSettings(path=tmp_path / "s", sync=False))
    try:
        store.record(seed_events(50))
        store.flush()
        q = dq.query_from_params({**{k: [v] for k, v in RANGE.items()}, "type": ["request"], "interval": ["hour"],
                                  "limit": ["10"]})
        with pytest.raises(dq.TooManyRows, match="portico export"):
            dq.query_csv(store, q, max_rows=25)
        assert dq.query_csv(store, q, max_rows=1000).count(b"\r\n") == 7 * 24 + 1
    finally:
        store.close()
