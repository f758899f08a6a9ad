"""Outbound links: rewrite external `<a href>` in HTML to a signed redirect; record the click.

Hooks: `request` (the redirect endpoint `<prefix>out`, before Endpoints). Rewriting is
`edit_html`, called by addons/htmledit.py for HTML responses of the configured routes.
Metadata read: LISTENER, ROUTE, ORIGINAL_HOST, CLIENT_IP, REQUEST_ID.
Written: BLOCKED_BY, VISITOR, SESSION.

A link `https://example.org/x` on page `/about` becomes
`/_portico/out?u=https%3A%2F%2Fexample.org%2Fx&f=%2Fabout&s=<hmac>`. Following it records
an `outbound` event (from page, target host and path, visitor) and answers 302 to the
target. The signature covers target and page: a missing, tampered or foreign signature
gets 400, so the endpoint is never an open redirect. HtmlEdit undoes and redoes the
Content-Encoding (gzip, br, deflate, zstd) and leaves non-HTML, streamed or oversized
bodies untouched; rewriting works on the page's bytes with one compiled regex split that
only calls Python code for candidate external links, and none per link for a set of links
seen before. Rewriting is idempotent (a rewritten link points at the gateway itself), so a
page rewritten before the cache stored it is not rewritten twice.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, quote, urlsplit

from mitmproxy import http

from addons import metadata
from addons.htmlpage import HtmlPage
from addons.pages import error_response, reverse_request_target
from addons.recorder import Recorder
from addons.signing import sign, verify
from addons.visitor import Visitors

log = logging.getLogger("portico.outbound")

PURPOSE = "outbound"
# One pass over the page for `<a ... href=VALUE` where VALUE could be external: absolute or
# protocol-relative (`scheme://`, `//`), or starting with an entity (`&#104;ttps://`, decoded
# before the check). Local links never reach Python code.
_HREF_VALUE = (rb"""(?:"(\s*(?:[a-z][a-z0-9+.-]*:)?//[^"]*|\s*&[^"]*)"|"""
               rb"""'(\s*(?:[a-z][a-z0-9+.-]*:)?//[^']*|\s*&[^']*)'"""
               rb"""|((?:[a-z][a-z0-9+.-]*:)?//[^\s"'=<>`]+|&[^\s"'=<>`]+))""")
_EXTERNAL_HREF = re.compile(rb"""(<a\b[^>]*?\bhref\s*=\s*)""" + _HREF_VALUE, re.IGNORECASE)
_EXTERNAL_VALUE = re.compile(_HREF_VALUE, re.IGNORECASE)  # one candidate's value, quotes included


SIGNED_LINKS = 4096
PAGE_LINK_SETS = 512


@dataclass(frozen=True)
class OutboundSettings:
    secret: bytes
    reserved_prefix: str = "/_portico/"
    routes: frozenset[str] = frozenset({"*"})  # route labels whose HTML is rewritten; "*" = all
    internal_hosts: frozenset[str] = frozenset()
    rewrite: bool = True


def redirect_path(secret: bytes, prefix: str, target: str, from_path: str) -> str:
    """The signed redirect path for an outbound link from `from_path` to `target`."""
    sig = sign(secret, PURPOSE, {"u": target, "f": from_path})
    return f"{prefix}out?u={quote(target, safe='')}&f={_quoted_path(from_path)}&s={sig}"


@lru_cache(maxsize=1024)
def _quoted_path(path: str) -> str:
    """`quote(path, safe='')`, remembered: every link of a page has the same page path, and
    quote() is a Python loop over the bytes."""
    return quote(path, safe="")


def is_external(href: str, page_host: str, internal_hosts: Collection[str]) -> bool:
    """An absolute http(s) (or protocol-relative) link to another host."""
    if not href.lower().startswith(("http://", "https://", "//")):
        return False
    try:
        host = (urlsplit(href).hostname or "").lower()
    except ValueError:
        return False
    return bool(host) and host != page_host and host not in internal_hosts


def rewrite_links_bytes(data: bytes, charset: str, secret: bytes, prefix: str, page_host: str, from_path: str,
                        internal_hosts: Collection[str] = (),
                        signed: OrderedDict[tuple[bytes, str, str, str], bytes] | None = None,
                        pages: OrderedDict[tuple[object, ...], tuple[list[bytes], int]] | None = None,
                        edits: list[tuple[int, int, int]] | None = None) -> tuple[bytes, int]:
    """(page bytes with external `<a href>` pointed at the signed redirect, number rewritten).

    `data` is in `charset`, which must be ASCII-compatible (see addons/htmledit.py): only the
    href values are decoded. `signed` memoises (href bytes, charset, page host, page path) ->
    escaped redirect path, or b"" for a link that is not external after all, across pages
    (bounded by SIGNED_LINKS): pages that change on every request still link to the same
    places, each signature is an HMAC, and the lookup needs no decoding. `pages` memoises a page's
    whole set of candidate links (bounded by PAGE_LINK_SETS): a page whose body changes on
    every request (a token, a counter, a timestamp) but whose links don't is then rewritten
    without any Python code per link: one regex split, slice assignments and a join.
    With `edits` (a list), every candidate link's VALUE (quotes included: the `<a ... href=`
    before it is kept as it is) is appended to it as (start, end, new length), rewritten or
    not: whether a link is external is decided on those bytes alone (see HtmlPage.edits),
    and `Outbound.redo_edit` tells a changed one's replacement on its own.
    """
    pieces = _EXTERNAL_HREF.split(data)  # text, then 4 groups and text per candidate link
    if len(pieces) == 1:
        return data, 0
    key: tuple[object, ...] | None = None
    if pages is not None:
        key = (charset, page_host, from_path, *pieces[1::5], *pieces[2::5], *pieces[3::5], *pieces[4::5])
        known = pages.get(key)
        if known is not None:
            pages.move_to_end(key)
            if edits is not None:
                edits += _link_edits(pieces, known[0])
            return _splice(pieces, known[0]), known[1]
    count = 0
    replacements: list[bytes] = []
    for i in range(1, len(pieces), 5):
        head, double, single, bare = pieces[i:i + 4]
        raw = _value(double, single, bare)
        done = _signed_remembered(raw, charset, secret, prefix, page_host, from_path, internal_hosts, signed)
        if not done:  # not external after all: the link exactly as it was
            quote_mark = b'"' if double is not None else b"'" if single is not None else b""
            replacements.append(head + quote_mark + raw + quote_mark)
        else:
            count += 1
            replacements.append(head + b'"' + done + b'"')
    if pages is not None and key is not None:
        pages[key] = (replacements, count)
        if len(pages) > PAGE_LINK_SETS:
            pages.popitem(last=False)
    if edits is not None:
        edits += _link_edits(pieces, replacements)
    return _splice(pieces, replacements), count


def _link_edits(pieces: list[bytes | None], replacements: list[bytes]) -> list[tuple[int, int, int]]:
    """(start, end, new length) of each link value matched in `pieces` (from
    `_EXTERNAL_HREF.split`, before `_splice`), with the quotes the groups leave out; each
    replacement is the match's head as it was, then the new value."""
    out: list[tuple[int, int, int]] = []
    at = 0
    for i, new in zip(range(0, len(pieces) - 1, 5), replacements):
        head, double, single, bare = pieces[i + 1:i + 5]
        at += len(pieces[i]) + len(head)  # type: ignore[arg-type]  # text pieces and heads are never None
        end = at + len(_value(double, single, bare)) + (0 if bare is not None else 2)
        out.append((at, end, len(new) - len(head)))  # type: ignore[arg-type]
        at = end
    return out


def _value(double: bytes | None, single: bytes | None, bare: bytes | None) -> bytes:
    """The href value a match found: in double quotes, single quotes or none (one group is set)."""
    value = double if double is not None else single if single is not None else bare
    assert value is not None
    return value


def _splice(pieces: list[bytes | None], replacements: list[bytes]) -> bytes:
    """`pieces` from `_EXTERNAL_HREF.split` with each link's 4 groups replaced by its replacement."""
    pieces[1::5] = replacements
    pieces[2::5] = pieces[3::5] = pieces[4::5] = [b""] * len(replacements)
    return b"".join(pieces)  # type: ignore[arg-type]  # no None left


def _signed_remembered(raw: bytes, charset: str, secret: bytes, prefix: str, page_host: str, from_path: str,
                       internal_hosts: Collection[str],
                       signed: OrderedDict[tuple[bytes, str, str, str], bytes] | None) -> bytes:
    """`_signed_path`, looked up in and added to `signed` when given (bounded by SIGNED_LINKS)."""
    link = (raw, charset, page_host, from_path)
    done = signed.get(link) if signed is not None else None
    if done is None:
        done = _signed_path(raw, charset, secret, prefix, page_host, from_path, internal_hosts)
        if signed is not None:
            signed[link] = done
            if len(signed) > SIGNED_LINKS:
                signed.popitem(last=False)
    return done


def _signed_path(raw: bytes, charset: str, secret: bytes, prefix: str, page_host: str, from_path: str,
                 internal_hosts: Collection[str]) -> bytes:
    """The escaped signed redirect path for one href value as found in the page, or b""
    when it isn't an external link (remembered too: a same-host absolute link is parsed once)."""
    href = html.unescape(raw.decode(charset, "replace")).strip()
    if not is_external(href, page_host, internal_hosts):
        return b""
    target = "https:" + href if href.startswith("//") else href
    return html.escape(redirect_path(secret, prefix, target, from_path), quote=True).encode("ascii")


def rewrite_links(text: str, secret: bytes, prefix: str, page_host: str, from_path: str,
                  internal_hosts: Collection[str] = ()) -> tuple[str, int]:
    """(HTML with external `<a href>` pointed at the signed redirect, number rewritten)."""
    out, count = rewrite_links_bytes(text.encode("utf-8", "surrogatepass"), "utf-8", secret, prefix, page_host,
                                     from_path, internal_hosts)
    return out.decode("utf-8", "surrogatepass"), count


def check_redirect(secret: bytes, query: str) -> tuple[str, str] | str:
    """(target, from path) of a valid redirect query, or the reason it is refused."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    target, from_path = params.get("u", ""), params.get("f", "")
    if not target or "s" not in params:
        return "the link is incomplete (target or signature missing)"
    if not verify(secret, PURPOSE, {"u": target, "f": from_path, "s": params["s"]}):
        return "the link's signature does not match its target"
    if urlsplit(target).scheme not in ("http", "https"):
        return "the target is not an http(s) URL"
    return target, from_path


class Outbound:
    """Signs external links in HTML (an editor for addons/htmledit.py) and serves the redirect."""

    def __init__(self, settings: OutboundSettings, recorder: Recorder, visitors: Visitors) -> None:
        self.settings = settings
        self.routes = settings.routes
        self.recorder = recorder
        self.visitors = visitors
        self.endpoint = settings.reserved_prefix + "out"
        self.request_paths = frozenset({self.endpoint})  # `request` answers only these (addons/bundle.py)
        self._signed: OrderedDict[tuple[bytes, str, str, str], bytes] = OrderedDict()
        self._pages: OrderedDict[tuple[object, ...], tuple[list[bytes], int]] = OrderedDict()

    def edit_html(self, page: HtmlPage) -> bytes | None:
        """The page with its external links signed, or None when it has none."""
        if not self.settings.rewrite:
            return None
        s = self.settings
        edits: list[tuple[int, int, int]] | None = [] if page.edits is not None else None
        new, count = rewrite_links_bytes(page.body, page.charset, s.secret, s.reserved_prefix, page.host,
                                         page.path, s.internal_hosts, self._signed, self._pages, edits)
        if not count:
            return None
        if page.edits is not None and edits:
            page.edits += edits
        return new

    def redo_edit(self, page: HtmlPage, span: bytes) -> bytes | None:
        """What `edit_html` puts in place of a link value it reported, now that the value's
        bytes changed to `span` (see HtmlEditor.edit_html); None when `span` is not a
        candidate link value any more (the page is then edited in full)."""
        m = _EXTERNAL_VALUE.fullmatch(span)
        if m is None:
            return None
        raw = _value(*m.groups())
        s = self.settings
        done = _signed_remembered(raw, page.charset, s.secret, s.reserved_prefix, page.host, page.path,
                                  s.internal_hosts, self._signed)
        return b'"' + done + b'"' if done else span

    def request(self, flow: http.HTTPFlow) -> None:
        target = reverse_request_target(flow)
        if target is None or target[0] != self.endpoint:
            return
        query = target[1]
        request_id = flow.metadata.get(metadata.REQUEST_ID)
        checked = check_redirect(self.settings.secret, query)
        if isinstance(checked, str):
            flow.metadata[metadata.BLOCKED_BY] = "outbound:bad-signature"
            log.info("request %s: refused outbound redirect: %s", request_id, checked)
            flow.response = error_response(400, "Bad link", f"This redirect link is not valid: {checked}.",
                                           request_id)
            return
        target, from_path = checked
        site = flow.metadata.get(metadata.ORIGINAL_HOST, "")
        visit = self.visitors.visit(site, flow.metadata.get(metadata.CLIENT_IP, ""),
                                    flow.request.headers.get("user-agent", ""))
        visit.state.browser_seen = True
        flow.metadata[metadata.VISITOR], flow.metadata[metadata.SESSION] = visit.visitor, visit.session
        parts = urlsplit(target)
        self.recorder.submit([{"type": "outbound", "time": time.time(), "attrs": {
            "from": from_path.split("?", 1)[0][:1024], "host": site, "target_host": (parts.hostname or "").lower(),
            "target_path": (parts.path or "/")[:1024], "via": "redirect", "visitor": visit.visitor,
            "session": visit.session}}])
        flow.metadata[metadata.BLOCKED_BY] = "outbound:redirect"
        flow.response = http.Response.make(302, b"", {
            "Location": target, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer-when-downgrade",
            "X-Request-Id": request_id or ""})
