"""`portico store stats`, `portico backup`, `portico restore` on a real store."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from proxy.cli import main
from telemetry.events import make_event
from tests.telemetry.conftest import T0, open_store

REPO = Path(__file__).resolve().parents[2]


def test_stats_backup_restore_round_trip(tmp_path, capsys):
    s = open_store(tmp_path / "data")
    s.record([make_event("pageview", {"i": i}, time=T0 + timedelta(hours=i)) for i in range(30)])
    s.flush(5)
    # another process, while the store is open here (as a running gateway would have it)
    out = subprocess.run([sys.executable, "-m", "proxy.cli", "store", "stats", "--data", str(tmp_path / "data"),
                          "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["events"] == 30 and st["partitions"] == 2 and st["oldest"].startswith("2026-03-01T00:00")
    out = subprocess.run([sys.executable, "-m", "proxy.cli", "backup", str(tmp_path / "bk"), "--data",
                          str(tmp_path / "data")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    s.close()
    assert main(["restore", str(tmp_path / "bk"), "--data", str(tmp_path / "new")]) == 0
    capsys.readouterr()
    assert main(["store", "stats", "--data", str(tmp_path / "new")]) == 0
    assert "events:     30" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    assert main(["store", "stats", "--data", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("portico: ") and "no telemetry store" in err and err.count("\n") == 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["restore", str(tmp_path / "bk"), "--data", str(tmp_path / "full")]) == 1
    assert "not a telemetry backup" in capsys.readouterr().err
