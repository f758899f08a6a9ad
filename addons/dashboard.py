"""The analytics dashboard, served by the gateway under `<reserved_prefix>dashboard/`.

Hooks: `request` (async). Metadata read: LISTENER, REQUEST_ID, USER, GROUPS (set by the
auth addon, which runs before this one). Written: BLOCKED_BY, DO_NOT_CACHE.

    <prefix>dashboard/                  the page (one HTML file; views chosen by ?view=)
    <prefix>dashboard/static/<file>     scripts, styles, the vendored chart library and map
    <prefix>dashboard/api/query[.csv]   a query: `portico query` flags as URL parameters
    <prefix>dashboard/api/funnel[.csv]  a funnel: `portico funnel` flags as URL parameters

Only users in one of `admin_groups` may open any of it: anonymous page requests are sent
to `<prefix>login?next=...` (API requests get 401 JSON), others get 403. Queries are
built by addons/dashboard_query.py into the same `telemetry.query` objects the gRPC API
builds and run in a thread (`asyncio.to_thread`); CSVs are written by the same
`telemetry.export` writers as `portico export`. Everything the page loads is served from
here (no CDN): see addons/static/dashboard/vendor/VENDOR.md.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import json
import logging
import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from mitmproxy import http

from addons import dashboard_query as dq
from addons import metadata
from addons.pages import SERVER_HEADER, error_response

log = logging.getLogger("portico.dashboard")

STATIC_DIR = Path(__file__).resolve().parent / "static" / "dashboard"
VENDOR_FILES = ("chart.umd.min.js", "topojson-client.min.js", "land-110m.json")
"""Installed from the npm registry by scripts/dashboard-assets.sh (pinned, sha256-checked)."""
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".json": "application/json", ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml",
          ".md": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8"}
_COMPRESSIBLE = (".js", ".css", ".json", ".html", ".svg", ".md", ".txt")


@dataclass(frozen=True)
class DashboardSettings:
    reserved_prefix: str = "/_portico/"
    admin_groups: tuple[str, ...] = ("admins",)
    default_tz: str = "UTC"
    default_range: str = "-7d"
    max_csv_rows: int = 100_000
    static_dir: Path = field(default=STATIC_DIR)


@dataclass(frozen=True)
class Access:
    """Who may see the dashboard: "admin", "anonymous" or "forbidden"."""

    verdict: str
    user: str | None = None


def decide_access(user: Any, groups: Any, admin_groups: tuple[str, ...]) -> Access:
    """Pure access decision from the auth addon's metadata."""
    if not user:
        return Access("anonymous")
    member = {str(g) for g in (groups or ())}
    return Access("admin" if member & set(admin_groups) else "forbidden", str(user))


def login_location(prefix: str, original: str) -> str:
    """`<prefix>login?next=<path and query>` (the auth addon checks `next` is local)."""
    return f"{prefix}login?next={quote(original, safe='/')}"


