"""Encrypted DNS for upstream names, pinned connections, and DoH detection on the forward proxy.

Hooks: `request`, `http_connect`, `server_connect`, `client_disconnected`.
Metadata read: LISTENER, REQUEST_ID, ROUTE, UPSTREAM, ORIGINAL_HOST, USER, CLIENT_IP.
Written: DNS_RESOLUTION, DNS_RESOLVER, BLOCKED_BY.

Reverse path (after the router): the route's upstream host is resolved through the
encrypted resolver (IP literals are "static"). The request keeps the host *name*, so Host,
TLS SNI and certificate verification stay on the name; `server_connect` then swaps the
address mitmproxy is about to dial for the resolved one and restores the name once
connected, so mitmproxy's connection reuse (keyed by name) keeps working and the engine
never looks the name up again (DNS rebinding can't slip in between). When every encrypted
resolver fails the request is answered 502 naming the error (no plaintext fallback unless
`dns.plaintext_fallback`).

Forward path: the forward guard resolves (through the same resolver, wired in
proxy/pipeline.py) and pins; this addon records how, and applies the `doh_clients` policy
to clients that bring their own DNS-over-HTTPS (known DoH hosts, `application/dns-message`,
`/dns-query`): allow, log (record `dns.doh_detected`) or block (403).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks

from addons import metadata
from addons.dns_resolver import DnsResolutionError, EncryptedResolver, is_ip_literal
from addons.pages import error_response, wants_json
from addons.verdicts import destination_host, is_forward_connect, record

log = logging.getLogger("portico.dnsguard")

KNOWN_DOH_HOSTS: frozenset[str] = frozenset({
    "dns.google", "dns.google.com", "cloudflare-dns.com", "mozilla.cloudflare-dns.com", "one.one.one.one",
    "1dot1dot1dot1.cloudflare-dns.com", "security.cloudflare-dns.com", "family.cloudflare-dns.com",
    "dns.quad9.net", "dns9.quad9.net", "dns10.quad9.net", "dns11.quad9.net", "doh.opendns.com",
    "doh.familyshield.opendns.com", "dns.adguard.com", "dns.adguard-dns.com", "doh.cleanbrowsing.org",
    "dns.nextdns.io", "doh.mullvad.net", "dns.mullvad.net", "doh.dns.sb", "dns.alidns.com", "doh.pub",
    "dns.twnic.tw", "doh.libredns.gr", "chrome.cloudflare-dns.com", "dns.controld.com", "freedns.controld.com",
    "1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4", "9.9.9.9", "149.112.112.112",
})


@dataclass(frozen=True)
class DnsGuardSettings:
    resolver: EncryptedResolver
    doh_clients: Literal["allow", "log", "block"] = "log"
    doh_hosts: frozenset[str] = KNOWN_DOH_HOSTS


def doh_signal(host: str, path: str, content_type: str, accept: str, doh_hosts: Iterable[str]) -> str | None:
    """Why a forward-proxy request looks like the client's own DNS-over-HTTPS, or None."""
    host = host.lower().rstrip(".")
    if host in doh_hosts:
        return f"known DoH host {host}"
    if "application/dns-message" in content_type.lower() or "application/dns-message" in accept.lower():
        return "application/dns-message"
    if path.split("?", 1)[0].rstrip("/").endswith("/dns-query"):
        return "/dns-query path"
    return None


