"""Cache throughput: a hit through Portico vs the engine's ceiling; a miss vs bare mitmdump.

One run, same machine, same `wrk` load (HTTP/1.1, keep-alive), each server in its own process:
  (a) `portico run` with the cache on, every request a hit (the page says max-age=3600);
  (b) the engine's ceiling: `mitmdump` with an addon that answers every request in `request`
      with a fixed in-memory response (no upstream, lazy connections) - the best a cache hit
      inside mitmproxy can do;
  (c) a miss through Portico (the upstream says no-store, so every request goes upstream
      through the cache's lookup and store stage) vs (d) bare `mitmdump` to the same upstream.
Targets (issue 6): (a) >= 0.95 x (b); (c) >= 0.9 x (d). Afterwards prints the cache's
hit ratio and bytes saved (`portico cache stats` when the gateway serves CacheAdmin, else the
same figures read from the cache's LMDB file once the gateway has stopped).

Usage: .venv/bin/python bench/cache.py [--duration 10] [--connections 16] [--telemetry]
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BINDIR, conditions, free_port, http_response, kill_all, measure, print_results, ratios, require_tools,
    start_mitmdump, start_portico, start_upstream, stop, wrk_parser,
)

BODY = b"<!doctype html><title>bench</title>" + b"x" * 1000
# /hit* cacheable for an hour, anything else no-store
HIT, MISS = http_response(BODY, cache_control="max-age=3600"), http_response(BODY)


CEILING_ADDON = f'''
from mitmproxy import http
BODY = {BODY!r}
class Fixed:
    def request(self, flow):
        flow.response = http.Response.make(200, BODY, {{"Content-Type": "text/html",
                                                        "Cache-Control": "max-age=3600"}})
addons = [Fixed()]
'''


def cache_stats(bindir: Path, grpc_port: int | None, cache_path: Path, after_stop: bool) -> tuple[str, dict]:
    """`portico cache stats --json` if the gateway serves it, else the LMDB file's own figures."""
    if not after_stop and grpc_port:
        out = subprocess.run([str(bindir / "portico"), "cache", "stats", "--json", "--server",
                              f"127.0.0.1:{grpc_port}", "--timeout", "5"], capture_output=True, text=True)
        if out.returncode == 0:
            return "portico cache stats", json.loads(out.stdout)
        return "", {}
    from addons.cache_store import CacheStore, CacheStoreSettings

    store = CacheStore(CacheStoreSettings(path=cache_path))
    try:
        return "cache LMDB file after stop", store.stats()
    finally:
        store.close()


def main() -> int:
    parser = wrk_parser(__doc__)
    parser.add_argument("--telemetry", action="store_true", help="run Portico with the event store on")
    args = parser.parse_args()
    require_tools("wrk")
    upstream, up_port = start_upstream(MISS, {b"/hit": HIT})
    ceil_port, bare_port, portico_port, grpc_port = (free_port() for _ in range(4))
    tmp = Path(tempfile.mkdtemp(prefix="portico-bench-cache-"))
    results: dict[str, dict[str, float]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    stats_source, stats = "", {}
    d, c = args.duration, args.connections
    try:
        script = tmp / "ceiling.py"
        script.write_text(CEILING_ADDON)
        ceiling = start_mitmdump(ceil_port, up_port, "-s", str(script), "--set", "connection_strategy=lazy")
        procs.append(ceiling)
        results["(b) engine ceiling"] = measure(f"http://127.0.0.1:{ceil_port}/hit", d, c)
        stop(ceiling, signal.SIGINT)

        bare = start_mitmdump(bare_port, up_port)
        procs.append(bare)
        results["(d) bare mitmdump"] = measure(f"http://127.0.0.1:{bare_port}/miss", d, c)
        stop(bare, signal.SIGINT)

        config = tmp / "portico.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{portico_port}\n"
            f"grpc: {{listen: 127.0.0.1:{grpc_port}}}\n"
            f"telemetry: {{enabled: {'true' if args.telemetry else 'false'}, path: {json.dumps(str(tmp / 'data'))}}}\n"
            f"logging: {{level: warning}}\n"
            f"cache: {{enabled: true, path: {json.dumps(str(tmp / 'cache'))}}}\n"
            f"routes: [{{match: {{host: '*', path_prefix: /}}, upstream: 'http://127.0.0.1:{up_port}'}}]\n")
        portico = start_portico(config, portico_port)
        procs.append(portico)
        # the hit run's warm-up makes the one miss that fills the cache
        results["(a) portico hit"] = measure(f"http://127.0.0.1:{portico_port}/hit", d, c)
        results["(c) portico miss"] = measure(f"http://127.0.0.1:{portico_port}/miss", d, c)
        stats_source, stats = cache_stats(BINDIR, grpc_port, tmp / "cache", after_stop=False)
        stop(portico)
        if not stats:
            stats_source, stats = cache_stats(BINDIR, None, tmp / "cache", after_stop=True)
    finally:
        kill_all([*procs, upstream])
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nHTTP/1.1 reverse proxy, {conditions(args)}, telemetry {'on' if args.telemetry else 'off'}")
    order = ("(a) portico hit", "(b) engine ceiling", "(c) portico miss", "(d) bare mitmdump")
    print_results(((name, results[name]) for name in order), 22)
    a, b, cm, bare_r = (results[k] for k in order)
    print(f"\nhit / ceiling:  {ratios(a, b, 0.95)}")
    print(f"miss / bare:    {ratios(cm, bare_r, 0.90)}")
    if stats:
        print(f"\ncache stats ({stats_source}): hit ratio {stats['hit_ratio']:.4f}, bytes saved {stats['bytes_saved']}, "
              f"objects {stats['objects']}, dedup ratio {stats['dedup_ratio']:.2f}, "
              f"hits {stats.get('hit')}, misses {stats.get('miss')}, bypass {stats.get('bypass')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
