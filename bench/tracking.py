"""Tracking overhead: the same HTML route with tracking (request events, link rewriting,
snippet injection, access log) on versus off, same run; and the beacon endpoint's events/s.

Starts a keep-alive upstream serving a ~2 KB HTML page with internal and external links
(its own process), then `portico run` twice in front of it (tracking off, then on; the
telemetry store is open in both), measured with `wrk` (Debian package). Then POSTs
beacon batches (10 events each) with wrk and reports events/s answered 202 (durable).

Usage: .venv/bin/python bench/tracking.py [--duration 10] [--connections 16]
Target: tracking on >= 0.9x tracking off.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    conditions, free_port, http_response, kill_all, measure, print_results, ratios, require_tools, run_wrk,
    start_portico, start_upstream, stop, wrk_parser,
)

LINKS = "".join(f"<li><a href='https://partner{i}.example.net/page/{i}'>partner {i}</a> "
                f"<a href='/local/{i}'>local {i}</a></li>" for i in range(12))
BODY = (f"<!doctype html><html><head><title>bench</title><link rel=stylesheet href=/s.css></head><body>"
        f"<h1>Bench</h1><ul>{LINKS}</ul><p>{'text ' * 150}</p></body></html>").encode()
EVENTS = json.dumps({"events": [{"type": "pageview", "url": f"/p/{i}", "ref": "https://www.google.com/"}
                                for i in range(5)] + [{"type": "click", "url": "/p/1", "track": "cta"}] * 5})


def start_gateway(tmp: Path, name: str, port: int, up_port: int, tracking: bool) -> subprocess.Popen[bytes]:
    config = tmp / f"{name}.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\ngrpc: {{listen: 127.0.0.1:0}}\ncache: {{enabled: false}}\n"
        f"telemetry: {{path: {json.dumps(str(tmp / name))}}}\nlogging: {{level: warning}}\n"
        f"routes: [{{name: site, match: {{host: '*', path_prefix: /}}, upstream: 'http://127.0.0.1:{up_port}'}}]\n"
        + (f"tracking: {{access_log: {{format: combined, path: {json.dumps(str(tmp / name / 'access.log'))}}}, "
           "beacon: {rate_per_minute: 100000000, max_events: 50}}\n" if tracking else "tracking: {enabled: false}\n"))
    return start_portico(config, port)


def main() -> int:
    parser = wrk_parser(__doc__)
    args = parser.parse_args()
    require_tools("wrk")
    upstream, up_port = start_upstream(http_response(BODY, content_type="text/html; charset=utf-8"))
    tmp = Path(tempfile.mkdtemp(prefix="portico-bench-tracking-"))
    results: dict[str, dict[str, float]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, on in (("tracking off", False), ("tracking on", True)):
            port = free_port()
            proc = start_gateway(tmp, name.replace(" ", "-"), port, up_port, on)
            procs.append(proc)
            results[name] = measure(f"http://127.0.0.1:{port}/page?utm_source=bench", args.duration,
                                    args.connections)
            if on:
                script = tmp / "beacon.lua"
                script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(EVENTS)}\n'
                                  'wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"\n')
                beacon_url = f"http://127.0.0.1:{port}/_portico/b"
                results["beacon (10 events)"] = run_wrk(beacon_url, args.duration, args.connections, script=script)
            stop(proc)
    finally:
        kill_all([*procs, upstream])
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nHTML route ({len(BODY)} bytes, 12 external links), {conditions(args)}")
    print_results(results.items(), 20)
    print(f"\nratio tracking on/off: {ratios(results['tracking on'], results['tracking off'], 0.90)}")
    print(f"beacon endpoint: {results['beacon (10 events)']['rps'] * 10:.0f} events/s durable (202)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
