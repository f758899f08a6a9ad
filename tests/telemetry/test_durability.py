"""Crash durability: events acknowledged by record(wait=True) survive SIGKILL right after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

from telemetry.query import ListQuery
from tests.telemetry.conftest import T0, open_store

REPO = Path(__file__).resolve().parents[2]


def test_acknowledged_events_survive_sigkill(tmp_path):
    data = tmp_path / "d"
    code = textwrap.dedent(f"""
        import sys, threading
        from datetime import datetime, timedelta, timezone
        from pathlib import Path
        from telemetry.store import Store, StoreSettings
        from telemetry.events import make_event
        s = Store.open(StoreSettings(Path({str(data)!r}), sync=True))
        t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
        def producer(w):
            i = 0
            while True:
                batch = [make_event("pageview", {{"w": w}}, id=f"{{w}}-{{i + j}}",
                                    time=t0 + timedelta(seconds=i + j)) for j in range(50)]
                s.record(batch, wait=True)
                sys.stdout.write("ACK " + " ".join(e.id for e in batch) + "\\n")
                sys.stdout.flush()
                i += 50
        for w in range(3):
            threading.Thread(target=producer, args=(w,), daemon=True).start()
        threading.Event().wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    acked: set[str] = set()
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while len(acked) < 3000 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("ACK "):
            acked.update(line.split()[1:])
    os.kill(proc.pid, signal.SIGKILL)
    # ids printed after our last read were acknowledged too: read what is left in the pipe
    rest = proc.stdout.read()
    proc.wait()
    for line in rest.splitlines():
        if line.startswith("ACK "):
            acked.update(line.split()[1:])
    assert len(acked) >= 3000
    s = open_store(data)
    ids: set[str] = set()
    token = None
    while True:
        page = s.list_events(ListQuery(start=T0, end=T0 + timedelta(days=30), limit=5000, page_token=token))
        ids.update(e.id for e in page.events)
        token = page.next_page_token
        if not token:
            break
    s.flush(20)
    s.close()
    assert acked - ids == set(), f"{len(acked - ids)} acknowledged events lost"
