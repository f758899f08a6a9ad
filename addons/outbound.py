"""Outbound links: rewrite external `<a href>` in HTML to a signed redirect; record the click.

Hooks: `request` (the redirect endpoint `<prefix>out`, before Endpoints), `response`
(rewriting, HTML responses of the configured routes only).
Metadata read: LISTENER, ROUTE, ORIGINAL_HOST, CLIENT_IP, REQUEST_ID.
Written: BLOCKED_BY, VISITOR, SESSION.

A link `https://example.org/x` on page `/about` becomes
`/_portico/out?u=https%3A%2F%2Fexample.org%2Fx&f=%2Fabout&s=<hmac>`. Following it records
an `outbound` event (from page, target host and path, visitor) and answers 302 to the
target. The signature covers target and page: a missing, tampered or foreign signature
gets 400, so the endpoint is never an open redirect. Compressed bodies (gzip, br,
deflate, zstd) are decoded and re-encoded by mitmproxy's `get_text`/`set_text`;
non-HTML, streamed or oversized bodies are left untouched. Rewriting is idempotent (a
rewritten link points at the gateway itself), so a page rewritten before the cache
stored it is not rewritten twice.
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

from mitmproxy import http

from addons import metadata
from addons.pages import error_response, html_text, html_to_edit, reverse_request_target
from addons.recorder import Recorder
from addons.signing import sign, verify
from addons.visitor import Visitors

log = logging.getLogger("portico.outbound")

PURPOSE = "outbound"
MAX_REWRITE_BYTES = 4 * 2**20
_A_TAG = re.compile(r"<a\b[^>]*>", re.IGNORECASE)
_HREF = re.compile(r"""(\bhref\s*=\s*)("([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""", re.IGNORECASE)


@dataclass(frozen=True)
class OutboundSettings:
    secret: bytes
    reserved_prefix: str = "/_portico/"
    routes: frozenset[str] = frozenset({"*"})  # route labels whose HTML is rewritten; "*" = all
    internal_hosts: frozenset[str] = frozenset()
    rewrite: bool = True


def redirect_path(secret: bytes, prefix: str, target: str, from_path: str) -> str:
    """The signed redirect path for an outbound link from `from_path` to `target`."""
    sig = sign(secret, PURPOSE, {"u": target, "f": from_path})
    return f"{prefix}out?u={quote(target, safe='')}&f={quote(from_path, safe='')}&s={sig}"


def is_external(href: str, page_host: str, internal_hosts: Collection[str]) -> bool:
    """An absolute http(s) (or protocol-relative) link to another host."""
    if not href.lower().startswith(("http://", "https://", "//")):
        return False
    try:
        host = (urlsplit(href).hostname or "").lower()
    except ValueError:
        return False
    return bool(host) and host != page_host and host not in internal_hosts


def rewrite_links(text: str, secret: bytes, prefix: str, page_host: str, from_path: str,
                  internal_hosts: Collection[str] = ()) -> tuple[str, int]:
    """(HTML with external `<a href>` pointed at the signed redirect, number rewritten)."""
    count = 0

    def tag(m: re.Match[str]) -> str:
        def attr(h: re.Match[str]) -> str:
            nonlocal count
            raw = h.group(3) if h.group(3) is not None else h.group(4) if h.group(4) is not None else h.group(5)
            href = html.unescape(raw).strip()
            if not is_external(href, page_host, internal_hosts):
                return h.group(0)
            if href.startswith("//"):
                href = "https:" + href
            count += 1
            return f'{h.group(1)}"{html.escape(redirect_path(secret, prefix, href, from_path), quote=True)}"'
        return _HREF.sub(attr, m.group(0), count=1)

    return _A_TAG.sub(tag, text), count


