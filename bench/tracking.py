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

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.proxy import free_port, run_wrk, wait_port  # noqa: E402

LINKS = "".join(f"<li><a href='https://partner{i}.example.net/page/{i}'>partner {i}</a> "
                f"<a href='/local/{i}'>local {i}</a></li>" for i in range(12))
BODY = (f"<!doctype html><html><head><title>bench</title><link rel=stylesheet href=/s.css></head><body>"
        f"<h1>Bench</h1><ul>{LINKS}</ul><p>{'text ' * 150}</p></body></html>").encode()
EVENTS = json.dumps({"events": [{"type": "pageview", "url": f"/p/{i}", "ref": "https://www.google.com/"}
                                for i in range(5)] + [{"type": "click", "url": "/p/1", "track": "cta"}] * 5})


def serve_upstream(port: int) -> None:
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n"
                b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_portico(tmp: Path, name: str, port: int, up_port: int, tracking: bool) -> subprocess.Popen[bytes]:
    config = tmp / f"{name}.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\ngrpc: {{listen: 127.0.0.1:0}}\ncache: {{enabled: false}}\n"
        f"telemetry: {{path: {json.dumps(str(tmp / name))}}}\nlogging: {{level: warning}}\n"
        f"routes: [{{name: site, match: {{host: '*', path_prefix: /}}, upstream: 'http://127.0.0.1:{up_port}'}}]\n"
        + (f"tracking: {{access_log: {{format: combined, path: {json.dumps(str(tmp / name / 'access.log'))}}}, "
           "beacon: {rate_per_minute: 100000000, max_events: 50}}\n" if tracking else "tracking: {enabled: false}\n"))
    proc = subprocess.Popen([str(Path(sys.executable).parent / "portico"), "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("bench: wrk is not installed; run scripts/install-system-deps.sh", file=sys.stderr)
        return 2
    up_port = free_port()
    upstream = multiprocessing.Process(target=serve_upstream, args=(up_port,), daemon=True)
    upstream.start()
    wait_port(up_port)
    tmp = Path(tempfile.mkdtemp(prefix="portico-bench-tracking-"))
    results: dict[str, dict[str, float]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, on in (("tracking off", False), ("tracking on", True)):
            port = free_port()
            proc = start_portico(tmp, name.replace(" ", "-"), port, up_port, on)
            procs.append(proc)
            url = f"http://127.0.0.1:{port}/page?utm_source=bench"
            run_wrk(url, 2, args.connections)  # warm-up
            results[name] = run_wrk(url, args.duration, args.connections)
            if on:
                script = tmp / "beacon.lua"
                script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(EVENTS)}\n'
                                  'wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"\n')
                beacon_url = f"http://127.0.0.1:{port}/_portico/b"
                out = subprocess.run(["wrk", "-t", "1", "-c", str(args.connections), "-d", f"{args.duration}s",
                                      "--latency", "-s", str(script), beacon_url],
                                     capture_output=True, text=True, check=True).stdout
                import re

                rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
                results["beacon (10 events)"] = {"rps": rps, "p50": float("nan"), "p99": float("nan"),
                                                 "non2xx": int(bad.group(1)) if bad else 0}
            stop(proc)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        upstream.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nHTML route ({len(BODY)} bytes, 12 external links), {args.connections} keep-alive connections, "
          f"{args.duration}s each, {os.cpu_count()} cores, wrk -t1")
    print(f"{'':20}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for name, r in results.items():
        print(f"{name:20}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['non2xx']:>10}")
    off, on = results["tracking off"], results["tracking on"]
    print(f"\nratio tracking on/off: throughput {on['rps'] / off['rps']:.2f}x (target >= 0.90x), "
          f"p50 {on['p50'] / off['p50']:.2f}x")
    print(f"beacon endpoint: {results['beacon (10 events)']['rps'] * 10:.0f} events/s durable (202)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
