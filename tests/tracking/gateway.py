"""A real gateway with telemetry on, an HTML upstream, and helpers to read its store."""

from __future__ import annotations

import gzip
import json
import time
from datetime import datetime, timedelta, timezone
from collections.abc import Callable
from typing import Any

import brotli

from telemetry.query import ListQuery
from tests.integration.harness import LoopbackServer, QuietHandler

PAGE = ("<!doctype html><html><head><title>{title}</title></head><body><h1>{title}</h1>"
        "<a href='https://example.net/partner?id=7'>partner</a> <a href=\"/about\">about</a>"
        "<button data-track=signup>Sign up</button></body></html>")


class HtmlUpstream(LoopbackServer):
    """Serves HTML plain, gzip- and br-encoded, with a CSP nonce, and JSON."""

    def __init__(self) -> None:
        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                headers = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}
                body = PAGE.format(title=path).encode()
                if path == "/gz":
                    body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
                elif path == "/br":
                    body, headers["Content-Encoding"] = brotli.compress(body), "br"
                elif path == "/csp":
                    headers["Content-Security-Policy"] = "script-src 'nonce-n0nc3' 'strict-dynamic'; object-src 'none'"
                elif path == "/json":
                    body = json.dumps({"link": "<a href='https://example.net/x'>x</a>"}).encode()
                    headers["Content-Type"] = "application/json"
                elif path == "/style.css":
                    body, headers["Content-Type"] = b"body{}", "text/css"
                self.reply(200, headers, body)

        super().__init__(Handler)


def gateway_config(upstream_url: str, data_dir: str, extra: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
grpc: {{listen: 127.0.0.1:0}}
cache: {{enabled: false}}
telemetry: {{path: {json.dumps(data_dir)}, sync: false}}
routes:
  - name: site
    match: {{host: "*", path_prefix: /}}
    upstream: {upstream_url}
tracking:
  recipients: true
  goals: [{{name: enrolled, path: /enrol/done}}, {{name: signup, event: newsletter.signup}}]
  bot_follow_timeout: 1s
  beacon: {{max_bytes: 4KB, max_events: 10, rate_per_minute: 30}}
{extra}
"""


def events(store: Any, *types: str, wait_for: int = 0, timeout: float = 10.0,
           where: Callable[[Any], bool] | None = None) -> list[Any]:
    """Events of `types` in the store (matching `where`); waits until at least `wait_for` are
    there (the gateway hands events to the store in batches, a few milliseconds late)."""
    deadline = time.monotonic() + timeout
    while True:
        store.flush(timeout=5)
        now = datetime.now(timezone.utc)
        page = store.list_events(ListQuery(start=now - timedelta(hours=1), end=now + timedelta(hours=1),
                                           types=tuple(types), limit=1000))
        found = [e for e in page.events if where is None or where(e)]
        if len(found) >= wait_for or time.monotonic() > deadline:
            store.flush(timeout=5)  # a batch listed just now is folded too: queries see all of them
            return found
        time.sleep(0.05)


def store_implemented() -> bool:
    """False while telemetry.store.Store is still a stub (lets the suite stay green meanwhile)."""
    import tempfile
    from pathlib import Path

    from telemetry.store import Store, StoreSettings

    with tempfile.TemporaryDirectory() as tmp:
        try:
            Store.open(StoreSettings(path=Path(tmp))).close()
        except NotImplementedError:
            return False
    return True


requires_store = __import__("pytest").mark.skipif(not store_implemented(),
                                                  reason="telemetry.store.Store is not implemented yet")

requires_query = __import__("pytest").mark.skipif(
    __import__("importlib.util").util.find_spec("telemetry.engine") is None,
    reason="telemetry.engine (Store.query) is not implemented yet")
