"""Tracking overhead: the same HTML route with tracking (request events, link rewriting,
snippet injection) on versus off, same run; and the beacon endpoint's events/s.

Starts a keep-alive upstream (its own process) serving a ~2 KB HTML page with internal and
external links, then three `portico run` in front of it (the telemetry store open in all):
- "off": tracking disabled;
- "on": tracking with its defaults: a `request` event per request, the 12 external links
  rewritten, the snippet injected (checked on a first response before measuring). This is
  the issue's "tracking, HTML rewriting and injection on";
- "on+log": the same plus the operators' combined access log to a file (off by default, an
  ops feature of its own), so its cost is visible too.
All do the same upstream work. Two kinds of noise on this shared 2-core machine, both
measured: its speed drifts by +-20% within minutes (another tenant, CPU frequency), and a
gateway process is faster or slower than another with the same code and config by up to
~8% for its whole life (memory layout: fixing PYTHONHASHSEED does not remove it). So every
round starts fresh processes (a new draw of that luck for each side), measures each for a
short window (5 s, after a warm-up of each page), back to back, in one order and then
reversed in the next round (ABC CBA, pages too: a steady drift cancels out within a pair of
rounds), and stops them. Ratios are taken per round; their median over the rounds is
reported with the interquartile range.

Four pages, all the same HTML but for what changes per request:
- `/page`: nothing, the same bytes every time (a static page: the HTML editor's memo hits);
- `/unique`: a counter in a comment (digits; the editor's page template serves it);
- `/token`: a 32-character CSRF token in a hidden input, new every request (letters and
  digits in an attribute value, where no editor looks: the template serves it too);
- `/rewrite`: the same token also in an absolute link the gateway rewrites (the template
  still serves the page, but that link is signed anew on every request; the worst case).
Then POSTs beacon batches (10 events each) with wrk and reports events/s answered 202
(durable). Measured with `wrk` (Debian package).

Usage: .venv/bin/python bench/tracking.py [--duration 5] [--connections 16] [--rounds 10]
Target: tracking on >= 0.9x tracking off.
"""

from __future__ import annotations

import glob
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    conditions, free_port, kill_all, print_results, require_tools, run_wrk, start_portico, start_upstream, stop,
    wrk_parser,
)

LINKS = "".join(f"<li><a href='https://partner{i}.example.net/page/{i}'>partner {i}</a> "
                f"<a href='/local/{i}'>local {i}</a></li>" for i in range(12))
BODY = (f"<!doctype html><html><head><title>bench</title><link rel=stylesheet href=/s.css></head><body>"
        f"<h1>Bench</h1><ul>{LINKS}</ul><p>{'text ' * 150}</p></body></html>").encode()
EVENTS = json.dumps({"events": [{"type": "pageview", "url": f"/p/{i}", "ref": "https://www.google.com/"}
                                for i in range(5)] + [{"type": "click", "url": "/p/1", "track": "cta"}] * 5})


def _response(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class PageResponder:
    """BODY for every path; per request, a counter under /unique, a token under /token and
    /rewrite (picklable, for the upstream's own process)."""

    def __init__(self) -> None:
        self.fixed = _response(BODY)
        self.counter = 0

    def __call__(self, head: bytes) -> bytes:
        if head.startswith(b"GET /unique"):
            self.counter += 1
            return _response(BODY.replace(b"<h1>", b"<!-- %08d --><h1>" % self.counter, 1))
        if head.startswith((b"GET /token", b"GET /rewrite")):
            token = secrets.token_urlsafe(24).replace("-", "x").replace("_", "y").encode()  # like Django's
            page = BODY.replace(b"<h1>", b'<input type=hidden name=csrf value="%s"><h1>' % token, 1)
            if head.startswith(b"GET /rewrite"):
                page = page.replace(b"/page/0'", b"/page/0?t=%s'" % token, 1)
            return _response(page)
        return self.fixed


# side -> its tracking section: off; on with the defaults (request events, link rewriting,
# snippet injection: what the issue's target is about); on plus the operators' access log
# (off by default; a separate ops feature, measured apart so its cost is visible too).
SIDES = {
    "off": lambda tmp: "tracking: {enabled: false}\n",
    "on": lambda tmp: "tracking: {beacon: {rate_per_minute: 100000000, max_events: 50}}\n",
    "on+log": lambda tmp: (f"tracking: {{access_log: {{format: combined, path: {json.dumps(str(tmp / 'access.log'))}}}, "
                           "beacon: {rate_per_minute: 100000000, max_events: 50}}\n"),
}


def start_gateway(tmp: Path, name: str, port: int, up_port: int, side: str) -> subprocess.Popen[bytes]:
    config = tmp / f"{name}.yaml"
    data = tmp / name
    data.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f"listen: 127.0.0.1:{port}\ngrpc: {{listen: 127.0.0.1:0}}\ncache: {{enabled: false}}\n"
        f"telemetry: {{path: {json.dumps(str(data))}}}\nlogging: {{level: warning}}\n"
        f"routes: [{{name: site, match: {{host: '*', path_prefix: /}}, upstream: 'http://127.0.0.1:{up_port}'}}]\n"
        + SIDES[side](data))
    return start_portico(config, port)


