"""Pure decisions of the router, header and forward-proxy addons, table-driven."""

from __future__ import annotations

import ipaddress

import pytest
from h11._receivebuffer import ReceiveBuffer

from addons.forwarded import client_address, host_without_port
from addons.forwardguard import client_allowed, forbidden_reason
from addons.interim import drop_interim_heads
from addons.router import RouteSpec, select_route, upstream_target

ROUTES = [
    RouteSpec("root", "*", "/", "http://10.0.0.1:9000"),
    RouteSpec("api", "*", "/api/", "http://10.0.0.2:9001", strip_prefix=True),
    RouteSpec("api-v2", "*", "/api/v2/", "http://10.0.0.3:9002"),
    RouteSpec("svc1", "*", "/svc1", "http://10.0.0.4"),
    RouteSpec("wild", "*.example.org", "/", "https://10.0.0.5"),
    RouteSpec("deep-wild", "*.eu.example.org", "/", "http://10.0.0.6"),
    RouteSpec("exact", "app.example.org", "/only/", "http://10.0.0.7/base", preserve_host=False),
]


@pytest.mark.parametrize(
    ("host", "path", "label"),
    [
        ("x.test", "/", "root"),
        ("x.test", "/api/users", "api"),
        ("x.test", "/api/v2/users", "api-v2"),
        ("x.test", "/api/v2", "api-v2"),
        ("x.test", "/apiary", "root"),
        ("x.test", "/svc12", "root"),
        ("x.test", "/svc1/a", "svc1"),
        ("a.example.org", "/api/users", "wild"),
        ("b.eu.example.org", "/", "deep-wild"),
        ("example.org", "/", "root"),
        ("app.example.org", "/only/x", "exact"),
        ("app.example.org", "/other", None),  # host matched exactly: its own routes only (nginx model)
    ],
)
def test_select_route(host, path, label):
    route = select_route(ROUTES, host, path)
    assert (route.label if route else None) == label


def test_no_routes_no_match():
    assert select_route([], "x", "/") is None


@pytest.mark.parametrize(
    ("label", "path", "expected"),
    [
        ("api", "/api/users?x=1", ("http", "10.0.0.2", 9001, "/users?x=1", None)),
        ("api", "/api", ("http", "10.0.0.2", 9001, "/", None)),
        ("api", "/api?x=1", ("http", "10.0.0.2", 9001, "/?x=1", None)),
        ("svc1", "/svc1/a", ("http", "10.0.0.4", 80, "/svc1/a", None)),
        ("wild", "/", ("https", "10.0.0.5", 443, "/", None)),
        ("exact", "/only/x", ("http", "10.0.0.7", 80, "/base/only/x", "10.0.0.7")),
    ],
)
def test_upstream_target(label, path, expected):
    route = next(r for r in ROUTES if r.label == label)
    t = upstream_target(route, path)
    assert (t.scheme, t.host, t.port, t.path, t.host_header) == expected


TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")]


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        ("203.0.113.5", ["1.2.3.4"], "203.0.113.5"),  # untrusted peer: header ignored
        ("127.0.0.1", ["1.2.3.4"], "1.2.3.4"),
        ("127.0.0.1", ["6.6.6.6, 1.2.3.4, 10.0.0.9"], "1.2.3.4"),  # walk past trusted hops only
        ("127.0.0.1", ["6.6.6.6", "1.2.3.4"], "1.2.3.4"),  # several header lines
        ("127.0.0.1", ["garbage, 10.0.0.9"], "10.0.0.9"),  # malformed hop stops the walk
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["[2001:db8::1]:443"], "2001:db8::1"),
    ],
)
def test_client_address_walks_right_to_left(peer, xff, client):
    assert client_address(peer, xff, TRUSTED) == client


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.1", "private"),
        ("172.16.0.1", "private"), ("169.254.169.254", "link-local (cloud metadata)"),
        ("fe80::1", "link-local (cloud metadata)"), ("fd00:ec2::254", "private"), ("100.64.0.1", "internal"),
        ("0.0.0.0", "private"), ("::ffff:127.0.0.1", "loopback"), ("224.0.0.1", "multicast"),
        ("93.184.215.14", None), ("2606:4700::1111", None),
    ],
)
def test_forbidden_destinations(address, reason):
    assert forbidden_reason(address) == reason


def test_client_allowed():
    nets = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_allowed("10.2.3.4", nets)
    assert client_allowed("::ffff:10.2.3.4", nets)
    assert not client_allowed("127.0.0.1", nets)
    assert not client_allowed("junk", nets)


@pytest.mark.parametrize(("hostport", "host"), [("App.Example.org:8080", "app.example.org"),
                                                ("[::1]:80", "::1"), ("example.org", "example.org")])
def test_host_without_port(hostport, host):
    assert host_without_port(hostport) == host


def test_drop_interim_heads_keeps_final_and_101():
    buf = ReceiveBuffer()
    buf += b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
    assert drop_interim_heads(buf) == 2
    assert bytes(buf).startswith(b"HTTP/1.1 200 OK")
    switching = ReceiveBuffer()
    switching += b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
    assert drop_interim_heads(switching) == 0
    partial = ReceiveBuffer()
    partial += b"HTTP/1.1 103 Early Hints\r\nLink: </a>"
    assert drop_interim_heads(partial) == 0 and len(partial) > 0
