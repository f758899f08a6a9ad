"""What the protection addons (moderation, forum moderation, phishing, DNS guard) share:
block/warn/held pages, signed "continue" links, and recording decisions as events.

Not an addon. Pages carry the reason, the category and the request id; a warn page offers
a link that continues to the same URL, signed for that URL and that user only, for a
limited time (HMAC-SHA256 over purpose, URL, user and expiry).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mitmproxy import http

from addons import metadata
from addons.pages import SERVER_HEADER, error_response

log = logging.getLogger("portico.guard")

CONTINUE_PARAM = "portico_continue"
_STYLE = ("body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:#222}"
          "h1{font-size:1.4em}code{background:#f3f3f3;padding:0 .3em}.rid{color:#555;font-size:.9em}"
          ".go{display:inline-block;margin-top:1em;padding:.4em .8em;border:1px solid #a00;color:#a00}")


def page(status: int, title: str, reason: str, category: str, request_id: str | None,
         continue_url: str | None = None) -> http.Response:
    """A block/warn/held page: HTML with the reason, category, request id (and continue link)."""
    esc = html.escape
    link = (f"<p>If you are sure, you may <a class=go href=\"{esc(continue_url, quote=True)}\">continue to the "
            f"page</a>. This link works for you and this address only.</p>") if continue_url else ""
    rid = f"<p class=rid>Request id: <code>{esc(request_id)}</code></p>" if request_id else ""
    body = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>"
            f"<p>{esc(reason)}</p><p>Category: <code>{esc(category)}</code></p>{link}{rid}"
            f"<hr><p class=rid>Portico gateway</p></body></html>")
    headers = {"Server": SERVER_HEADER, "Cache-Control": "no-store", "Content-Type": "text/html; charset=utf-8"}
    if request_id:
        headers["X-Request-Id"] = request_id
    return http.Response.make(status, body.encode(), headers)


class ContinueSigner:
    """Signs and checks warn-page continue tokens bound to (URL, user) with an expiry."""

    def __init__(self, secret: bytes | None, ttl: float) -> None:
        self.secret = secret or secrets.token_bytes(32)  # random: links die with the process
        self.ttl = ttl

    def _mac(self, url: str, user: str, expires: int) -> str:
        msg = b"\x00".join([b"continue", url.encode(), user.encode(), str(expires).encode()])
        return base64.urlsafe_b64encode(hmac.new(self.secret, msg, hashlib.sha256).digest()[:16]).rstrip(b"=").decode()

    def token(self, url: str, user: str, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + self.ttl)
        return f"{expires}.{self._mac(url, user, expires)}"

    def valid(self, token: str, url: str, user: str, now: float | None = None) -> bool:
        expires_text, _, mac = token.partition(".")
        if not expires_text.isdigit() or not mac:
            return False
        expires = int(expires_text)
        if expires < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(mac, self._mac(url, user, expires))


def with_continue(url: str, token: str) -> str:
    """`url` with the continue token added to its query."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + [(CONTINUE_PARAM, token)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def split_continue(url: str) -> tuple[str, str | None]:
    """(url without the continue token, the token or None)."""
    parts = urlsplit(url)
    if CONTINUE_PARAM not in parts.query:
        return url, None
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    token = next((v for k, v in pairs if k == CONTINUE_PARAM), None)
    rest = [(k, v) for k, v in pairs if k != CONTINUE_PARAM]
    return urlunsplit(parts._replace(query=urlencode(rest))), token


def is_forward_connect(flow: http.HTTPFlow) -> bool:
    """A CONNECT on the forward listener (mitmproxy runs no `requestheaders` hook for CONNECT,
    so LISTENER/ORIGINAL_HOST are not set on these flows)."""
    from mitmproxy.proxy.mode_specs import RegularMode

    return isinstance(flow.client_conn.proxy_mode, RegularMode)


