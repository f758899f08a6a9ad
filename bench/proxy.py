"""Gateway throughput: Portico versus bare mitmproxy, same upstream, same load, one run.

Starts a small keep-alive upstream (its own process), then measures with `wrk`
(Debian package, installed by scripts/install-system-deps.sh):
  1. the upstream directly (the ceiling of this machine's loopback + wrk),
  2. bare `mitmdump` in reverse mode in front of it (the engine's own cost),
  3. `portico run` in front of it with the same route (engine + Portico's addons).
Prints requests/s, p50/p99 latency and the ratio Portico / bare mitmdump.

Usage: .venv/bin/python bench/proxy.py [--duration 10] [--connections 16] [--no-telemetry]
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    conditions, free_port, http_response, kill_all, measure, print_results, ratios, require_tools, run_wrk,
    start_mitmdump, start_portico, start_upstream, stop, wrk_parser,
)

BODY = b"<!doctype html><title>bench</title>" + b"x" * 1000


def main() -> int:
    parser = wrk_parser(__doc__)
    parser.add_argument("--no-telemetry", action="store_true", help="run Portico without the event store")
    args = parser.parse_args()
    require_tools("wrk")
    upstream, up_port = start_upstream(http_response(BODY))
    bare_port, portico_port = free_port(), free_port()
    results: dict[str, dict[str, float]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="portico-bench-"))
    try:
        results["upstream direct"] = run_wrk(f"http://127.0.0.1:{up_port}/page", args.duration, args.connections)

        bare = start_mitmdump(bare_port, up_port)
        procs.append(bare)
        results["bare mitmdump"] = measure(f"http://127.0.0.1:{bare_port}/page", args.duration, args.connections)
        stop(bare, signal.SIGINT, 15)

        config = tmp / "portico.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{portico_port}\n"
            f"grpc: {{listen: 127.0.0.1:0}}\n"
            f"telemetry: {{enabled: {'false' if args.no_telemetry else 'true'}, path: {json.dumps(str(tmp / 'data'))}}}\n"
            f"logging: {{level: warning}}\n"
            f"routes: [{{match: {{host: '*', path_prefix: /}}, upstream: 'http://127.0.0.1:{up_port}'}}]\n")
        portico = start_portico(config, portico_port)
        procs.append(portico)
        results["portico run"] = measure(f"http://127.0.0.1:{portico_port}/page", args.duration, args.connections)
        stop(portico)
    finally:
        kill_all([*procs, upstream])
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nHTTP/1.1 reverse proxy, {conditions(args)}")
    print_results(results.items(), 18)
    print(f"\nratio portico/bare: {ratios(results['portico run'], results['bare mitmdump'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
