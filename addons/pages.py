"""HTML/JSON error and status pages that Portico's addons answer with, and the pages they edit.

Not an addon: a helper the addons share, so every page looks the same and carries the
request id a user can quote to an operator, and so the addons that serve their own
endpoints (outbound, outreach, snippet) or edit a site's HTML (outbound link rewriting,
snippet injection) agree on which requests and pages are theirs.
"""

from __future__ import annotations

import html
import json
from collections.abc import Collection

from mitmproxy import http

from addons import metadata

SERVER_HEADER = "Portico"


def error_page_body(status: int, title: str, detail: str, request_id: str | None) -> str:
    """A small self-contained HTML page (no external assets)."""
    rid = f"<p class=rid>Request id: <code>{html.escape(request_id)}</code></p>" if request_id else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{status} {html.escape(title)}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:#222}"
        "h1{font-size:1.4em}code{background:#f3f3f3;padding:0 .3em}.rid{color:#555;font-size:.9em}</style>"
        f"</head><body><h1>{status} {html.escape(title)}</h1><p>{html.escape(detail)}</p>{rid}"
        "<hr><p class=rid>Portico gateway</p></body></html>"
    )


def error_response(
    status: int, title: str, detail: str, request_id: str | None, *, json_body: bool = False
) -> http.Response:
    """An error response; JSON when the client asked for JSON (API clients), else HTML."""
    headers = {"Server": SERVER_HEADER, "Cache-Control": "no-store"}
    if request_id:
        headers["X-Request-Id"] = request_id
    if json_body:
        body = json.dumps({"error": title, "detail": detail, "status": status, "request_id": request_id})
        headers["Content-Type"] = "application/json"
    else:
        body = error_page_body(status, title, detail, request_id)
        headers["Content-Type"] = "text/html; charset=utf-8"
    return http.Response.make(status, body.encode("utf-8"), headers)


def wants_json(request: http.Request) -> bool:
    """True when the client prefers JSON over HTML (Accept header)."""
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def reverse_request_target(flow: http.HTTPFlow) -> tuple[str, str] | None:
    """(path, query) of a live request on the reverse listener that nothing has answered yet, else None.

    Portico's own endpoints (redirects, pixels, clicks, the snippet and its beacon) sit under a
    site's reserved prefix: only the reverse listener serves them, and an earlier addon's
    answer (a block, a login page) wins.
    """
    if flow.response or flow.error or not flow.live:
        return None
    if flow.metadata.get(metadata.LISTENER) != "reverse":
        return None
    path, _, query = flow.request.path.partition("?")
    return path, query


def html_to_edit(flow: http.HTTPFlow, routes: Collection[str], max_bytes: int) -> http.Response | None:
    """The response when it is a whole HTML page (200, at most `max_bytes` as sent) from a
    route in `routes` ("*": every route) on the reverse listener and not one of our own
    pages; else None.

    Streamed bodies can't be edited in `response`; larger pages are passed on unchanged
    rather than held in memory.
    """
    resp = flow.response
    if resp is None or flow.error or resp.stream:
        return None
    if flow.metadata.get(metadata.LISTENER) != "reverse" or flow.metadata.get(metadata.BLOCKED_BY):
        return None
    if "*" not in routes and flow.metadata.get(metadata.ROUTE) not in routes:
        return None
    if resp.status_code != 200 or not resp.headers.get("content-type", "").lower().startswith("text/html"):
        return None
    if resp.raw_content is None or len(resp.raw_content) > max_bytes:
        return None
    return resp


def html_text(resp: http.Response) -> str | None:
    """The decoded body, or None when its content-encoding can't be undone (the caller logs why)."""
    try:
        return resp.get_text(strict=False)
    except ValueError:
        return None
