"""The operators' access log: Common, Combined or JSON lines, to stdout or a rotating file.

Hooks: `response`, `error` (after tracking: every flow, exactly one line), `done`.
Metadata read: REQUEST_ID, CLIENT_IP, ORIGINAL_PATH, USER, ROUTE, CACHE_STATUS, BLOCKED_BY.
Written: ACCESS_LOGGED.

Formats:
- common:   `%h %l %u %t "%r" %>s %b` (NCSA Common Log Format)
- combined: common + ` "%{Referer}i" "%{User-Agent}i"` (Apache's `combined`, GoAccess's
  COMBINED), so standard tools parse it.
- json:     one object per line with request id, route, cache outcome and durations.

Privacy: `%h` is the client's network address (host bits zeroed: `203.0.113.0`) unless
the tracking config keeps full addresses; the request line keeps only allow-listed query
parameters; the referrer is logged without its query. Lines are written by a background
thread (logging's QueueListener), so a slow disk never stalls the event loop.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from mitmproxy import http

from addons import metadata
from addons.privacy import clean_path, truncate_address

Format = Literal["common", "combined", "json"]


@dataclass(frozen=True)
class AccessLogSettings:
    format: Format = "combined"
    path: str = "-"  # "-": stdout
    max_size: int = 100 * 2**20
    backups: int = 5
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    query_allowlist: frozenset[str] = frozenset()


def _quote(value: str) -> str:
    """A value inside "..." in CLF: escape backslash, quote and control characters (as Apache does)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _token(value: str) -> str:
    """An unquoted CLF field: '-' when empty, no spaces."""
    value = "".join(ch for ch in value if ch > " " and ch != '"')
    return value or "-"


def clf_time(ts: float) -> str:
    """[10/Oct/2000:13:55:36 +0000] (always UTC)."""
    return time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime(ts))


def host_field(client_ip: str, v4: int, v6: int) -> str:
    net = truncate_address(client_ip, v4, v6)
    return net.split("/", 1)[0] if net else "-"


def referrer_without_query(referer: str) -> str:
    if not referer:
        return "-"
    parts = urlsplit(referer)
    if not parts.scheme or not parts.netloc:
        return "-"
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def format_line(flow: http.HTTPFlow, settings: AccessLogSettings, now: float | None = None) -> str:
    """One access log line for `flow` in the configured format."""
    req, resp, md = flow.request, flow.response, flow.metadata
    status = resp.status_code if resp is not None else 502
    size = len(resp.raw_content or b"") if resp is not None else 0
    path, _ = clean_path(md.get(metadata.ORIGINAL_PATH) or req.path, settings.query_allowlist)
    client = md.get(metadata.CLIENT_IP) or (flow.client_conn.peername[0] if flow.client_conn.peername else "")
    host = host_field(client, settings.ipv4_prefix, settings.ipv6_prefix)
    ts = req.timestamp_start or now or time.time()
    referer = referrer_without_query(req.headers.get("referer", ""))
    ua = req.headers.get("user-agent", "")
    user = str(md.get(metadata.USER) or "")
    if settings.format == "json":
        end = (resp.timestamp_end if resp is not None and resp.timestamp_end else None) or now or time.time()
        return json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z",
            "request_id": md.get(metadata.REQUEST_ID, ""), "client": host, "user": user or None,
            "method": req.method, "host": md.get(metadata.ORIGINAL_HOST, req.pretty_host), "path": path,
            "protocol": req.http_version, "status": status, "bytes": size,
            "duration_ms": round(max(0.0, end - ts) * 1000, 2), "referer": None if referer == "-" else referer,
            "user_agent": ua or None, "route": md.get(metadata.ROUTE), "cache": md.get(metadata.CACHE_STATUS),
            "blocked_by": md.get(metadata.BLOCKED_BY), "error": str(flow.error.msg) if flow.error else None,
        }, separators=(",", ":"))
    request_line = _quote(f"{req.method} {path} {req.http_version}")
    line = f'{host} - {_token(user)} {clf_time(ts)} "{request_line}" {status} {size if size else "-"}'
    if settings.format == "combined":
        line += f' "{_quote(referer)}" "{_quote(ua) if ua else "-"}"'
    return line


class AccessLog:
    """Writes one line per flow through a background writer thread."""

    def __init__(self, settings: AccessLogSettings) -> None:
        self.settings = settings
        if settings.path == "-":
            target: logging.Handler = logging.StreamHandler(sys.stdout)
        else:
            Path(settings.path).parent.mkdir(parents=True, exist_ok=True)
            target = logging.handlers.RotatingFileHandler(settings.path, maxBytes=settings.max_size,
                                                          backupCount=settings.backups, encoding="utf-8")
        target.setFormatter(logging.Formatter("%(message)s"))
        self._target = target
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        # An unregistered logger: several gateways in one process (tests) keep separate logs.
        self._logger = logging.Logger("portico.access")
        self._logger.addHandler(logging.handlers.QueueHandler(self._queue))
        self._listener = logging.handlers.QueueListener(self._queue, target)
        self._listener.start()

    def response(self, flow: http.HTTPFlow) -> None:
        self._log(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._log(flow)

    def _log(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(metadata.ACCESS_LOGGED):
            return
        flow.metadata[metadata.ACCESS_LOGGED] = True
        try:
            self._logger.info(format_line(flow, self.settings))
        except Exception:  # noqa: BLE001 - logging must never break a request
            logging.getLogger("portico.accesslog").exception("could not write the access log line")

    def done(self) -> None:
        self.close()

    def close(self) -> None:
        """Write what is queued and close the file."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None  # type: ignore[assignment]
            self._target.close()