def cpu_ns(pid: int) -> dict[str, int]:
    """On-CPU nanoseconds so far (Linux schedstat) of the gateway's main thread, its other
    threads (the store's writer...) and its child processes (the follower); {} elsewhere."""
    out = {"main": 0, "threads": 0, "children": 0}
    try:
        children = [int(c) for p in glob.glob(f"/proc/{pid}/task/*/children")
                    for c in open(p).read().split()]  # noqa: SIM115 - /proc files, read at once
        for proc in (pid, *children):
            for task in glob.glob(f"/proc/{proc}/task/*"):
                with open(f"{task}/schedstat") as f:
                    ns = int(f.read().split()[0])
                kind = "children" if proc != pid else "main" if task.endswith(f"/{pid}") else "threads"
                out[kind] += ns
    except (OSError, ValueError):
        return {}
    return out


def check_sides(ports: dict[str, int]) -> None:
    """Refuse to measure unless the tracking sides really edit the page and the off side doesn't."""
    for side, port in ports.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/unique", timeout=10) as resp:  # noqa: S310
            page = resp.read()
        edited = page.count(b'href="/_portico/out?') == 12 and b'<script src="/_portico/t.js"' in page
        if edited != (side != "off"):
            raise SystemExit(f"bench: side {side!r} {'did not edit' if side != 'off' else 'edited'} the page: "
                             f"{page[:300]!r}")


def main() -> int:
    parser = wrk_parser(__doc__, duration=5)
    parser.add_argument("--rounds", type=int, default=10)  # the machine is shared: medians of many rounds
    args = parser.parse_args()
    require_tools("wrk")
    upstream, up_port = start_upstream(b"", respond=PageResponder())
    tmp = Path(tempfile.mkdtemp(prefix="portico-bench-tracking-"))
    results: dict[str, dict[str, float]] = {}
    pages = ("/page", "/unique", "/token", "/rewrite")
    ratios: dict[tuple[str, str], list[float]] = {(page, side): [] for page in pages for side in ("on", "on+log")}
    procs: dict[str, subprocess.Popen[bytes]] = {}  # side -> this round's gateway process
    cpu: dict[tuple[str, str, str], list[float]] = {}  # (page, side, part) -> us of CPU per request, per run
    try:
        for r in range(1, args.rounds + 1):
            ports = {side: free_port() for side in SIDES}  # fresh processes: a new memory layout each round
            for side, port in ports.items():
                procs[side] = start_gateway(tmp / f"round-{r}", f"tracking-{side.replace('+', '-')}", port,
                                            up_port, side)
            if r == 1:
                check_sides(ports)
            for page in (pages if r % 2 else pages[::-1]):
                for side in ports:  # warm-up: connections, lazy imports, memos, the follower's first folds
                    run_wrk(f"http://127.0.0.1:{ports[side]}{page}?utm_source=bench", 2, args.connections)
                for side in (list(ports) if r % 2 else list(ports)[::-1]):  # ABC, CBA, ...
                    url = f"http://127.0.0.1:{ports[side]}{page}?utm_source=bench"
                    before = cpu_ns(procs[side].pid)
                    result = results[f"{page} {side} #{r}"] = run_wrk(url, args.duration, args.connections)
                    after = cpu_ns(procs[side].pid)
                    for part in after if before else ():
                        cpu.setdefault((page, side, part), []).append(
                            (after[part] - before[part]) / 1000 / max(1.0, result["rps"] * args.duration))
                for side in ("on", "on+log"):
                    ratios[(page, side)].append(results[f"{page} {side} #{r}"]["rps"]
                                                / results[f"{page} off #{r}"]["rps"])
            if r < args.rounds:
                for side in ports:
                    stop(procs.pop(side))
        script = tmp / "beacon.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(EVENTS)}\n'
                          'wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"\n')
        results["beacon (10 events)"] = run_wrk(f"http://127.0.0.1:{ports['on']}/_portico/b", 10,
                                                args.connections, script=script)
        for proc in procs.values():
            stop(proc)
    finally:
        kill_all([*procs.values(), upstream])
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nHTML route ({len(BODY)} bytes, 12 external links), {conditions(args)}, {args.rounds} rounds, "
          "fresh gateway processes each round")
    print_results(results.items(), 22)
    for (page, side), values in ratios.items():
        target = " (target >= 0.90)" if side == "on" else " (access log too: not in the target)"
        q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
        print(f"ratio {side + '/off':10} {page:8}: median {statistics.median(values):.2f}x{target}, "
              f"interquartile {q1:.2f}-{q3:.2f}, range {min(values):.2f}-{max(values):.2f}, "
              f"rounds: {', '.join(f'{v:.2f}' for v in values)}")
    if cpu:
        print("CPU per request (Linux schedstat, median of the runs; the main thread runs the event loop,"
              " threads = the store's writer..., children = the follower process):")
        for page in pages:
            for side in SIDES:
                parts = {part: statistics.median(cpu[(page, side, part)]) for part in ("main", "threads", "children")
                         if (page, side, part) in cpu}
                print(f"  {page:8} {side:7} " + ", ".join(f"{part} {us:6.1f} us" for part, us in parts.items()))
            if (page, "on", "main") in cpu:
                off_us, on_us = (statistics.median(cpu[(page, side, "main")]) for side in ("off", "on"))
                print(f"  {page:8} the event loop's thread (which limits throughput): on costs {on_us - off_us:+.0f} us"
                      f" a request, off/on {off_us / on_us:.2f}x")
    print(f"beacon endpoint: {results['beacon (10 events)']['rps'] * 10:.0f} events/s durable (202)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
