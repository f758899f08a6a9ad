"""HTML/JSON error and status pages that Portico's addons answer with.

Not an addon: a helper the addons share, so every page looks the same and carries the
request id a user can quote to an operator.
"""

from __future__ import annotations

import html
import json

from mitmproxy import http

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
