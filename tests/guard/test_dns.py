"""Encrypted DNS against a real unbound (DoT and DoH, test CA), alone and through the gateway."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mitmproxy.test import tflow

from addons import dns_resolver, metadata
from addons.dns_resolver import DnsResolutionError, EncryptedResolver, ResolverSettings, ResolverSpec
from addons.dnsguard import DnsGuard, DnsGuardSettings, doh_signal, KNOWN_DOH_HOSTS
from tests.guard.conftest import dns_yaml
from tests.guard.unbound import SERVER_NAME, Unbound
from tests.integration.harness import GatewayThread, proxy_request, request


def spec(u: Unbound, protocol: str = "dot", **kw) -> ResolverSpec:
    base = dict(protocol=protocol, address="127.0.0.1", port=u.dot_port if protocol == "dot" else u.doh_port,
                server_name=SERVER_NAME, ca_file=u.ca_file, timeout=2.0)
    base.update(kw)
    return ResolverSpec(**base)


def lookup(settings: ResolverSettings, *hosts: str):
    async def run():
        r = EncryptedResolver(settings)
        try:
            return [await r.lookup(h) for h in hosts]
        finally:
            await r.aclose()
    return asyncio.run(run())


@pytest.mark.parametrize("protocol", ["dot", "doh"])
def test_resolves_a_and_aaaa_over_encrypted_dns(unbound, protocol):
    (res,) = lookup(ResolverSettings((spec(unbound, protocol),)), "dual.test")
    assert set(res.addresses) == {"127.0.0.1", "::1"}
    assert res.addresses[0] == "127.0.0.1"  # IPv4 first
    assert res.how == protocol
    assert res.resolver.startswith("tls://dns.test" if protocol == "dot" else "https://dns.test")


@pytest.mark.parametrize("protocol", ["dot", "doh"])
def test_strict_name_check_fails_with_a_wrong_name(unbound, protocol):
    with pytest.raises(DnsResolutionError) as e:
        lookup(ResolverSettings((spec(unbound, protocol, server_name="wrong.test"),)), "upstream.test")
    assert "wrong.test" in str(e.value)
    assert "certificate" in str(e.value).lower() or "hostname" in str(e.value).lower()


def test_spki_pin_authenticates_without_a_name_and_a_wrong_pin_fails(unbound):
    (res,) = lookup(ResolverSettings((spec(unbound, server_name=None, spki_pins=(unbound.spki_pin,)),)),
                    "upstream.test")
    assert res.addresses == ("127.0.0.1",)
    with pytest.raises(DnsResolutionError, match="spki_pin"):
        lookup(ResolverSettings((spec(unbound, server_name=None, spki_pins=("AAAA" + unbound.spki_pin[4:],)),)),
               "upstream.test")


class FrozenTime:
    """`time` for addons.dns_resolver whose monotonic clock moves only when told (a 1 s TTL
    must not run out between two lookups because the machine stalled)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_answers_are_cached_by_ttl(unbound, monkeypatch):
    settings = ResolverSettings((spec(unbound),), min_ttl=0.0, ipv6=False)
    clock = FrozenTime()
    monkeypatch.setattr(dns_resolver, "time", clock)

    async def run():
        r = EncryptedResolver(settings)
        first = await r.lookup("short.test")  # TTL 1
        second = await r.lookup("short.test")
        long1 = await r.lookup("upstream.test")  # TTL 60
        clock.now += 1.1
        third = await r.lookup("short.test")
        long2 = await r.lookup("upstream.test")
        await r.aclose()
        return first, second, third, long1, long2

    first, second, third, long1, long2 = asyncio.run(run())
    assert (first.how, second.how, third.how) == ("dot", "cached", "dot")
    assert 0 < first.ttl <= 1
    assert (long1.how, long2.how) == ("dot", "cached")


def test_nxdomain_and_ip_literals(unbound):
    with pytest.raises(DnsResolutionError, match="NXDOMAIN"):
        lookup(ResolverSettings((spec(unbound),)), "missing.test")
    (res,) = lookup(ResolverSettings((spec(unbound),)), "10.1.2.3")
    assert (res.how, res.addresses) == ("static", ("10.1.2.3",))


