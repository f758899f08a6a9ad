"""Client address, request id and header hygiene for every request.

Hooks: `requestheaders` (first thing Portico does with a request).
Metadata written: REQUEST_ID, CLIENT_IP, LISTENER, ORIGINAL_HOST, ORIGINAL_PATH, STARTED.

- A request id is made for every request and sent upstream as `X-Request-Id` (a client's
  own id is kept only when it comes through a trusted proxy).
- The client address is the TCP peer, unless the peer is a trusted proxy: then
  `X-Forwarded-For` is walked right to left, skipping trusted proxies, and the first
  untrusted hop is the client (what nginx's realip module does with `real_ip_recursive`).
- For upstreams (reverse listener only) `X-Forwarded-For/Proto/Host` are set from what
  Portico saw; client-supplied values survive only from trusted proxies.
- Identity headers (`Remote-User`, `X-Forwarded-User`, ...) are always removed: only
  Portico's own auth addon may set them, after this addon ran. Headers that change what
  an upstream serves without being part of a cache key (`X-Original-URL`, ...) go too.
- Underscore spellings of those names (`Remote_User`, `X_Forwarded_For`) go as well: CGI
  and WSGI servers read `Remote_User` as `REMOTE_USER`, the same variable as `Remote-User`.
- A header value folded over several lines (obs-fold) or holding a CR or LF is joined with
  one space (RFC 9112 §5.2): forwarded as received, an upstream could read the continuation
  line as a header of its own.
- Bodies announced larger than `max_request_body` are refused with 413 before they are read
  (addons/refusals.py: the connection is closed after the answer); chunked
  bodies are refused once what was read exceeds it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mitmproxy import http
from mitmproxy.proxy.mode_specs import RegularMode

from addons import metadata
from addons.refusals import refuse_unread
from addons.headerscan import IDENTITY_HEADERS, header_key, names, scan_headers
from addons.pages import error_response, wants_json

log = logging.getLogger("portico.forwarded")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKEYED_OVERRIDE_HEADERS = ("x-original-url", "x-rewrite-url", "x-http-method-override",
                            "x-http-method", "x-method-override")
"""Headers some frameworks use to change the target URL/method: a cache-poisoning vector."""

FORWARDING_HEADERS = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
                      "forwarded", "x-real-ip", "x-request-id")

_SPOOFABLE = tuple((h, h.encode()) for h in IDENTITY_HEADERS + UNKEYED_OVERRIDE_HEADERS)
_FORWARDING = tuple((h, h.encode()) for h in FORWARDING_HEADERS)
_WATCHED = names(*IDENTITY_HEADERS, *UNKEYED_OVERRIDE_HEADERS, *FORWARDING_HEADERS)
_UNDERSCORED = frozenset(h.encode() for h in IDENTITY_HEADERS + UNKEYED_OVERRIDE_HEADERS + FORWARDING_HEADERS)
_LINE_BREAKS = re.compile(rb"[ \t]*[\r\n]+[ \t]*")

HeaderFields = tuple[tuple[bytes, bytes], ...]


def clean_fields(fields: HeaderFields) -> tuple[HeaderFields, list[str], list[str]] | None:
    """(fields, names dropped, names unfolded) when a field needs it, else None (the usual case).

    Dropped: underscore spellings of identity, override and forwarding headers. Unfolded: a
    value with CR or LF in it (mitmproxy keeps an obs-fold as CRLF + space) gets one space
    in place of each line break.
    """
    names, values = b"".join([f[0] for f in fields]), b"".join([f[1] for f in fields])  # 1.8 us, not 5.6 a loop
    if b"_" not in names and b"\r" not in values and b"\n" not in values:
        return None
    kept: list[tuple[bytes, bytes]] = []
    dropped: list[str] = []
    unfolded: list[str] = []
    for name, value in fields:
        if b"_" in name and header_key(name) in _UNDERSCORED:
            dropped.append(name.decode("latin-1"))
            continue
        if b"\r" in value or b"\n" in value:
            value = _LINE_BREAKS.sub(b" ", value).strip()
            unfolded.append(name.decode("latin-1"))
        kept.append((name, value))
    return tuple(kept), dropped, unfolded


@dataclass(frozen=True)
class ForwardedSettings:
    trusted_proxies: Sequence[Network] = ()
    max_request_body: int = 10 * 2**20


def new_request_id() -> str:
    """A short random id (base32-ish hex, 16 chars) that is unique enough to grep logs for."""
    return secrets.token_hex(8)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    ip = _ip(address)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in trusted)


def host_without_port(hostport: str) -> str:
    """'App.Example.org:8080' -> 'app.example.org'; '[::1]:80' -> '::1'."""
    hostport = hostport.strip().lower()
    if hostport.startswith("["):
        return hostport[1:].split("]", 1)[0]
    if hostport.count(":") == 1:
        return hostport.split(":", 1)[0]
    return hostport


def client_address(peer: str, xff_values: Sequence[str], trusted: Sequence[Network]) -> str:
    """The real client address: walk X-Forwarded-For right to left through trusted proxies.

    `xff_values` are all X-Forwarded-For header values in order. A malformed hop stops the
    walk there: the last trusted hop's claim can't be parsed, so the peer we can vouch for
    is the nearest trusted proxy's view of it.
    """
    if not is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for value in xff_values for h in value.split(",") if h.strip()]
    client = peer
    for hop in reversed(hops):
        if _ip(hop) is None:
            break
        client = str(_ip(hop))
        if not is_trusted(client, trusted):
            break
    return client


class Forwarded:
    """Sets the request id and client address; strips spoofable headers; caps body size."""

    def __init__(self, settings: ForwardedSettings) -> None:
        self.settings = settings

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        peer = flow.client_conn.peername[0] if flow.client_conn.peername else "0.0.0.0"
        trusted_peer = is_trusted(peer, self.settings.trusted_proxies)
        forward_listener = isinstance(flow.client_conn.proxy_mode, RegularMode)

        incoming_id = request.headers.get("x-request-id", "")
        request_id = incoming_id if trusted_peer and 0 < len(incoming_id) <= 64 and incoming_id.isprintable() else new_request_id()
        client_ip = client_address(peer, request.headers.get_all("x-forwarded-for"), self.settings.trusted_proxies)
        host = host_without_port(request.host_header or request.pretty_host or "")

        flow.metadata[metadata.REQUEST_ID] = request_id
        flow.metadata[metadata.CLIENT_IP] = client_ip
        flow.metadata[metadata.LISTENER] = "forward" if forward_listener else "reverse"
        flow.metadata[metadata.ORIGINAL_HOST] = host
        flow.metadata[metadata.ORIGINAL_PATH] = request.path
        flow.metadata[metadata.STARTED] = time.monotonic()

        cleaned = clean_fields(request.headers.fields)
        if cleaned is not None:
            request.headers.fields, dropped, unfolded = cleaned
            if dropped:
                log.info("request %s from %s: removed client-supplied %s", request_id, client_ip, ", ".join(dropped))
            if unfolded:
                log.info("request %s from %s: joined the lines of folded header %s", request_id, client_ip,
                         ", ".join(unfolded))
        # one pass over the header fields: `name in headers` scans every field for each of
        # ~30 names (~60 us a request on mitmproxy's multidict)
        present = scan_headers(request.headers, _WATCHED).keys()
        stripped = [h for h, hb in _SPOOFABLE if hb in present]
        for name in stripped:
            del request.headers[name]
        if stripped:
            log.info("request %s from %s: removed client-supplied %s", request_id, client_ip, ", ".join(stripped))

        claimed = {h: request.headers.get_all(h) if h.encode() in present else []
                   for h in ("x-forwarded-proto", "x-forwarded-host")}
        for name, nb in _FORWARDING:
            if nb in present:
                del request.headers[name]
        request.headers["X-Request-Id"] = request_id
        if not forward_listener:
            scheme = "https" if flow.client_conn.tls_established else "http"
            request.headers["X-Forwarded-For"] = client_ip if client_ip == peer else f"{client_ip}, {peer}"
            proto = claimed["x-forwarded-proto"][-1].strip() if trusted_peer and claimed["x-forwarded-proto"] else scheme
            request.headers["X-Forwarded-Proto"] = proto if proto in ("http", "https") else scheme
            fwd_host = claimed["x-forwarded-host"][-1].strip() if trusted_peer and claimed["x-forwarded-host"] else request.host_header
            if fwd_host:
                request.headers["X-Forwarded-Host"] = fwd_host
            request.headers["X-Real-IP"] = client_ip

        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_request_body:
            log.warning("request %s from %s refused: body of %s bytes exceeds max_request_body %d",
                        request_id, client_ip, length, self.settings.max_request_body)
            flow.metadata[metadata.BLOCKED_BY] = "forwarded:body-too-large"
            flow.response = error_response(
                413, "Request body too large",
                f"The request body ({length} bytes) exceeds this gateway's limit of "
                f"{self.settings.max_request_body} bytes.",
                request_id, json_body=wants_json(request))
            refuse_unread(flow)  # answered now and the connection closed: the body is never read

    def request(self, flow: http.HTTPFlow) -> None:
        # Chunked bodies have no Content-Length: check what was actually read.
        if flow.response or flow.error or not flow.live:
            return
        body = flow.request.raw_content
        if body is not None and len(body) > self.settings.max_request_body:
            flow.metadata[metadata.BLOCKED_BY] = "forwarded:body-too-large"
            flow.response = error_response(
                413, "Request body too large",
                f"The request body exceeds this gateway's limit of {self.settings.max_request_body} bytes.",
                flow.metadata.get(metadata.REQUEST_ID), json_body=wants_json(flow.request))
