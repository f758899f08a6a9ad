"""Dashboard cost: the Overview's queries through the gateway vs the same queries on the store.

One process: a real gateway (auth file backend, telemetry on) with N seeded request events
over 7 days. For each query the Overview page sends (7 totals, the time series, 8 top
lists) it times (a) `Store.query` called directly and (b) GET `<prefix>dashboard/api/query`
through the gateway (Basic auth, JSON) - the difference is the dashboard's own overhead
(HTTP, auth, parameter parsing, thread hop, JSON). Also prints the gzip transfer size of the
page and its assets.

Usage: .venv/bin/python bench/dashboard.py [--events 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import base64
import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

# the repo root instead of bench/ (bench/grpc.py would shadow the grpc package)
sys.path[0] = str(Path(__file__).resolve().parents[1])

from addons import dashboard_query as dq  # noqa: E402
from addons.dashboard import STATIC_DIR  # noqa: E402
from auth.users import UsersFile  # noqa: E402
from tests.dashboard.conftest import gateway_config  # noqa: E402
from tests.dashboard.data import RANGE, seed_events  # noqa: E402
from tests.integration.harness import EchoUpstream, GatewayThread, request  # noqa: E402

OVERVIEW = [
    {"type": "request", "interval": "none"},
    {"type": "request", "interval": "none", "metric": "users"},
    {"type": "pageview", "interval": "none"},
    {"type": "request", "interval": "none", "by": "cache"},
    {"type": "request", "interval": "none", "metric": "sum:resp_bytes", "filter": "cache=hit,stale"},
    {"type": "request", "interval": "none", "by": "status"},
    {"type": "request", "interval": "none", "metric": "p95:duration_ms"},
    {"type": "request", "interval": "auto"},
] + [{"type": "request", "interval": "none", "by": a, "order": "value_desc"}
     for a in ("path", "ref_class", "ref_host", "browser", "os", "device", "route", "status")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="portico-bench-dashboard-"))
    UsersFile(tmp / "users.yaml", must_exist=False).add("ada", "ada-pw", groups=("admins",), n=2**10)
    auth = {"Authorization": "Basic " + base64.b64encode(b"ada:ada-pw").decode()}
    upstream = EchoUpstream()
    gw = GatewayThread(gateway_config(tmp, upstream.url))
    try:
        store = gw.gateway.store
        t0 = time.perf_counter()
        events = seed_events(args.events)
        for i in range(0, len(events), 10_000):
            store.record(events[i:i + 10_000])
        store.flush()
        print(f"seeded {len(events):,} events in {time.perf_counter() - t0:.1f} s")
        direct, api = [], []
        for _ in range(args.rounds):
            for params in OVERVIEW:
                full = {**RANGE, **params}
                q = dq.query_from_params({k: [v] for k, v in full.items()})
                t = time.perf_counter()
                store.query(q)
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                status, _, _ = request(gw.url, "/_portico/dashboard/api/query?" + urlencode(full), headers=auth)
                api.append(time.perf_counter() - t)
                assert status == 200, status
        n = len(OVERVIEW)
        per_page_direct = sum(direct) / args.rounds
        per_page_api = sum(api) / args.rounds
        print(f"{n} Overview queries x {args.rounds} rounds")
        print(f"  store.query direct   p50 {statistics.median(direct) * 1000:7.1f} ms   page {per_page_direct * 1000:7.0f} ms")
        print(f"  dashboard api/query  p50 {statistics.median(api) * 1000:7.1f} ms   page {per_page_api * 1000:7.0f} ms "
              f"(sequential; the browser sends them in parallel)")
        print(f"  overhead per query   p50 {(statistics.median(api) - statistics.median(direct)) * 1000:7.1f} ms")
    finally:
        gw.stop()
        upstream.close()
    total = 0
    print("page weight (gzip -9 as served):")
    for name in ("index.html", "dashboard.css", "dashboard.js", "vendor/chart.umd.min.js",
                 "vendor/topojson-client.min.js", "vendor/land-110m.json"):
        raw = (STATIC_DIR / name).read_bytes()
        size = len(gzip.compress(raw, 9))
        total += size
        print(f"  {name:32s} {len(raw):8,d} B  -> {size:7,d} B")
    print(f"  total {total:,} B (the map outline only on the Map view)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