def test_second_resolver_answers_when_the_first_fails(unbound, refused_port):
    dead = refused_port
    (res,) = lookup(ResolverSettings((spec(unbound, port=dead), spec(unbound, "doh"))), "upstream.test")
    assert res.how == "doh"


def test_guard_records_how_the_upstream_name_was_resolved(unbound):
    async def run():
        r = EncryptedResolver(ResolverSettings((spec(unbound),)))
        guard = DnsGuard(DnsGuardSettings(resolver=r))
        flows = []
        for host in ("upstream.test", "upstream.test", "127.0.0.1"):
            f = tflow.tflow()
            f.request.host, f.request.port = host, 80
            f.metadata.update({metadata.LISTENER: "reverse", metadata.ROUTE: "r"})
            await guard.request(f)
            flows.append(f)
        await r.aclose()
        return flows

    flows = asyncio.run(run())
    assert [f.metadata[metadata.DNS_RESOLUTION] for f in flows] == ["dot", "cached", "static"]
    assert flows[0].metadata[metadata.DNS_RESOLVER] == f"tls://dns.test:{unbound.dot_port}"
    assert all(f.response is None for f in flows)


@pytest.mark.parametrize(("host", "path", "ctype", "expected"), [
    ("dns.google", "/", "", "known DoH host dns.google"),
    ("example.org", "/resolve", "application/dns-message", "application/dns-message"),
    ("example.org", "/dns-query?dns=AAAB", "", "/dns-query path"),
    ("example.org", "/index.html", "text/html", None),
])
def test_doh_signals(host, path, ctype, expected):
    assert doh_signal(host, path, ctype, "", KNOWN_DOH_HOSTS) == expected


