"""Portico's own endpoints under the reserved prefix (default `/_portico/`).

Hooks: `request`. Metadata read: REQUEST_ID. Written: BLOCKED_BY.

Answers `<prefix>health` (liveness and readiness as JSON, never cached) and refuses
any other path under the prefix that no other addon claimed, so a module behind the
gateway can never be reached through Portico's reserved space. Addons that serve their
own endpoints there (login, pixel, redirect, beacon, dashboard) run before this one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import http

from addons import metadata
from addons.pages import error_response, wants_json


@dataclass(frozen=True)
class EndpointsSettings:
    reserved_prefix: str = "/_portico/"
    version: str = "0"


class Endpoints:
    """Serves health and closes the rest of the reserved prefix."""

    def __init__(self, settings: EndpointsSettings, readiness: Callable[[], dict[str, str]] | None = None) -> None:
        self.settings = settings
        self.started = time.time()
        self.readiness = readiness or (lambda: {})

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if flow.metadata.get(metadata.LISTENER) != "reverse":
            return
        path = flow.request.path.split("?", 1)[0]
        prefix = self.settings.reserved_prefix
        if not (path + "/").startswith(prefix):
            return
        request_id = flow.metadata.get(metadata.REQUEST_ID)
        if path.rstrip("/") == prefix + "health":
            checks = self.readiness()
            ok = all(v == "ok" for v in checks.values())
            body = {"status": "ok" if ok else "degraded", "version": self.settings.version,
                    "uptime_s": round(time.time() - self.started, 1), "checks": checks}
            flow.metadata[metadata.BLOCKED_BY] = "endpoints:health"
            flow.response = http.Response.make(
                200 if ok else 503, json.dumps(body).encode(),
                {"Content-Type": "application/json", "Cache-Control": "no-store", "X-Request-Id": request_id or ""})
            return
        flow.metadata[metadata.BLOCKED_BY] = "endpoints:unknown"
        flow.response = error_response(404, "Not found", f"There is no Portico endpoint at {path}.", request_id,
                                       json_body=wants_json(flow.request))
