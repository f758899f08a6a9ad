"""What the HTTP benches share: a keep-alive upstream, ports, `wrk`, processes, the result table.

bench/proxy.py, cache.py, tracking.py, auth.py and guard.py each measure a gateway with `wrk`
against a small upstream in its own process; they import these helpers so that every
bench measures, starts, stops and prints the same way.

Import it as `bench.common` with the repository root on sys.path (run as a script,
bench/ is sys.path[0], and bench/proxy.py would shadow Portico's own `proxy` package).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINDIR = Path(sys.executable).parent
INSTALL_HINT = "run scripts/install-system-deps.sh"

Result = dict[str, float]


# ---- ports ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"bench: nothing listening on 127.0.0.1:{port} after {timeout}s")


# ---- the upstream ---------------------------------------------------------------------------

def http_response(body: bytes, content_type: str = "text/html", cache_control: str = "no-store") -> bytes:
    """A complete HTTP/1.1 200 response with a Content-Length (so the connection stays open)."""
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: {cache_control}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def serve_upstream(port: int, response: bytes, by_path_prefix: Mapping[bytes, bytes] | None = None,
                   respond: Callable[[bytes], bytes] | None = None) -> None:
    """A minimal keep-alive HTTP/1.1 server: `response` to every request, or the response of
    the first `by_path_prefix` entry whose prefix the request path starts with, or what
    `respond(request head)` returns (picklable: the server runs in its own process)."""
    routes = tuple((b" " + prefix, answer) for prefix, answer in (by_path_prefix or {}).items())

    def choose(head: bytes) -> bytes:
        line = head.split(b"\r\n", 1)[0]
        return next((answer for marker, answer in routes if marker in line), response)

    if respond is not None:
        choose = respond  # noqa: F811 - the caller decides

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(choose(head))
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


def start_upstream(response: bytes, by_path_prefix: Mapping[bytes, bytes] | None = None,
                   respond: Callable[[bytes], bytes] | None = None) -> tuple[multiprocessing.Process, int]:
    """`serve_upstream` in its own process (so it doesn't share a GIL with the gateway); waits until it listens."""
    port = free_port()
    proc = multiprocessing.Process(target=serve_upstream, args=(port, response, by_path_prefix, respond), daemon=True)
    proc.start()
    wait_port(port)
    return proc, port


# ---- processes ------------------------------------------------------------------------------

def require_tools(*names: str) -> None:
    """Exit with status 2 and a hint when one of these programs is not on PATH."""
    for name in names:
        if not shutil.which(name):
            print(f"bench: {name} is not installed; {INSTALL_HINT}", file=sys.stderr)
            raise SystemExit(2)


def start(cmd: Sequence[str], port: int) -> subprocess.Popen[bytes]:
    """Start a server quietly and wait until it listens on `port`."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
    except BaseException:
        proc.kill()
        raise
    return proc


def start_portico(config: Path, port: int) -> subprocess.Popen[bytes]:
    """`portico run --config CONFIG`, listening on `port`."""
    return start([str(BINDIR / "portico"), "run", "--config", str(config)], port)


def start_mitmdump(port: int, upstream_port: int, *options: str) -> subprocess.Popen[bytes]:
    """Bare `mitmdump` in reverse mode from 127.0.0.1:`port` to the upstream."""
    return start([str(BINDIR / "mitmdump"), "-q", *options, "--mode",
                  f"reverse:http://127.0.0.1:{upstream_port}@127.0.0.1:{port}"], port)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Ask a server to stop (so it shuts down as in production); kill it if it doesn't."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def kill_all(procs: Iterable[subprocess.Popen[bytes] | multiprocessing.Process | None]) -> None:
    """Kill what is still running (in a `finally`: a failed bench must not leave servers behind)."""
    for proc in procs:
        if isinstance(proc, subprocess.Popen):
            if proc.poll() is None:
                proc.kill()
        elif proc is not None:
            proc.kill()


# ---- load -----------------------------------------------------------------------------------

def wrk_parser(doc: str, duration: int = 10) -> argparse.ArgumentParser:
    """The options every `wrk` bench takes: --duration (seconds a run) and --connections."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=duration)
    parser.add_argument("--connections", type=int, default=16)
    return parser


def run_wrk(url: str, duration: int, connections: int, headers: Mapping[str, str] | None = None,
            script: Path | None = None) -> Result:
    """One `wrk -t1` run: requests/s, p50/p99 latency in ms, and the count of non-2xx/3xx answers."""
    cmd = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration}s", "--latency"]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "non2xx": int(errors.group(1)) if errors else 0}


def measure(url: str, duration: int, connections: int, headers: Mapping[str, str] | None = None) -> Result:
    """A 2 s warm-up (connections opened, lazy imports done, a cache filled), then the measured run."""
    run_wrk(url, 2, connections, headers)
    return run_wrk(url, duration, connections, headers)


# ---- output ---------------------------------------------------------------------------------

def conditions(args: argparse.Namespace) -> str:
    """`16 keep-alive connections, 10s each, 2 cores, wrk -t1`: what a table's figures were measured under."""
    return f"{args.connections} keep-alive connections, {args.duration}s each, {os.cpu_count()} cores, wrk -t1"


def print_results(results: Iterable[tuple[str, Result]], width: int) -> None:
    """The table every HTTP bench prints: req/s, p50 and p99 in ms, non-2xx, one row a run."""
    print(f"{'':{width}}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for name, r in results:
        print(f"{name:{width}}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['non2xx']:>10.0f}")


def ratios(a: Result, b: Result, target: float | None = None) -> str:
    """`throughput 0.97x (target >= 0.90), p50 1.03x, p99 1.10x`: run a relative to run b."""
    aim = f" (target >= {target:.2f})" if target is not None else ""
    return (f"throughput {a['rps'] / b['rps']:.2f}x{aim}, "
            f"p50 {a['p50'] / b['p50']:.2f}x, p99 {a['p99'] / b['p99']:.2f}x")
