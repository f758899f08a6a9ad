"""Cost of Portico's protection: moderation + phishing checks on vs off, and DNS latency.

1. One keep-alive upstream serving an HTML page (text + links), then `portico run` twice
   in the same run with the same route: checks off (no moderation/phishing sections) and
   on (`moderate: true`, `check_links: true`, categories with domain/URL/phrase lists,
   phishing with the default protected list). Measured with `wrk`; target on/off >= 0.9x.
2. Encrypted DNS with a real unbound on loopback (DoT, test CA): p50/p99 of a cold lookup
   (cache miss; on a new TLS connection, and on a reused one) versus a cached one.

Usage: .venv/bin/python bench/guard.py [--duration 10] [--connections 16] [--lookups 300]
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from addons.dns_resolver import EncryptedResolver, ResolverSettings, ResolverSpec  # noqa: E402
from bench.common import (  # noqa: E402
    conditions, free_port, http_response, kill_all, measure, print_results, ratios, require_tools,
    start_portico, start_upstream, stop, wrk_parser,
)
from tests.guard.unbound import SERVER_NAME, Unbound  # noqa: E402

PAGE = ("<!doctype html><html><head><title>Community news</title><style>p{margin:0}</style></head><body>"
        + "<p>Opening hours, events and directions for the community centre.</p>" * 12
        + "".join(f'<a href="https://partner{i}.org/page">partner {i}</a>' for i in range(20))
        + '<a href="https://www.example.org/">home</a></body></html>').encode()

CHECKS = """
moderation:
  categories:
    - {name: gambling, action: block, threshold: 10, phrases: {jackpot: 5, "free spins": 2, casino: 3},
       domains: ["||casino.example^"], url_patterns: ["/betting/"]}
    - {name: hate, action: warn, threshold: 6, phrases: {vermin: 3, subhuman: 4}}
phishing: {protected_domains: [example.org]}
"""


def run_portico(tmp: Path, up_port: int, checks: bool, duration: int, connections: int) -> dict[str, float]:
    port = free_port()
    config = tmp / f"portico-{'on' if checks else 'off'}.yaml"
    route_flags = ", moderate: true, check_links: true" if checks else ""
    config.write_text(
        f"listen: 127.0.0.1:{port}\ngrpc: {{listen: 127.0.0.1:0}}\ntelemetry: {{enabled: false}}\n"
        f"logging: {{level: warning}}\n"
        f"routes: [{{match: {{host: '*', path_prefix: /}}, upstream: 'http://127.0.0.1:{up_port}'{route_flags}}}]\n"
        + (CHECKS if checks else ""))
    proc = start_portico(config, port)
    try:
        return measure(f"http://127.0.0.1:{port}/page", duration, connections)
    finally:
        stop(proc)


async def dns_latency(u: Unbound, lookups: int) -> dict[str, list[float]]:
    spec = ResolverSpec("dot", "127.0.0.1", u.dot_port, server_name=SERVER_NAME, ca_file=u.ca_file)
    resolver = EncryptedResolver(ResolverSettings((spec,), ipv6=True))
    cold, cached, fresh = [], [], []
    for i in range(min(lookups, 50)):  # cache miss on a new TLS connection (handshake included)
        await resolver.aclose()
        resolver.clear_cache()
        t = time.perf_counter()
        await resolver.lookup(f"host{i % 50}.bench.test")
        fresh.append((time.perf_counter() - t) * 1000)
    for i in range(lookups):
        name = f"host{i % 50}.bench.test"
        resolver.clear_cache()
        t = time.perf_counter()
        await resolver.lookup(name)
        cold.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        await resolver.lookup(name)
        cached.append((time.perf_counter() - t) * 1000)
    await resolver.aclose()
    return {"cold, new TLS connection": fresh, "cold, reused connection": cold, "cached": cached}


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def main() -> int:
    parser = wrk_parser(__doc__)
    parser.add_argument("--lookups", type=int, default=300)
    args = parser.parse_args()
    require_tools("wrk", "unbound")
    tmp = Path(tempfile.mkdtemp(prefix="portico-guard-bench-"))
    upstream, up_port = start_upstream(http_response(PAGE))
    try:
        off = run_portico(tmp, up_port, False, args.duration, args.connections)
        on = run_portico(tmp, up_port, True, args.duration, args.connections)
        u = Unbound(tmp / "unbound", [f"host{i}.bench.test. 300 IN A 127.0.0.{i + 1}" for i in range(50)])
        try:
            lat = asyncio.run(dns_latency(u, args.lookups))
        finally:
            u.stop()
    finally:
        kill_all([upstream])
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nHTML page {len(PAGE)} bytes with 21 links, {conditions(args)}")
    print_results((("checks off", off), ("moderation+phishing", on)), 22)
    print(f"ratio on/off: {ratios(on, off, 0.90)}")
    print(f"\nDNS over TLS to unbound on loopback, {args.lookups} lookups (A+AAAA), ms:")
    for name, values in lat.items():
        print(f"  {name:26} p50 {pct(values, 50):8.3f}   p99 {pct(values, 99):8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