class _Upstream:
    """An HTTP server bound to one loopback address (127.0.0.2 proves which address was dialled)."""

    def __init__(self, address: str) -> None:
        seen = self.seen = []

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                return

            def do_GET(self):  # noqa: N802
                seen.append(self.headers.get("Host"))
                body = json.dumps({"local": self.connection.getsockname()[0], "host": self.headers.get("Host")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((address, 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pinned_upstream():
    up = _Upstream("127.0.0.2")
    yield up
    up.close()


def gw_yaml(u: Unbound, upstream: str, *, dns_extra: str = "", extra: str = "", protocol: str = "dot") -> str:
    return f"""
listen: 127.0.0.1:0
grpc: {{listen: 127.0.0.1:0}}
telemetry: {{enabled: false}}
routes:
  - upstream: {upstream}
{extra}
""" + dns_yaml(u, protocol=protocol, extra=dns_extra)


@pytest.mark.parametrize("protocol", ["dot", "doh"])
def test_gateway_connects_to_the_address_it_resolved(unbound, pinned_upstream, protocol):
    # pinned.test exists only in unbound (the system resolver can't find it) and points at
    # 127.0.0.2, where the only listener is: a 200 proves resolution and connection both
    # went through the encrypted answer; Host stays what the client sent.
    with GatewayThread(gw_yaml(unbound, f"http://pinned.test:{pinned_upstream.port}", protocol=protocol)) as gw:
        for _ in range(2):
            status, _, body = request(gw.url, "/x", headers={"Host": "site.example"})
            assert status == 200, body[:300]
            assert json.loads(body) == {"local": "127.0.0.2", "host": "site.example"}
        guard = gw.gateway.master.addons.get("dnsguard")
        assert guard.settings.resolver.last("pinned.test").how == "cached"


def test_resolver_down_gives_502_naming_the_error_and_no_plaintext_fallback(tmp_path, pinned_upstream):
    u = Unbound(tmp_path, ["upstream.test. 60 IN A 127.0.0.1"])
    backend = _Upstream("127.0.0.1")
    try:
        with GatewayThread(gw_yaml(u, f"http://upstream.test:{backend.port}")) as gw:
            assert request(gw.url, "/")[0] == 200
            gw.gateway.master.addons.get("dnsguard").settings.resolver.clear_cache()
            u.stop()
            status, headers, body = request(gw.url, "/")
            assert status == 502
            text = body.decode()
            assert "every encrypted resolver failed" in text and "plaintext fallback is off" in text
            assert f"tls://dns.test:{u.dot_port}" in text
            assert headers["x-request-id"] in text
            assert not backend.seen[1:]
        # unbound is down; "localhost" is resolvable by the system resolver: only the explicit
        # plaintext_fallback lets it answer, and that is recorded as such
        with GatewayThread(gw_yaml(u, f"http://localhost:{backend.port}")) as gw:
            status, _, body = request(gw.url, "/")
            assert status == 502 and b"plaintext fallback is off" in body
        with GatewayThread(gw_yaml(u, f"http://localhost:{backend.port}", dns_extra="  plaintext_fallback: true\n")) as gw:
            status, _, body = request(gw.url, "/")
            assert status == 200, body[:200]
            assert gw.gateway.master.addons.get("dnsguard").settings.resolver.last("localhost").how == "plaintext"
    finally:
        u.stop()
        backend.close()


def test_forward_proxy_resolves_over_dot_refuses_private_and_polices_doh(unbound, pinned_upstream):
    cfg = f"""
listen: 127.0.0.1:0
grpc: {{listen: 127.0.0.1:0}}
telemetry: {{enabled: false}}
forward: {{listen: 127.0.0.1:0}}
""" + dns_yaml(unbound, extra="  doh_clients: block\n")
    with GatewayThread(cfg) as gw:
        status, _, body = proxy_request(gw.gateway.forward_port, f"http://pinned.test:{pinned_upstream.port}/")
        assert status == 403 and b"private" in body or b"loopback" in body  # resolved over DoT, then refused
        status, _, body = proxy_request(gw.gateway.forward_port, "http://nowhere.test/")
        assert status == 502 and b"NXDOMAIN" in body
    cfg = cfg.replace("forward: {listen: 127.0.0.1:0}", "forward: {listen: 127.0.0.1:0, allow_private_destinations: true}")
    with GatewayThread(cfg) as gw:
        status, _, body = proxy_request(gw.gateway.forward_port, f"http://pinned.test:{pinned_upstream.port}/")
        assert status == 200, body[:300]
        assert json.loads(body)["local"] == "127.0.0.2"
        status, _, body = proxy_request(gw.gateway.forward_port, f"http://pinned.test:{pinned_upstream.port}/dns-query?dns=AAAB")
        assert status == 403 and b"DNS-over-HTTPS" in body
        status, _, body = proxy_request(gw.gateway.forward_port, "dns.google:443", method="CONNECT")
        assert status == 403


def test_cache_revalidation_resolves_over_encrypted_dns(unbound, tmp_path):
    """The cache's own conditional fetch (not the engine's connection) must also use the
    encrypted resolver: pinned.test exists only in unbound, so a system lookup would fail
    and no conditional request would reach the module."""
    conditional: list[str | None] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            return

        def do_GET(self):  # noqa: N802
            inm = self.headers.get("If-None-Match")
            conditional.append(inm)
            if inm == '"v1"':
                self.send_response(304)
                self.send_header("ETag", '"v1"')
                self.end_headers()
                return
            body = b"stored once"
            self.send_response(200)
            self.send_header("Cache-Control", "no-cache")   # stored, revalidated on every use
            self.send_header("ETag", '"v1"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.2", 0), H)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        extra = f"cache: {{enabled: true, path: '{tmp_path / 'cache'}'}}\n"
        with GatewayThread(gw_yaml(unbound, f"http://pinned.test:{server.server_address[1]}", extra=extra)) as gw:
            first = request(gw.url, "/doc")
            second = request(gw.url, "/doc")
    finally:
        server.shutdown()
        server.server_close()
    assert first[0] == 200 and second[0] == 200 and second[2] == b"stored once"
    assert conditional == [None, '"v1"']          # the second was the cache's own conditional fetch
    assert "fwd-status=304" in second[1]["cache-status"], second[1]   # RFC 9211: revalidated
