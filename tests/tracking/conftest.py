"""Fixtures for the tracking tests: an event sink for addon unit tests (validating every
event with the real `telemetry.events` model) and flows built with mitmproxy's tflow."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from addons import metadata
from telemetry.events import coerce_event


class EventSink:
    """Stands in for `Store.submit` in unit tests; every event must pass the real validator."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def submit(self, events: list[Any]) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.events.extend(coerce_event(e) for e in events)  # raises EventError on a bad event
        fut.set_result(type("R", (), {"accepted": len(events), "duplicates": 0, "errors": []})())
        return fut

    def of(self, type_: str) -> list[Any]:
        return [e for e in self.events if e.type == type_]


@pytest.fixture
def sink() -> EventSink:
    return EventSink()


def make_flow(path: str = "/", *, host: str = "www.example.org", method: str = "GET",
              headers: dict[str, str] | None = None, client_ip: str = "203.0.113.77",
              status: int | None = 200, content_type: str = "text/html; charset=utf-8",
              body: bytes = b"<html><head></head><body>hi</body></html>", route: str = "site",
              resp_headers: dict[str, str] | None = None) -> http.HTTPFlow:
    """A reverse-listener flow as the Forwarded and Router addons leave it."""
    f = tflow.tflow(resp=status is not None)
    f.request.method = method
    f.request.path = path
    f.request.host = host
    f.request.headers.clear()
    f.request.headers["host"] = host
    for k, v in (headers or {}).items():
        f.request.headers[k] = v
    f.metadata.update({metadata.REQUEST_ID: "rid1", metadata.CLIENT_IP: client_ip, metadata.LISTENER: "reverse",
                       metadata.ORIGINAL_HOST: host, metadata.ORIGINAL_PATH: path, metadata.ROUTE: route})
    if status is not None:
        f.response = http.Response.make(status, body, {"Content-Type": content_type, **(resp_headers or {})})
    return f
