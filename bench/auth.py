"""What authentication costs: the session-cookie path vs no auth, and cold LDAP logins.

One `portico run` with LDAP auth (a seeded local slapd, StartTLS with a test CA) in front
of a small keep-alive upstream, one route; measured with `wrk` in the same run,
alternating so drift hits both sides:
  A. `/open/page`: an `access_control` bypass rule, no credentials (no auth work beyond
     looking for a cookie),
  B. `/members/page`: `authenticated`, with a valid session cookie (HMAC verify, no LDAP).
Target: B costs <= 5% of A's throughput.

Then the directory itself, with caches off (`auth_cache_ttl: 0`): the latency of a login
on pooled connections (user search + group search + bind as the user), and of a fully
cold one (new TCP + StartTLS + service bind + search + user bind), p50/p99.

Usage: .venv/bin/python bench/auth.py [--duration 5] [--rounds 5] [--connections 16] [--logins 300]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auth.ldap import LdapDirectory, LdapSettings  # noqa: E402
from bench.common import (  # noqa: E402
    free_port, http_response, kill_all, print_results, run_wrk, start_portico, start_upstream, stop, wrk_parser,
)
from tests.auth.slapd import SERVICE_DN, SERVICE_PW, SUFFIX, Slapd, slapd_available  # noqa: E402

BODY = b"<!doctype html><title>bench</title>" + b"x" * 1000


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - keep the 303
        return None


def session_cookie(base: str) -> str:
    body = urllib.parse.urlencode({"username": "alice", "password": "alice-pw", "next": "/"}).encode()
    req = urllib.request.Request(base + "/_portico/login", data=body,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        opener.open(req, timeout=10)
    except urllib.error.HTTPError as e:
        if e.code != 303:
            raise SystemExit(f"bench: login failed with {e.code}")
        return e.headers["Set-Cookie"].split(";", 1)[0]
    raise SystemExit("bench: login did not redirect")


def percentiles(samples: list[float]) -> tuple[float, float]:
    qs = statistics.quantiles(samples, n=100, method="inclusive")
    return qs[49], qs[98]


def ldap_latency(slapd: Slapd, logins: int) -> dict[str, tuple[float, float, int]]:
    pw = Path(tempfile.mkdtemp(prefix="portico-bench-pw-")) / "pw"
    pw.write_text(SERVICE_PW)
    settings = LdapSettings(urls=(slapd.ldap_url,), start_tls=True, ca_file=str(slapd.ca.ca_file),
                            base_dn=SUFFIX, bind_dn=SERVICE_DN, password_file=str(pw), auth_cache_ttl=0,
                            group_cache_ttl=0)
    out = {}
    directory = LdapDirectory(settings)
    directory.authenticate("alice", "alice-pw")  # open the pools
    samples = []
    for _ in range(logins):
        t = time.perf_counter()
        directory.authenticate("alice", "alice-pw")
        samples.append((time.perf_counter() - t) * 1000)
    directory.close()
    out["uncached login, pooled connections"] = (*percentiles(samples), logins)
    samples = []
    cold = max(20, logins // 6)
    for _ in range(cold):
        fresh = LdapDirectory(settings)
        t = time.perf_counter()
        fresh.authenticate("alice", "alice-pw")
        samples.append((time.perf_counter() - t) * 1000)
        fresh.close()
    out["cold login, new StartTLS connections"] = (*percentiles(samples), cold)
    shutil.rmtree(pw.parent, ignore_errors=True)
    return out


def main() -> int:
    parser = wrk_parser(__doc__, duration=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--logins", type=int, default=300)
    args = parser.parse_args()
    if not shutil.which("wrk") or not slapd_available():
        print("bench: wrk and slapd are needed; run scripts/install-system-deps.sh", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="portico-bench-auth-"))
    slapd = Slapd(tmp / "slapd").start()
    portico_port = free_port()
    upstream: multiprocessing.Process | None = None
    portico: subprocess.Popen[bytes] | None = None
    results: dict[str, list[dict[str, float]]] = {"A no auth (bypass)": [], "B session cookie": []}
    try:
        slapd.seed()
        upstream, up_port = start_upstream(http_response(BODY))
        (tmp / "service.pw").write_text(SERVICE_PW)
        config = tmp / "portico.yaml"
        config.write_text(f"""
listen: 127.0.0.1:{portico_port}
grpc: {{listen: 127.0.0.1:0}}
telemetry: {{enabled: false, path: {json.dumps(str(tmp / 'data'))}}}
logging: {{level: warning}}
routes: [{{match: {{host: '*', path_prefix: /}}, upstream: 'http://127.0.0.1:{up_port}'}}]
auth:
  backend: ldap
  ldap: {{urls: ['{slapd.ldap_url}'], start_tls: true, ca_file: {json.dumps(str(slapd.ca.ca_file))},
         base_dn: '{SUFFIX}', bind_dn: '{SERVICE_DN}', password_file: {json.dumps(str(tmp / 'service.pw'))}}}
access_control:
  rules:
    - {{path_prefixes: [/open/], policy: bypass}}
    - {{path_prefixes: [/members/], policy: authenticated}}
""")
        portico = start_portico(config, portico_port)
        base = f"http://127.0.0.1:{portico_port}"
        cookie = session_cookie(base)
        urls = {"A no auth (bypass)": (f"{base}/open/page", {}),
                "B session cookie": (f"{base}/members/page", {"Cookie": cookie})}
        for name, (url, headers) in urls.items():  # warm-up, and check both really answer 200
            r = run_wrk(url, 2, args.connections, headers)
            if r["non2xx"]:
                raise SystemExit(f"bench: {name} answered {r['non2xx']} non-2xx responses")
        for _ in range(args.rounds):
            for name, (url, headers) in urls.items():
                results[name].append(run_wrk(url, args.duration, args.connections, headers))
        stop(portico)
        ldap = ldap_latency(slapd, args.logins)
    finally:
        kill_all([portico, upstream])
        slapd.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nAuth cost through the gateway: {args.connections} keep-alive connections, "
          f"{args.rounds}x{args.duration}s each, alternating, medians, {os.cpu_count()} cores, wrk -t1")
    # the median of alternating rounds: a shared 2-core machine is noisy
    mean = {name: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99", "non2xx")}
            for name, runs in results.items()}
    print_results(mean.items(), 22)
    a, b = mean["A no auth (bypass)"], mean["B session cookie"]
    cost = 1 - b["rps"] / a["rps"]
    print("per-round req/s: " + "; ".join(f"{n.split()[0]}: " + ", ".join(f"{r['rps']:.0f}" for r in runs)
                                          for n, runs in results.items()))
    print(f"\nsession path throughput cost: {cost * 100:+.1f}% (target <= 5%): "
          f"{'OK' if cost <= 0.05 else 'OVER TARGET'}")
    print("\nLDAP logins against the local slapd (StartTLS), caches off:")
    print(f"{'':40}{'p50 ms':>10}{'p99 ms':>10}{'n':>6}")
    for name, (p50, p99, n) in ldap.items():
        print(f"{name:40}{p50:>10.2f}{p99:>10.2f}{n:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
