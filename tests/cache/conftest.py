"""Fixtures for the cache tests: a scripted upstream that counts requests, a gateway with
the cache on, and a fake clock the tests move instead of sleeping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.integration.harness import GatewayThread, LoopbackServer, QuietHandler, request

Reply = tuple[int, dict[str, str] | list[tuple[str, str]], bytes]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class ScriptedUpstream(LoopbackServer):
    """A real HTTP/1.1 server: `script[path]` is a Reply or a function(Seen) -> Reply.

    `seen` lists every request it received, so a test can assert a hit never reached it.
    """

    def __init__(self) -> None:
        self.script: dict[str, Reply | Callable[[Seen], Reply]] = {}
        self.seen: list[Seen] = []
        self.delay = 0.0
        self.clock: Callable[[], float] = time.time  # Date headers follow the rig's fake clock
        self.lock = threading.Lock()
        outer = self

        class Handler(QuietHandler):
            def date_time_string(self, timestamp: float | None = None) -> str:
                return super().date_time_string(outer.clock() if timestamp is None else timestamp)

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                with outer.lock:
                    outer.seen.append(seen)
                if outer.delay:
                    time.sleep(outer.delay)
                action = outer.script.get(self.path.split("?", 1)[0], (404, {"Cache-Control": "no-store"}, b"none"))
                self.reply(*(action(seen) if callable(action) else action))

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any  # noqa: N815

        super().__init__(Handler)

    def count(self, path: str | None = None, method: str | None = None) -> int:
        return sum(1 for s in self.seen if (path is None or s.path == path) and (method is None or s.method == method))


class Clock:
    """A clock the cache reads instead of time.time(); `advance` instead of sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def cache_config(upstream_url: str, path: Any, extra: str = "", route_extra: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
grpc: {{listen: 127.0.0.1:0}}
telemetry: {{enabled: false}}
logging: {{level: warning}}
cache:
  enabled: true
  path: {path}
{extra}
routes:
  - match: {{host: "*", path_prefix: /}}
    upstream: {upstream_url}
{route_extra}
"""


@dataclass
class CacheRig:
    """A gateway with the cache on in front of a scripted upstream, with a fake clock."""

    upstream: ScriptedUpstream
    gateway: GatewayThread
    clock: Clock
    cache: Any = field(default=None)

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET",
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        return request(self.gateway.url, path, method=method, headers=headers, body=body)


def start_rig(upstream: ScriptedUpstream, path: Any, extra: str = "", route_extra: str = "") -> CacheRig:
    gw = GatewayThread(cache_config(upstream.url, path, extra, route_extra))
    cache = gw.gateway.master.addons.get("cache")
    clock = Clock()
    cache.clock = clock
    upstream.clock = clock
    return CacheRig(upstream, gw, clock, cache)


@pytest.fixture
def upstream():
    up = ScriptedUpstream()
    yield up
    up.close()


@pytest.fixture
def rig(upstream, tmp_path):
    r = start_rig(upstream, tmp_path / "cache")
    yield r
    r.gateway.stop()