class DnsGuard:
    """Resolves upstream names over DoT/DoH, pins connections, records how; polices client DoH."""

    def __init__(self, settings: DnsGuardSettings, store: Any = None) -> None:
        self.settings = settings
        self.store = store
        # client connection id -> {(host, port): address}: where server_connect must dial
        self._pins: dict[str, dict[tuple[str, int], str]] = {}
        self._dialled: dict[str, tuple[str, int]] = {}  # server connection id -> (name, port)

    # --- reverse path ------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        try:
            if flow.metadata.get(metadata.LISTENER) == "forward":
                self._forward(flow, connect=False)
            else:
                await self._reverse(flow)
        except Exception as e:  # fail closed: mitmproxy would swallow the error and dial anyway
            log.exception("DNS guard failed for request %s", flow.metadata.get(metadata.REQUEST_ID))
            flow.metadata[metadata.BLOCKED_BY] = "dns:internal-error"
            flow.response = error_response(502, "Bad gateway", f"The gateway could not resolve the upstream "
                                           f"({type(e).__name__}).", flow.metadata.get(metadata.REQUEST_ID))

    async def _reverse(self, flow: http.HTTPFlow) -> None:
        if metadata.ROUTE not in flow.metadata:
            return
        host, port = flow.request.host, flow.request.port
        try:
            resolution = await self.settings.resolver.lookup(host)
        except DnsResolutionError as e:
            request_id = flow.metadata.get(metadata.REQUEST_ID)
            log.warning("request %s: upstream name %s not resolved: %s", request_id, host, e)
            flow.metadata[metadata.BLOCKED_BY] = "dns:resolution-failed"
            flow.metadata[metadata.DNS_RESOLUTION] = "failed"
            flow.response = error_response(502, "Bad gateway", f"The upstream name could not be resolved over "
                                           f"encrypted DNS: {e}", request_id, json_body=wants_json(flow.request))
            return
        flow.metadata[metadata.DNS_RESOLUTION] = resolution.how
        flow.metadata[metadata.DNS_RESOLVER] = resolution.resolver
        if resolution.how == "plaintext":
            record(self.store, "dns.plaintext_fallback", {"host": host, "route": flow.metadata.get(metadata.ROUTE)})
        if resolution.how != "static":
            self._pins.setdefault(flow.client_conn.id, {})[(host, port)] = resolution.addresses[0]

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        pins = self._pins.get(data.client.id)
        if not pins or data.server.address is None:
            return
        host, port = data.server.address[0], data.server.address[1]
        address = pins.get((host, port))
        if address is None:
            return
        if data.server.sni is None and data.server.tls:
            data.server.sni = host  # verify the certificate for the name, not the address
        data.server.address = (address, port)
        self._dialled[data.server.id] = (host, port)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        name = self._dialled.pop(data.server.id, None)
        if name is not None:
            # mitmproxy reuses connections by the address it asked for (the name); Server
            # refuses address changes on an open connection, hence the direct write.
            data.server.__dict__["address"] = name

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self.server_connected(data)

    def client_disconnected(self, client: connection.Client) -> None:
        self._pins.pop(client.id, None)

    # --- forward path ------------------------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or not is_forward_connect(flow):
            return
        try:
            self._forward(flow, connect=True)
        except Exception as e:  # noqa: BLE001 - fail closed
            log.exception("DNS guard failed for CONNECT %s", flow.metadata.get(metadata.REQUEST_ID))
            flow.metadata[metadata.BLOCKED_BY] = "dns:internal-error"
            flow.response = error_response(502, "Bad gateway", f"DNS policy check failed ({type(e).__name__}).",
                                           flow.metadata.get(metadata.REQUEST_ID))

    def _forward(self, flow: http.HTTPFlow, *, connect: bool) -> None:
        host = destination_host(flow)
        resolution = self.settings.resolver.last(host)
        if resolution is not None:
            flow.metadata[metadata.DNS_RESOLUTION] = resolution.how
            flow.metadata[metadata.DNS_RESOLVER] = resolution.resolver
        elif is_ip_literal(host):
            flow.metadata[metadata.DNS_RESOLUTION] = "static"
        signal = doh_signal(host, "" if connect else flow.request.path,
                            "" if connect else flow.request.headers.get("content-type", ""),
                            "" if connect else flow.request.headers.get("accept", ""), self.settings.doh_hosts)
        if signal is None or self.settings.doh_clients == "allow":
            return
        policy = self.settings.doh_clients
        record(self.store, "dns.doh_detected", {
            "host": host, "signal": signal, "action": policy, "connect": connect,
            "user": flow.metadata.get(metadata.USER), "request_id": flow.metadata.get(metadata.REQUEST_ID)})
        log.info("request %s: client DNS-over-HTTPS detected (%s), policy %s",
                 flow.metadata.get(metadata.REQUEST_ID), signal, policy)
        if policy == "block":
            flow.metadata[metadata.BLOCKED_BY] = "dns:client-doh"
            flow.response = error_response(403, "Forbidden by proxy policy",
                                           f"Your own DNS-over-HTTPS is not allowed through this proxy ({signal}); "
                                           "the gateway resolves names over encrypted DNS for you.",
                                           flow.metadata.get(metadata.REQUEST_ID))

    async def done(self) -> None:
        await self.settings.resolver.aclose()
