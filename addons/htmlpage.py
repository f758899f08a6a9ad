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
    # When a list (HtmlEdit asks for it to build a page template), an editor that returns a
    # new body appends what it changed: (start, end, new length) per edit, in the coordinates
    # of the body it was given, in order, not overlapping: the new body is the old one with
    # each [start, end) replaced by that many bytes. See HtmlEditor.edit_html.
    edits: list[tuple[int, int, int]] | None = None


class HtmlEditor(Protocol):
    routes: frozenset[str]

    def edit_html(self, page: HtmlPage) -> bytes | None:
        """The new body, or None to leave it.

        Must depend only on the page's fields (HtmlEdit memoises results). When `page.edits`
        is a list, also report every edit there, and keep this promise, on which HtmlEdit's
        page templates (addons/htmltemplate.py) rely: which edits are made, and where, does
        not change when
        - ASCII digits in the body are replaced by other digits (decisions see a digit only
          as "a digit", as regex classes like [a-z0-9] or [^"] do), or
        - a run of word characters ([A-Za-z0-9_]) changes that does not follow `<`, `</` or
          `-`, is not followed by `-`, and has no `<a` between it and the last `>` before it
          (so tag names, `</head`, `data-portico` and the inside of `<a>` tags are read;
          text, comments and other tags' attribute values are not);
        and what an edit inserts depends only on the bytes it replaces and the page's other
        fields. Outbound (a regex over `<a href>`) and Snippet (before `</head>`, unless
        `data-portico` is there) keep it; an editor that can't must leave `page.edits`
        alone, and its pages are then never served from a template.

        An editor may also have `redo_edit(page, span) -> bytes | None`: what it puts in place
        of one of its reported edits whose bytes are now `span` (changed in digits, or in one
        such run of word characters lying inside that edit, even inside an `<a` tag), the rest
        of the page being as before; None when it can't tell. It must then keep this promise
        too: such a change moves no edit of any editor, and inside an `<a` tag only the editor
        whose edit holds it reads it. Outbound keeps it (its edits are the href values; a
        change of word characters inside one can't end or start a value, and the regex
        decides a link's start before it reaches the value); Snippet has nothing inside links.

        An editor whose edits depend on the page's Content-Security-Policy (Snippet: the
        nonce in its tag, the hash it adds to the policy) sets `reads_csp = True` and has
        `redo_edit`: a template made under another policy asks it again for each of its
        edits (their bytes unchanged), with the new policy in `page.csp`, and takes the
        policy it leaves there. An editor that changes `page.csp` must say `reads_csp`.
        """
