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
thread in batches (one write and flush per batch, looked for every 50 ms rather than woken
per line), so a slow disk never stalls the event loop.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from mitmproxy import http

from addons import metadata
from addons.headerscan import names, scan_headers
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


_QUOTE_TABLE = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {ord('"'): '\\"', ord("\\"): "\\\\"}


@lru_cache(maxsize=2048)  # User-Agents and request lines repeat
def _quote(value: str) -> str:
    """A value inside "..." in CLF: escape backslash, quote and control characters (as Apache does)."""
    return value.translate(_QUOTE_TABLE)


_TOKEN_TABLE = {c: None for c in (*range(33), ord('"'))}


def _token(value: str) -> str:
    """An unquoted CLF field: '-' when empty, no spaces."""
    return value.translate(_TOKEN_TABLE) or "-" if value else "-"


_clf_second = (-1, "")


def clf_time(ts: float) -> str:
    """[10/Oct/2000:13:55:36 +0000] (always UTC; formatted once per second)."""
    global _clf_second
    second = int(ts)
    if _clf_second[0] != second:
        _clf_second = (second, time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime(second)))
    return _clf_second[1]


@lru_cache(maxsize=4096)
def host_field(client_ip: str, v4: int, v6: int) -> str:
    net = truncate_address(client_ip, v4, v6)
    return net.split("/", 1)[0] if net else "-"


@lru_cache(maxsize=1024)
def referrer_without_query(referer: str) -> str:
    if not referer:
        return "-"
    try:
        parts = urlsplit(referer)
    except ValueError:  # not a URL ("http://[::1"): logged as no referrer
        return "-"
    if not parts.scheme or not parts.netloc:
        return "-"
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def format_line(flow: http.HTTPFlow, settings: AccessLogSettings, now: float | None = None) -> str:
    """One access log line for `flow` in the configured format."""
    req, resp, md = flow.request, flow.response, flow.metadata
    status = resp.status_code if resp is not None else 502
    size = len(resp.raw_content or b"") if resp is not None else 0
    path = _clean_path(md.get(metadata.ORIGINAL_PATH) or req.path, settings.query_allowlist)
    client = md.get(metadata.CLIENT_IP) or (flow.client_conn.peername[0] if flow.client_conn.peername else "")
    host = host_field(client, settings.ipv4_prefix, settings.ipv6_prefix)
    ts = req.timestamp_start or now or time.time()
    headers = scan_headers(req.headers, _HEADERS)
    referer = referrer_without_query(headers.get(b"referer", ""))
    ua = headers.get(b"user-agent", "")
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


_HEADERS = names("referer", "user-agent")


@lru_cache(maxsize=4096)
def _clean_path(path: str, allowlist: frozenset[str]) -> str:
    return clean_path(path, allowlist)[0]




class LineWriter:
    """Appends lines to stdout or a size-rotated file from one background thread, in batches.

    One write and one flush per batch (not per line, as logging's handlers do: their
    per-record flush and rollover `stat` calls cost half the gateway's throughput under load).
    `put` never wakes the thread (a wake-up per line is a GIL hand-off per request): the
    thread looks for lines every `interval` seconds. Rotation keeps `backups` older files
    (`access.log.1` newest) and never lets a file grow past `max_size` unless a single line
    is larger.
    """

    def __init__(self, path: str, max_size: int, backups: int, interval: float = 0.05) -> None:
        self.path = None if path == "-" else Path(path)
        self.max_size, self.backups = max_size, backups
        self.interval = interval
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._file = None
        self._size = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        self._thread = threading.Thread(target=self._run, name="portico-access-log", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        self._queue.put(line)

    def close(self) -> None:
        """Write what is queued, then close the file."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(10)
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> None:
        assert self.path is not None
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the writer's lifetime
        self._size = self._file.tell()

    def _rotate(self) -> None:
        assert self.path is not None and self._file is not None
        self._file.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.interval)
            batch: list[str] = []
            try:
                while True:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            try:
                self._write(batch)
            except OSError:
                logging.getLogger("portico.accesslog").exception("could not write %d access log line(s)", len(batch))
            if stopping:
                return

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        if self.path is None:
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
            return
        assert self._file is not None
        chunk: list[bytes] = []
        for line in lines:
            data = (line + "\n").encode("utf-8", "replace")
            if self._size > 0 and self._size + len(data) > self.max_size:
                self._file.write(b"".join(chunk))
                chunk = []
                self._rotate()
            chunk.append(data)
            self._size += len(data)
        self._file.write(b"".join(chunk))
        self._file.flush()


class AccessLog:
    """Writes one line per flow through a background writer thread."""

    def __init__(self, settings: AccessLogSettings) -> None:
        self.settings = settings
        self._writer: LineWriter | None = LineWriter(settings.path, settings.max_size, settings.backups)

    def response(self, flow: http.HTTPFlow) -> None:
        self._log(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._log(flow)

    def _log(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(metadata.ACCESS_LOGGED):
            return
        flow.metadata[metadata.ACCESS_LOGGED] = True
        try:
            if self._writer is not None:
                self._writer.put(format_line(flow, self.settings))
        except Exception:  # noqa: BLE001 - logging must never break a request
            logging.getLogger("portico.accesslog").exception("could not write the access log line")

    def done(self) -> None:
        self.close()

    def close(self) -> None:
        """Write what is queued and close the file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