def check_redirect(secret: bytes, query: str) -> tuple[str, str] | str:
    """(target, from path) of a valid redirect query, or the reason it is refused."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    target, from_path = params.get("u", ""), params.get("f", "")
    if not target or "s" not in params:
        return "the link is incomplete (target or signature missing)"
    if not verify(secret, PURPOSE, {"u": target, "f": from_path, "s": params["s"]}):
        return "the link's signature does not match its target"
    if urlsplit(target).scheme not in ("http", "https"):
        return "the target is not an http(s) URL"
    return target, from_path


class Outbound:
    """Signs external links in HTML and serves the redirect that records them."""

    CACHE_SIZE = 256

    def __init__(self, settings: OutboundSettings, recorder: Recorder, visitors: Visitors) -> None:
        self.settings = settings
        self.recorder = recorder
        self.visitors = visitors
        self.endpoint = settings.reserved_prefix + "out"
        # The same page is served again and again: remember its rewritten form (keyed by a
        # digest of the body, the host and the page path), so the regex and HMACs run once.
        self._rewritten: OrderedDict[tuple[bytes, str, str], str | None] = OrderedDict()

    def rewrite(self, text: str, page_host: str, from_path: str) -> str | None:
        """The rewritten page, or None when it has no external link (memoised)."""
        key = (hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest(), page_host, from_path)
        if key in self._rewritten:
            self._rewritten.move_to_end(key)
            return self._rewritten[key]
        s = self.settings
        new, count = rewrite_links(text, s.secret, s.reserved_prefix, page_host, from_path, s.internal_hosts)
        self._rewritten[key] = new if count else None
        if len(self._rewritten) > self.CACHE_SIZE:
            self._rewritten.popitem(last=False)
        return self._rewritten[key]

    def request(self, flow: http.HTTPFlow) -> None:
        target = reverse_request_target(flow)
        if target is None or target[0] != self.endpoint:
            return
        query = target[1]
        request_id = flow.metadata.get(metadata.REQUEST_ID)
        checked = check_redirect(self.settings.secret, query)
        if isinstance(checked, str):
            flow.metadata[metadata.BLOCKED_BY] = "outbound:bad-signature"
            log.info("request %s: refused outbound redirect: %s", request_id, checked)
            flow.response = error_response(400, "Bad link", f"This redirect link is not valid: {checked}.",
                                           request_id)
            return
        target, from_path = checked
        site = flow.metadata.get(metadata.ORIGINAL_HOST, "")
        visit = self.visitors.visit(site, flow.metadata.get(metadata.CLIENT_IP, ""),
                                    flow.request.headers.get("user-agent", ""))
        visit.state.browser_seen = True
        flow.metadata[metadata.VISITOR], flow.metadata[metadata.SESSION] = visit.visitor, visit.session
        parts = urlsplit(target)
        self.recorder.submit([{"type": "outbound", "time": time.time(), "attrs": {
            "from": from_path.split("?", 1)[0][:1024], "host": site, "target_host": (parts.hostname or "").lower(),
            "target_path": (parts.path or "/")[:1024], "via": "redirect", "visitor": visit.visitor,
            "session": visit.session}}])
        flow.metadata[metadata.BLOCKED_BY] = "outbound:redirect"
        flow.response = http.Response.make(302, b"", {
            "Location": target, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer-when-downgrade",
            "X-Request-Id": request_id or ""})

    def response(self, flow: http.HTTPFlow) -> None:
        resp = html_to_edit(flow, self.settings.routes, MAX_REWRITE_BYTES) if self.settings.rewrite else None
        if resp is None:
            return
        text = html_text(resp)
        if text is None:
            log.info("request %s: HTML not rewritten: cannot decode %s body",
                     flow.metadata.get(metadata.REQUEST_ID), resp.headers.get("content-encoding", "identity"))
            return
        page_host = flow.metadata.get(metadata.ORIGINAL_HOST, "")
        from_path = (flow.metadata.get(metadata.ORIGINAL_PATH) or flow.request.path).split("?", 1)[0]
        new = self.rewrite(text, page_host, from_path)
        if new is not None:
            resp.set_text(new)
