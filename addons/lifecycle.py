"""Counts requests in flight so shutdown can let them finish.

Hooks: `requestheaders`, `response`, `error`. Metadata: none.

`proxy/server.py` stops the listeners on SIGTERM/SIGINT, then awaits `drained()` for up to
`shutdown_grace` before closing everything. While draining, responses carry
`Connection: close` so keep-alive clients move to another instance.
"""

from __future__ import annotations

import asyncio

from mitmproxy import http


class Lifecycle:
    """Tracks in-flight flows; `drained()` resolves when none are left."""

    def __init__(self) -> None:
        self.in_flight: set[str] = set()
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.in_flight.add(flow.id)
        self._idle.clear()

    def response(self, flow: http.HTTPFlow) -> None:
        if self.draining and flow.response is not None:
            flow.response.headers["Connection"] = "close"
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        self.in_flight.discard(flow.id)
        if not self.in_flight:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` seconds passed first."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
