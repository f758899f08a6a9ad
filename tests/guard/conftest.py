"""Fixtures for the guard tests: a real unbound (DoT + DoH) with a test CA, upstreams, a
recording event sink standing in for the telemetry store's non-blocking `submit`."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guard.unbound import SERVER_NAME, Unbound

RECORDS = (
    "upstream.test. 60 IN A 127.0.0.1",
    "pinned.test. 60 IN A 127.0.0.2",
    "dual.test. 60 IN A 127.0.0.1",
    "dual.test. 60 IN AAAA ::1",
    "short.test. 1 IN A 127.0.0.1",
    "xn--pple-43d.com. 60 IN A 127.0.0.1",
    "examp1e.org. 60 IN A 127.0.0.1",
    "clean.example. 60 IN A 127.0.0.1",
    "casino.example. 60 IN A 127.0.0.1",
    "www.casino.example. 60 IN A 127.0.0.1",
    "dns.google. 60 IN A 127.0.0.1",
)


@pytest.fixture(scope="session")
def unbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unbound]:
    server = Unbound(tmp_path_factory.mktemp("unbound"), RECORDS)
    yield server
    server.stop()


def dns_yaml(u: Unbound, *, protocol: str = "dot", extra: str = "", server_name: str = SERVER_NAME) -> str:
    """A `dns:` section pointing at the test unbound."""
    port = u.dot_port if protocol == "dot" else u.doh_port
    return (f"dns:\n  resolvers:\n    - {{protocol: {protocol}, address: 127.0.0.1, port: {port}, "
            f"server_name: {server_name}, ca_file: '{u.ca_file}', timeout: 5s}}\n{extra}")


class RecordingStore:
    """The telemetry store's `submit` contract (non-blocking, returns a Future), recording events."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.lock = threading.Lock()

    def submit(self, events: list[dict]) -> concurrent.futures.Future:
        with self.lock:
            self.events.extend(events)
        f: concurrent.futures.Future = concurrent.futures.Future()
        f.set_result(None)
        return f

    def of(self, type_: str) -> list[dict]:
        with self.lock:
            return [e["attrs"] for e in self.events if e["type"] == type_]


@pytest.fixture
def sink() -> RecordingStore:
    return RecordingStore()


__all__ = ["dns_yaml", "RecordingStore", "Path"]
