"""Portico's own page, with the request id, when mitmproxy itself must answer an error.

Hooks: `load` (installs), `done` (removes), `error` (logs the failure once).
Metadata read: REQUEST_ID, ROUTE, UPSTREAM.

When an upstream is down or breaks off, mitmproxy answers the client with its own
"502 Bad Gateway" page naming mitmproxy. Users should see which gateway failed and a
request id to quote; operators should find the same id in the log. mitmproxy renders that
page in its HTTP/1 server connection, out of reach of any hook, so this addon wraps the
function that renders it: the id comes from the `X-Request-Id` header that the Forwarded
addon put on the request object mitmproxy still holds there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy import http
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._events import ResponseProtocolError

from addons import metadata, refusals
from addons.pages import error_page_body

log = logging.getLogger("portico.errorpage")

TITLES = {502: "Bad gateway", 504: "Gateway timeout", 413: "Request body too large", 400: "Bad request"}


def render_error(status: int, message: str, request_id: str | None) -> bytes:
    """The raw HTTP/1.1 error response Portico sends in place of mitmproxy's."""
    title = TITLES.get(status, status_codes.RESPONSES.get(status, "Error"))
    if status == 502:
        detail = f"The module behind this address could not be reached ({message}). Try again shortly."
    else:
        detail = message
    body = error_page_body(status, title, detail, request_id).encode("utf-8")
    headers = http.Headers(Server="Portico", Connection="close", Content_Type="text/html; charset=utf-8",
                           Cache_Control="no-store")
    if request_id:
        headers["X-Request-Id"] = request_id
    return _http1.http1.assemble_response(http.Response.make(status, body, headers))


class ErrorPage:
    """Replaces mitmproxy's protocol-error page on HTTP/1 client connections (and sends the
    answers addons/refusals.py `refuse_unread` left for killed flows)."""

    _original: Callable[..., Generator[Any, Any, None]] | None = None

    def load(self, loader: Any) -> None:
        if ErrorPage._original is not None:
            return
        original = _http1.Http1Server.send
        ErrorPage._original = original
        refusals.sender_installed(True)

        def send(self: _http1.Http1Server, event: Any) -> Generator[Any, Any, None]:
            if (
                isinstance(event, ResponseProtocolError)
                and event.code == status_codes.NO_RESPONSE
                and self.request is not None
                and refusals.waiting()
            ):
                raw = refusals.take(self.request)
                if raw is not None and self.conn.state & _http1.ConnectionState.CAN_WRITE:
                    yield commands.SendData(self.conn, raw)
                    yield commands.CloseConnection(self.conn)
                    return
            if (
                isinstance(event, ResponseProtocolError)
                and not self.response
                and event.code != status_codes.NO_RESPONSE
                and self.conn.state & _http1.ConnectionState.CAN_WRITE
            ):
                request_id = self.request.headers.get("x-request-id") if self.request else None
                yield commands.SendData(self.conn, render_error(event.code, event.message, request_id))
                yield commands.CloseConnection(self.conn)
                return
            return (yield from original(self, event))

        _http1.Http1Server.send = send  # type: ignore[method-assign]

    def done(self) -> None:
        if ErrorPage._original is not None:
            _http1.Http1Server.send = ErrorPage._original  # type: ignore[method-assign]
            ErrorPage._original = None
            refusals.sender_installed(False)

    def error(self, flow: http.HTTPFlow) -> None:
        log.warning(
            "request %s %s %s: %s (route %s, upstream %s)",
            flow.metadata.get(metadata.REQUEST_ID, "-"), flow.request.method, flow.request.path.split("?", 1)[0],
            flow.error.msg if flow.error else "error", flow.metadata.get(metadata.ROUTE, "-"),
            flow.metadata.get(metadata.UPSTREAM, "-"),
        )
