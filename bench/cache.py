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
    """Keep-alive HTTP/1.1 server: /hit* cacheable for an hour, anything else no-store."""
    def response(cache_control: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nCache-Control: " + cache_control +
                b"\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
    hit, miss = response(b"max-age=3600"), response(b"no-store")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(hit if b" /hit" in head.split(b"\r\n", 1)[0] else miss)
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


CEILING_ADDON = f'''
from mitmproxy import http
BODY = {BODY!r}
class Fixed:
    def request(self, flow):
        flow.response = http.Response.make(200, BODY, {{"Content-Type": "text/html",
                                                        "Cache-Control": "max-age=3600"}})
addons = [Fixed()]
'''


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


def measure(url: str, duration: int, connections: int) -> dict[str, float]:
    run_wrk(url, 2, connections)  # warm-up (and, for the hit run, the one miss that fills the cache)
    return run_wrk(url, duration, connections)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def cache_stats(bindir: Path, grpc_port: int | None, cache_path: Path, after_stop: bool) -> tuple[str, dict]:
    """`portico cache stats --json` if the gateway serves it, else the LMDB file's own figures."""
    if not after_stop and grpc_port:
        out = subprocess.run([str(bindir / "portico"), "cache", "stats", "--json", "--server",
                              f"127.0.0.1:{grpc_port}", "--timeout", "5"], capture_output=True, text=True)
        if out.returncode == 0:
            return "portico cache stats", json.loads(out.stdout)
        return "", {}
    sys.path.insert(0, str(ROOT))
    from addons.cache_store import CacheStore, CacheStoreSettings

    store = CacheStore(CacheStoreSettings(path=cache_path))
    try:
        return "cache LMDB file after stop", store.stats()
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--telemetry", action="store_true", help="run Portico with the event store on")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("bench: wrk is not installed; run scripts/install-system-deps.sh", file=sys.stderr)
        return 2
    bindir = Path(sys.executable).parent
    up_port, ceil_port, bare_port, portico_port, grpc_port = (free_port() for _ in range(5))
    upstream = multiprocessing.Process(target=serve_upstream, args=(up_port,), daemon=True)
    upstream.start()
    wait_port(up_port)
    tmp = Path(tempfile.mkdtemp(prefix="portico-bench-cache-"))
    results: dict[str, dict[str, float]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    stats_source, stats = "", {}
    d, c = args.duration, args.connections
    try:
        script = tmp / "ceiling.py"
        script.write_text(CEILING_ADDON)
        ceiling = subprocess.Popen([str(bindir / "mitmdump"), "-q", "-s", str(script), "--set",
                                    "connection_strategy=lazy", "--mode",
                                    f"reverse:http://127.0.0.1:{up_port}@127.0.0.1:{ceil_port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(ceiling)
        wait_port(ceil_port)
        results["(b) engine ceiling"] = measure(f"http://127.0.0.1:{ceil_port}/hit", d, c)
        stop(ceiling)

        bare = subprocess.Popen([str(bindir / "mitmdump"), "-q", "--mode",
                                 f"reverse:http://127.0.0.1:{up_port}@127.0.0.1:{bare_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(bare)
        wait_port(bare_port)
        results["(d) bare mitmdump"] = measure(f"http://127.0.0.1:{bare_port}/miss", d, c)
        stop(bare)

        config = tmp / "portico.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{portico_port}\n"
            f"grpc: {{listen: 127.0.0.1:{grpc_port}}}\n"
            f"telemetry: {{enabled: {'true' if args.telemetry else 'false'}, path: {json.dumps(str(tmp / 'data'))}}}\n"
            f"logging: {{level: warning}}\n"
            f"cache: {{enabled: true, path: {json.dumps(str(tmp / 'cache'))}}}\n"
            f"routes: [{{match: {{host: '*', path_prefix: /}}, upstream: 'http://127.0.0.1:{up_port}'}}]\n")
        portico = subprocess.Popen([str(bindir / "portico"), "run", "--config", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(portico)
        wait_port(portico_port)
        results["(a) portico hit"] = measure(f"http://127.0.0.1:{portico_port}/hit", d, c)
        results["(c) portico miss"] = measure(f"http://127.0.0.1:{portico_port}/miss", d, c)
        stats_source, stats = cache_stats(bindir, grpc_port, tmp / "cache", after_stop=False)
        stop(portico, signal.SIGTERM)
        if not stats:
            stats_source, stats = cache_stats(bindir, None, tmp / "cache", after_stop=True)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        upstream.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nHTTP/1.1 reverse proxy, {c} keep-alive connections, {d}s each, {os.cpu_count()} cores, wrk -t1, "
          f"telemetry {'on' if args.telemetry else 'off'}")
    print(f"{'':22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for name in ("(a) portico hit", "(b) engine ceiling", "(c) portico miss", "(d) bare mitmdump"):
        r = results[name]
        print(f"{name:22}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['non2xx']:>10}")
    a, b, cm, bare_r = (results[k] for k in ("(a) portico hit", "(b) engine ceiling", "(c) portico miss",
                                             "(d) bare mitmdump"))
    print(f"\nhit / ceiling:  throughput {a['rps'] / b['rps']:.2f}x (target >= 0.95), "
          f"p50 {a['p50'] / b['p50']:.2f}x, p99 {a['p99'] / b['p99']:.2f}x")
    print(f"miss / bare:    throughput {cm['rps'] / bare_r['rps']:.2f}x (target >= 0.90), "
          f"p50 {cm['p50'] / bare_r['p50']:.2f}x, p99 {cm['p99'] / bare_r['p99']:.2f}x")
    if stats:
        print(f"\ncache stats ({stats_source}): hit ratio {stats['hit_ratio']:.4f}, bytes saved {stats['bytes_saved']}, "
              f"objects {stats['objects']}, dedup ratio {stats['dedup_ratio']:.2f}, "
              f"hits {stats.get('hit')}, misses {stats.get('miss')}, bypass {stats.get('bypass')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
