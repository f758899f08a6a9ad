"""What an HTML editor sees (addons/htmledit.py runs editors; outbound and snippet are editors).

A module of its own, not part of the HtmlEdit addon, so that editors depend on this
contract only and no addon imports another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class HtmlPage:
    """What an editor sees: the decoded body (bytes in an ASCII-compatible charset) and context."""

    body: bytes
    charset: str
    host: str           # the host the client asked for
    path: str           # the page path without query
    method: str
    request_id: str
    csp: list[str] = field(default_factory=list)  # Content-Security-Policy values; editors may replace them
    csp_changed: bool = False


class HtmlEditor(Protocol):
    routes: frozenset[str]

    def edit_html(self, page: HtmlPage) -> bytes | None:
        """The new body, or None to leave it (must depend only on the page's fields)."""
