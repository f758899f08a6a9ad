"""Real servers on loopback for end-to-end tests: upstream modules and a Portico gateway.

`GatewayThread` runs a real `proxy.server.Gateway` (mitmproxy + addons + gRPC) on its own
asyncio loop in a background thread, so tests can talk to it with blocking clients.
`EchoUpstream` is a real HTTP server that answers with what it received, as JSON.
`LoopbackServer` + `QuietHandler` are what every test upstream is built on (here, in
tests/cache/conftest.py, tests/tracking/gateway.py and the guard tests).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from proxy.config import PorticoConfig, parse_config
from proxy.server import Gateway


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive) and no access log on stderr; `reply` sends a whole response."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        return

    def reply(self, status: int, headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes) -> None:
        """Status, headers in order, a Content-Length unless given (or 204/304), and the body unless HEAD."""
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        self.send_response(status)
        for k, v in pairs:
            self.send_header(k, v)
        if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in pairs) \
                and status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)


class LoopbackServer:
    """A real threaded HTTP server on 127.0.0.1, port 0, serving `handler` from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class EchoUpstream(LoopbackServer):
    """Answers every request with JSON {method, path, headers, body, name}; `delay` slows it."""

    def __init__(self, name: str = "upstream", delay: float = 0.0,
                 extra: Callable[[BaseHTTPRequestHandler], bool] | None = None) -> None:
        self.name, self.delay, self.requests = name, delay, []
        outer = self

        class Handler(QuietHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
                outer.requests.append((self.command, self.path, dict(self.headers.items())))
                if extra is not None and extra(self):
                    return
                if outer.delay:
                    time.sleep(outer.delay)
                data = json.dumps({"name": outer.name, "method": self.command, "path": self.path,
                                   "headers": {k.lower(): v for k, v in self.headers.items()},
                                   "header_list": [[k.lower(), v] for k, v in self.headers.items()],
                                   "body": body}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any  # noqa: N815

        super().__init__(Handler)


class RawUpstream:
    """Answers each connection with fixed raw bytes (for protocol edge cases like 103)."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(self.response)
                time.sleep(0.2)

    def close(self) -> None:
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayThread:
    """A real Portico gateway on its own loop in a thread."""

    def __init__(self, config: PorticoConfig | str) -> None:
        self.config = parse_config(config) if isinstance(config, str) else config
        self.loop = asyncio.new_event_loop()
        self.gateway = Gateway(self.config)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="gateway")
        self.thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("gateway did not start in 30 s")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            try:
                await self.gateway.start()
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                self._error = e
                self._ready.set()
                return
            self._ready.set()
            await self.gateway._stopping.wait()

        self.loop.run_until_complete(main())

    @property
    def port(self) -> int:
        return self.gateway.listen_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30) -> None:
        if self._error is None and not self.gateway._stopped:
            asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(timeout)
        self.thread.join(timeout)

    def __enter__(self) -> "GatewayThread":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def request(url: str, path: str = "/", *, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; returns (status, lower-cased headers, body)."""
    host, port = url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def proxy_request(proxy_port: int, target: str, *, method: str = "GET",
                  timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """A forward-proxy request (absolute-form URL, or `host:port` with CONNECT)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=timeout)
    try:
        conn.request(method, target)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
