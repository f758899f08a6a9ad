"""Policy for the forward-proxy listener: never an open proxy.

Hooks: `http_connect`, `request`, `tls_clienthello`.
Metadata read: LISTENER, CLIENT_IP, REQUEST_ID. Written: BLOCKED_BY, UPSTREAM.

Only requests that arrived on the forward listener are looked at. A request is refused
(403, with a page saying why) when:
- the client's address is not in `allowed_clients` (default: this machine only);
- a CONNECT targets a port not in `connect_ports` (default 443);
- the destination resolves to a loopback, private, link-local (cloud metadata), CGNAT,
  multicast, reserved or unspecified address, unless `allow_private_destinations`. The
  check is made on the resolved addresses and the connection is then pinned to the
  address that was checked, so DNS rebinding can't slip between check and connect.
TLS inside CONNECT tunnels is passed through untouched: the forward proxy does not
intercept users' encrypted traffic.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from mitmproxy import http, tls
from mitmproxy.proxy.mode_specs import RegularMode

from addons import metadata
from addons.pages import error_response

log = logging.getLogger("portico.forward")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_EXTRA_FORBIDDEN = (
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT: internal, not is_private in 3.11
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("198.18.0.0/15"),
)


async def system_resolve(host: str, port: int) -> list[str]:
    """Resolve with the operating system (replaced by the encrypted-DNS resolver when configured)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def forbidden_reason(address: str) -> str | None:
    """Why a destination address must not be reached through the forward proxy, or None."""
    try:
        ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    checks = (("loopback", ip.is_loopback), ("link-local (cloud metadata)", ip.is_link_local),
              ("private", ip.is_private), ("multicast", ip.is_multicast), ("reserved", ip.is_reserved),
              ("unspecified", ip.is_unspecified))
    for name, hit in checks:
        if hit:
            return name
    if any(ip.version == n.version and ip in n for n in _EXTRA_FORBIDDEN):
        return "internal"
    return None


def client_allowed(address: str, allowed: Sequence[Network]) -> bool:
    try:
        ip: Address = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in allowed)


@dataclass(frozen=True)
class ForwardGuardSettings:
    allowed_clients: Sequence[Network]
    connect_ports: Sequence[int] = (443,)
    allow_private_destinations: bool = False
    resolve: Resolver = field(default=system_resolve)


class ForwardGuard:
    """Refuses forward-proxy requests that would make Portico an open or SSRF-able proxy."""

    def __init__(self, settings: ForwardGuardSettings) -> None:
        self.settings = settings

    @staticmethod
    def _is_forward(flow: http.HTTPFlow) -> bool:
        return isinstance(flow.client_conn.proxy_mode, RegularMode)

    def _refuse(self, flow: http.HTTPFlow, reason: str, detail: str) -> None:
        request_id = flow.metadata.get(metadata.REQUEST_ID)
        client = flow.metadata.get(metadata.CLIENT_IP) or (flow.client_conn.peername or ("?",))[0]
        log.warning("forward proxy refused request %s from %s to %s:%s: %s",
                    request_id, client, flow.request.host, flow.request.port, detail)
        flow.metadata[metadata.BLOCKED_BY] = f"forward:{reason}"
        flow.response = error_response(403, "Forbidden by proxy policy", detail, request_id)

    async def _check(self, flow: http.HTTPFlow, *, connect: bool) -> None:
        try:
            await self._check_unsafe(flow, connect=connect)
        except Exception as e:  # fail closed: mitmproxy would swallow the error and connect
            log.exception("forward proxy check failed for request %s", flow.metadata.get(metadata.REQUEST_ID))
            self._refuse(flow, "internal-error", f"The proxy could not check this request ({type(e).__name__}).")

    async def _check_unsafe(self, flow: http.HTTPFlow, *, connect: bool) -> None:
        peer = (flow.client_conn.peername or ("",))[0]
        if not client_allowed(peer, self.settings.allowed_clients):
            self._refuse(flow, "client", "Your address may not use this proxy.")
            return
        host, port = flow.request.host, flow.request.port
        if connect and port not in self.settings.connect_ports:
            self._refuse(flow, "connect-port", f"Tunnels (CONNECT) are only allowed to port(s) "
                         f"{', '.join(map(str, self.settings.connect_ports))}, not {port}.")
            return
        if not connect and flow.request.scheme not in ("http", "https"):
            self._refuse(flow, "scheme", f"Scheme {flow.request.scheme!r} is not proxied.")
            return
        try:
            addresses = await self.settings.resolve(host, port)
        except (OSError, UnicodeError) as e:
            flow.metadata[metadata.BLOCKED_BY] = "forward:dns"
            flow.response = error_response(502, "Bad gateway", f"The name {host!r} could not be resolved ({e}).",
                                           flow.metadata.get(metadata.REQUEST_ID))
            return
        if not addresses:
            self._refuse(flow, "dns", f"The name {host!r} has no address.")
            return
        if not self.settings.allow_private_destinations:
            for address in addresses:
                if reason := forbidden_reason(address):
                    self._refuse(flow, "destination", f"{host} resolves to a {reason} address; "
                                 "the proxy does not reach internal networks.")
                    return
        # Pin the connection to the address that was checked (no second lookup).
        host_header = flow.request.host_header
        flow.request.host = addresses[0]
        if not connect:
            flow.request.host_header = host_header
        flow.metadata[metadata.UPSTREAM] = f"{host}:{port}"

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or not self._is_forward(flow):
            return
        await self._check(flow, connect=True)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or not self._is_forward(flow):
            return
        if flow.metadata.get(metadata.LISTENER) != "forward":
            return
        await self._check(flow, connect=False)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if isinstance(data.context.client.proxy_mode, RegularMode):
            data.ignore_connection = True  # pass users' TLS through, never intercept it