class Dashboard:
    """Serves the dashboard page, its assets and its JSON/CSV endpoints to admins."""

    def __init__(self, settings: DashboardSettings, store: Any) -> None:
        self.settings = settings
        self.store = store
        self.base = settings.reserved_prefix + "dashboard"
        self._assets: dict[str, tuple[bytes, bytes | None, str]] = {}
        missing = [n for n in VENDOR_FILES if not (settings.static_dir / "vendor" / n).is_file()]
        if missing:
            log.warning("dashboard: %s missing from %s: charts and the map will not render; run "
                        "scripts/dashboard-assets.sh", ", ".join(missing), settings.static_dir / "vendor")

    # ---- hook -----------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if flow.metadata.get(metadata.LISTENER, "reverse") != "reverse":
            return
        path = flow.request.path.split("?", 1)[0]
        if path != self.base and not path.startswith(self.base + "/"):
            return
        request_id = flow.metadata.get(metadata.REQUEST_ID)
        flow.metadata[metadata.DO_NOT_CACHE] = "dashboard"
        try:
            flow.response = await self._answer(flow, path[len(self.base):], request_id)
        except Exception:  # noqa: BLE001 - fail closed with the request id, never fall through
            log.exception("request %s: dashboard failed", request_id)
            flow.response = error_response(500, "Dashboard error", "The dashboard failed to answer; "
                                           "quote the request id to an operator.", request_id)
        flow.metadata[metadata.BLOCKED_BY] = "dashboard"

    async def _answer(self, flow: http.HTTPFlow, sub: str, request_id: str | None) -> http.Response:
        api = sub.startswith("/api/")
        access = decide_access(flow.metadata.get(metadata.USER), flow.metadata.get(metadata.GROUPS),
                               self.settings.admin_groups)
        if access.verdict == "anonymous":
            location = login_location(self.settings.reserved_prefix, flow.request.path)
            if api:
                return self._json(401, {"error": {"field": None, "message": "log in to use the dashboard"},
                                        "login": location}, request_id)
            return http.Response.make(302, b"", {"Location": location, "Cache-Control": "no-store",
                                                 "Server": SERVER_HEADER, "X-Request-Id": request_id or ""})
        if access.verdict != "admin":
            groups = ", ".join(self.settings.admin_groups)
            if api:
                return self._json(403, {"error": {"field": None, "message":
                                                  f"{access.user} is not in an admin group ({groups})"}},
                                  request_id)
            return error_response(403, "Forbidden", f"The dashboard is for members of: {groups}. "
                                  f"You are logged in as {access.user}.", request_id)
        if flow.request.method not in ("GET", "HEAD"):
            return error_response(405, "Method not allowed", "The dashboard only answers GET.", request_id)
        if sub == "":
            query = flow.request.path.partition("?")[2]
            return http.Response.make(301, b"", {"Location": self.base + "/" + ("?" + query if query else ""),
                                                 "Server": SERVER_HEADER})
        if sub == "/":
            return self._page(flow, request_id, access.user or "")
        if sub.startswith("/static/"):
            return self._static(flow, sub[len("/static/"):], request_id)
        if api:
            return await self._api(flow, sub[len("/api/"):], request_id)
        return error_response(404, "Not found", f"There is no dashboard page at {flow.request.path}.", request_id)

    # ---- page and assets ------------------------------------------------------------------

    def _page(self, flow: http.HTTPFlow, request_id: str | None, user: str) -> http.Response:
        s = self.settings
        text = (s.static_dir / "index.html").read_text(encoding="utf-8")
        for key, value in (("BASE", self.base + "/"), ("TZ", s.default_tz), ("RANGE", s.default_range),
                           ("USER", user), ("PREFIX", s.reserved_prefix)):
            text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
        return self._send(flow, 200, text.encode("utf-8"), "text/html; charset=utf-8", request_id,
                          cache="no-store")

    def _static(self, flow: http.HTTPFlow, name: str, request_id: str | None) -> http.Response:
        asset = self._asset(name)
        if asset is None:
            return error_response(404, "Not found", f"No dashboard asset {name!r}.", request_id)
        raw, gz, ctype = asset
        etag = f'"{len(raw):x}-{hash(raw) & 0xffffffff:x}"'
        if flow.request.headers.get("if-none-match") == etag:
            return http.Response.make(304, b"", {"ETag": etag, "Server": SERVER_HEADER})
        resp = self._send(flow, 200, raw, ctype, request_id, cache="private, max-age=300", gz=gz)
        resp.headers["ETag"] = etag
        return resp

    def _asset(self, name: str) -> tuple[bytes, bytes | None, str] | None:
        """(bytes, gzip bytes or None, content type) of a file under static_dir, or None."""
        if name in self._assets:
            return self._assets[name]
        root = self.settings.static_dir.resolve()
        if not name or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
            return None
        path = (root / name).resolve()
        if root not in path.parents or not path.is_file() or path.name == "index.html":
            return None
        raw = path.read_bytes()
        ctype = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        gz = gzip.compress(raw, 9, mtime=0) if path.suffix in _COMPRESSIBLE and len(raw) > 1024 else None
        self._assets[name] = (raw, gz, ctype)
        return self._assets[name]

    # ---- API ------------------------------------------------------------------------------

    async def _api(self, flow: http.HTTPFlow, name: str, request_id: str | None) -> http.Response:
        query_text = urlsplit(flow.request.path).query
        params = parse_qs(query_text, keep_blank_values=True)
        if name not in ("query", "query.csv", "funnel", "funnel.csv"):
            return self._json(404, {"error": {"field": None, "message":
                                              f"no endpoint api/{name}; use query, query.csv, funnel, funnel.csv"}},
                              request_id)
        if self.store is None:
            return self._json(503, {"error": {"field": None, "message":
                                              "telemetry is disabled on this gateway (telemetry.enabled: false)"}},
                              request_id)
        try:
            body, ctype = await asyncio.to_thread(self._run, name, params)
        except dq.TooManyRows as e:
            return self._json(413, {"error": {"field": None, "message": str(e)}}, request_id)
        except ValueError as e:  # QueryError and friends: the user's input
            return self._json(400, {"error": {"field": getattr(e, "field", None),
                                              "message": str(e)}}, request_id)
        except Exception as e:  # noqa: BLE001 - store failures: shown, not swallowed
            log.warning("request %s: dashboard query failed: %s: %s", request_id, type(e).__name__, e)
            status = 503 if type(e).__name__ in ("StoreClosedError", "StoreFullError") else 500
            return self._json(status, {"error": {"field": None, "message": f"{type(e).__name__}: {e}"}}, request_id)
        resp = self._send(flow, 200, body, ctype, request_id, cache="no-store")
        if name.endswith(".csv"):
            resp.headers["Content-Disposition"] = "attachment"
        return resp

    def _run(self, name: str, params: Mapping[str, list[str]]) -> tuple[bytes, str]:
        """Parse, query and render in a worker thread (LMDB reads must not block the loop)."""
        s = self.settings
        if name.startswith("query"):
            q = dq.query_from_params(params, default_tz=s.default_tz, default_from=s.default_range)
            if name == "query.csv":
                return dq.query_csv(self.store, q, s.max_csv_rows), "text/csv; charset=utf-8"
            return json.dumps(dq.query_json(self.store.query(q), q)).encode(), "application/json"
        fq = dq.funnel_from_params(params, default_from=s.default_range)
        if name == "funnel.csv":
            return dq.funnel_csv(self.store, fq), "text/csv; charset=utf-8"
        return json.dumps(dq.funnel_json(self.store.funnel(fq))).encode(), "application/json"

    # ---- responses ------------------------------------------------------------------------

    def _json(self, status: int, body: dict[str, Any], request_id: str | None) -> http.Response:
        if "error" in body:
            body["request_id"] = request_id
        return http.Response.make(status, json.dumps(body).encode(), {
            "Content-Type": "application/json", "Cache-Control": "no-store", "Server": SERVER_HEADER,
            "X-Request-Id": request_id or "", "X-Content-Type-Options": "nosniff"})

    @staticmethod
    def _send(flow: http.HTTPFlow, status: int, raw: bytes, ctype: str, request_id: str | None, *,
              cache: str, gz: bytes | None = None) -> http.Response:
        headers = {"Content-Type": ctype, "Cache-Control": cache, "Server": SERVER_HEADER,
                   "X-Request-Id": request_id or "", "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY", "Content-Security-Policy": CSP,
                   "Vary": "Accept-Encoding"}
        accepts_gzip = "gzip" in flow.request.headers.get("accept-encoding", "")
        if gz is None and accepts_gzip and len(raw) > 1400 and not ctype.startswith("image/"):
            gz = gzip.compress(raw, 6)
        resp = http.Response.make(status, b"", headers)
        if gz is not None and accepts_gzip:
            resp.headers["Content-Encoding"] = "gzip"
            resp.raw_content = gz
        else:
            resp.raw_content = raw
        resp.headers["Content-Length"] = str(len(resp.raw_content or b""))
        return resp
