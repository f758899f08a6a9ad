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

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = b"<!doctype html><title>bench</title>" + b"x" * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_upstream(port: int) -> None:
    """A minimal keep-alive HTTP/1.1 server answering every request with the same page."""
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nCache-Control: no-store\r\n"
                b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
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


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"bench: nothing listening on 127.0.0.1:{port} after {timeout}s")


def run_wrk(url: str, duration: int, connections: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "non2xx": int(errors.group(1)) if errors else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-telemetry", action="store_true", help="run Portico without the event store")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("bench: wrk is not installed; run scripts/install-system-deps.sh", file=sys.stderr)
        return 2
    bindir = Path(sys.executable).parent
    up_port, bare_port, portico_port = free_port(), free_port(), free_port()
    upstream = multiprocessing.Process(target=serve_upstream, args=(up_port,), daemon=True)
    upstream.start()
    wait_port(up_port)
    results: dict[str, dict[str, float]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="portico-bench-"))
    try:
        results["upstream direct"] = run_wrk(f"http://127.0.0.1:{up_port}/page", args.duration, args.connections)

        bare = subprocess.Popen([str(bindir / "mitmdump"), "-q", "--mode",
                                 f"reverse:http://127.0.0.1:{up_port}@127.0.0.1:{bare_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(bare)
        wait_port(bare_port)
        run_wrk(f"http://127.0.0.1:{bare_port}/page", 2, args.connections)  # warm-up
        results["bare mitmdump"] = run_wrk(f"http://127.0.0.1:{bare_port}/page", args.duration, args.connections)
        bare.send_signal(signal.SIGINT)
        bare.wait(15)

        config = tmp / "portico.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{portico_port}\n"
            f"grpc: {{listen: 127.0.0.1:0}}\n"
            f"telemetry: {{enabled: {'false' if args.no_telemetry else 'true'}, path: {json.dumps(str(tmp / 'data'))}}}\n"
            f"logging: {{level: warning}}\n"
            f"routes: [{{match: {{host: '*', path_prefix: /}}, upstream: 'http://127.0.0.1:{up_port}'}}]\n")
        portico = subprocess.Popen([str(bindir / "portico"), "run", "--config", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(portico)
        wait_port(portico_port)
        run_wrk(f"http://127.0.0.1:{portico_port}/page", 2, args.connections)  # warm-up
        results["portico run"] = run_wrk(f"http://127.0.0.1:{portico_port}/page", args.duration, args.connections)
        portico.send_signal(signal.SIGTERM)
        portico.wait(30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        upstream.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nHTTP/1.1 reverse proxy, {args.connections} keep-alive connections, {args.duration}s each, "
          f"{os.cpu_count()} cores, wrk -t1")
    print(f"{'':18}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for name, r in results.items():
        print(f"{name:18}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['non2xx']:>10}")
    bare_r, portico_r = results["bare mitmdump"], results["portico run"]
    print(f"\nratio portico/bare: throughput {portico_r['rps'] / bare_r['rps']:.2f}x, "
          f"p50 {portico_r['p50'] / bare_r['p50']:.2f}x, p99 {portico_r['p99'] / bare_r['p99']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
