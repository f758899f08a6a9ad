"""Refuse a request before its body is read: answer, then close the connection.

Not an addon: a helper Forwarded (which refuses) and ErrorPage (which sends) share, so
neither imports the other.

Why: a `requestheaders` hook that sets a response makes mitmproxy read the whole body
first, and for a body it has decided to stream (`stream_large_bodies`) crash the
connection ("Can't set a response and enable streaming at the same time"). So the flow is
killed, which makes mitmproxy close the connection with no answer, and ErrorPage's wrapper
of mitmproxy's HTTP/1 `send` writes the answer left here just before.
"""

from __future__ import annotations

import weakref

from mitmproxy import http
from mitmproxy.proxy.layers.http import _http1

# request -> the raw answer to send in place of closing silently (gone with the request)
_answers: weakref.WeakKeyDictionary[http.Request, bytes] = weakref.WeakKeyDictionary()
_sender = False  # ErrorPage is loaded: someone will take the answers


def sender_installed(installed: bool) -> None:
    global _sender
    _sender = installed
    if not installed:
        _answers.clear()


def refuse_unread(flow: http.HTTPFlow) -> None:
    """Answer `flow.response` at once and close the connection, without reading the body.

    Only over HTTP/1 with ErrorPage loaded (it wraps the HTTP/1 server's `send`); otherwise
    the response stays set as it is, and mitmproxy sends it once the body has been read.
    """
    assert flow.response is not None
    if not _sender or not flow.request.http_version.startswith("HTTP/1"):
        return
    flow.response.headers["Connection"] = "close"
    _answers[flow.request] = _http1.http1.assemble_response(flow.response)
    flow.kill()


def waiting() -> bool:
    return bool(_answers)


def take(request: http.Request) -> bytes | None:
    """The answer left for this request, once."""
    return _answers.pop(request, None)