def destination_host(flow: http.HTTPFlow) -> str:
    """The host name the client asked for, also on a CONNECT the forward guard already pinned
    to an address (it keeps the name in UPSTREAM as `host:port`)."""
    if host := flow.metadata.get(metadata.ORIGINAL_HOST):
        return str(host)
    if upstream := flow.metadata.get(metadata.UPSTREAM):
        return str(upstream).rsplit(":", 1)[0].strip("[]").lower()
    return flow.request.host.lower()


def client_url(flow: http.HTTPFlow) -> str:
    """The URL as the client asked for it (before routing rewrote scheme, host and path)."""
    host = destination_host(flow)
    path = flow.metadata.get(metadata.ORIGINAL_PATH) or flow.request.path
    if flow.metadata.get(metadata.LISTENER) == "forward":
        scheme = flow.request.scheme
    else:
        scheme = "https" if flow.client_conn.tls_established else "http"
    return f"{scheme}://{host}{path}"


def consume_continue(flow: http.HTTPFlow, signer: ContinueSigner, user: str) -> bool:
    """True when the request carries a valid continue token for its URL and `user`.

    The token is removed from the request before it goes upstream, and the outcome is kept
    in GUARD_CONTINUED so every protection addon sees the same answer.
    """
    if metadata.GUARD_CONTINUED in flow.metadata:
        return bool(flow.metadata[metadata.GUARD_CONTINUED])
    url, token = split_continue(client_url(flow))
    ok = False
    if token is not None:
        if CONTINUE_PARAM in flow.request.query:
            del flow.request.query[CONTINUE_PARAM]
        ok = signer.valid(token, url, user)
    flow.metadata[metadata.GUARD_CONTINUED] = ok
    return ok


def fail_closed(flow: http.HTTPFlow, error: Exception, *, key: str, check: str, logger: logging.Logger) -> None:
    """Answer 503 because a check crashed: the request must not pass unchecked.

    mitmproxy's addon manager logs and swallows hook exceptions, which would let the request
    through; so the protection addons catch them and call this. The answer is not cached.

    Args:
        key: the addon's name in metadata values (`moderation` -> `moderation:internal-error`).
        check: what failed, for the log and the page ("content check").
        logger: the addon's logger, so the traceback is logged under the addon's name.
    """
    request_id = flow.metadata.get(metadata.REQUEST_ID)
    logger.exception("%s failed for request %s", check, request_id)
    flow.metadata[metadata.BLOCKED_BY] = f"{key}:internal-error"
    flow.metadata[metadata.DO_NOT_CACHE] = f"{key}:error"
    flow.response = error_response(503, "Service unavailable",
                                   f"The {check} failed ({type(error).__name__}); try again later.", request_id)


def pass_undecodable(flow: http.HTTPFlow, error: ValueError, *, key: str, not_done: str,
                     logger: logging.Logger) -> None:
    """A body whose encoding is corrupt goes on unchecked (the client can't read it either) but is never cached.

    Args:
        key: the addon's name in metadata values (`moderation` -> `moderation:undecodable`).
        not_done: what was skipped, for the log ("response not scored").
    """
    flow.metadata[metadata.DO_NOT_CACHE] = f"{key}:undecodable"
    logger.info("request %s: %s: %s", flow.metadata.get(metadata.REQUEST_ID), not_done, error)


def record(store: Any, type_: str, attrs: Mapping[str, Any]) -> None:
    """Submit one event without blocking; a missing or failing store never breaks a request."""
    if store is None:
        return
    event = {"type": type_, "attrs": {k: v for k, v in attrs.items() if v is not None}}
    try:
        future = store.submit([event])
    except Exception as e:  # noqa: BLE001 - telemetry must not break the request path
        log.warning("could not record %s event: %s", type_, e)
        return
    if hasattr(future, "add_done_callback"):
        future.add_done_callback(_log_failure)


def _log_failure(future: Any) -> None:
    try:
        result = future.result()
    except Exception as e:  # noqa: BLE001
        log.warning("recording a guard event failed: %s", e)
        return
    errors = getattr(result, "errors", None)
    if errors:
        log.warning("guard event rejected by the store: %s", errors)
