"""Deliver the final response when an upstream sends interim (1xx) responses first.

Hooks: `load` (installs the fix), `done` (removes it).

mitmproxy 11.0.2 reads an upstream's `103 Early Hints` (or `102 Processing`) as if it were
the final response and loses the real one, so clients hang or get an empty 103
(mitmproxy issue #2229). HTTP/1.1 lets intermediaries drop interim responses they don't
understand (RFC 9110 section 15.2), so this addon makes mitmproxy's HTTP/1 client skip
every 1xx head except `101 Switching Protocols` (a real protocol switch) before parsing
the response. The fix wraps one engine method; it is idempotent and undone on `done`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy.proxy import events
from mitmproxy.proxy.layers.http import _http1

log = logging.getLogger("portico.interim")

_INTERIM_STATUS = re.compile(rb"^HTTP/1\.[01] 1(?!01)\d\d\b")


def drop_interim_heads(buf: Any) -> int:
    """Remove complete 1xx (not 101) response heads from the start of `buf`; return how many."""
    dropped = 0
    while len(buf) and _INTERIM_STATUS.match(bytes(buf)[:16]):
        if buf.maybe_extract_lines() is None:  # head not complete yet: wait for more data
            break
        dropped += 1
    return dropped


class InterimResponses:
    """Installs the interim-response fix into mitmproxy's HTTP/1 client while loaded."""

    _original: Callable[..., Generator[Any, Any, None]] | None = None

    def load(self, loader: Any) -> None:
        if InterimResponses._original is not None:
            return
        original = _http1.Http1Client.read_headers
        InterimResponses._original = original

        def read_headers(self: _http1.Http1Client, event: events.ConnectionEvent) -> Generator[Any, Any, None]:
            if isinstance(event, events.DataReceived) and self.request is not None:
                if drop_interim_heads(self.buf):
                    log.debug("dropped interim response(s) from %s", self.conn.peername)
            return (yield from original(self, event))

        _http1.Http1Client.read_headers = read_headers  # type: ignore[method-assign]

    def done(self) -> None:
        if InterimResponses._original is not None:
            _http1.Http1Client.read_headers = InterimResponses._original  # type: ignore[method-assign]
            InterimResponses._original = None
