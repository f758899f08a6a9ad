"""Edit HTML pages once for several editors (outbound link rewriting, snippet injection).

Hook: `response`. Metadata read: LISTENER, BLOCKED_BY, ROUTE, ORIGINAL_HOST, ORIGINAL_PATH,
REQUEST_ID. Written: nothing.

Editors (`Outbound`, `Snippet`) implement `edit_html(page) -> bytes | None` on the page's
*bytes*; this addon does what they share, once per response:
- the cheap checks first (reverse listener, not answered by Portico, status 200, a route
  the editor is configured for, `text/html`, not streamed, at most `max_bytes` as sent),
  with one pass over the response headers;
- undoing the Content-Encoding (gzip, br, deflate, zstd) once and redoing it once, however
  many editors changed the page; an encoding it can't undo leaves the page unchanged
  (one log line);
- no text decoding when the charset is ASCII-compatible (UTF-8, Latin-1, Windows-125x,
  Shift_JIS... everything editors insert or look for is ASCII, and in those charsets an
  ASCII byte is always that character): editors search and splice bytes. Pages in UTF-16,
  UTF-32, UTF-7, ISO-2022 or EBCDIC are transcoded to UTF-8 for the editors and back;
- a memo of finished results per page: keyed by what the editors read but the body and
  the CSP (host, path, method, Content-Type, Content-Encoding), it holds the page's last
  MEMO_BODIES_PER_PAGE bodies as sent, each with its CSP and its result (two: a page
  alternating between two variants still hits; a page with a new nonce per response takes
  one entry, not one per nonce). A page served again (the common case) costs a dict
  lookup and a byte comparison with the body remembered (memcmp: ~0.05 us for 2 KB,
  stopping at the first difference), instead of a decompress, the edits and a recompress.
  Not hashing the body saves ~0.8 us a response for 2 KB, ~11 us for 50 KB (SipHash), and
  a page whose body differs every time loses nothing by trying, so there is no give-up
  rule. Hits are exact, so editors must be pure functions of those inputs.
- a template per page (addons/htmltemplate.py) for bodies that differ from the last one
  only in digits (counters, timestamps, ids) or in one token outside what the editors read
  (a CSRF token, a nonce): the last result with the changed span copied in, instead of
  running the editors. Only for pages sent without Content-Encoding, with
  an ASCII-compatible charset declared in Content-Type (a charset named in the body could
  change with a digit: iso-8859-1 / -2); a page whose template fails MEMO_GIVE_UP times in a
  row is tried again every MEMO_RETRY-th request. A template is kept per page,
  not per Content-Security-Policy: under a new policy (strict CSP: a nonce per response) the
  editors that read it redo their edits (`reads_csp`, `redo_edit`) and the rest is reused.
"""

from __future__ import annotations

import codecs
import logging
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache

from mitmproxy import http
from mitmproxy.net import encoding
from mitmproxy.http import Headers
from mitmproxy.net.http.headers import infer_content_encoding, parse_content_type

from addons import metadata
from addons.htmlpage import HtmlEditor, HtmlPage
from addons.htmltemplate import OwnedEdit, PageTemplate, merge_edits

log = logging.getLogger("portico.htmledit")

# a memo entry: (the body as sent, its CSP values, new body or None, new CSP values or None)
_Remembered = tuple[bytes, tuple[str, ...], bytes | None, list[str] | None]

MAX_EDIT_BYTES = 4 * 2**20
MEMO_ENTRIES = 128  # bodies in the memo (pages: up to MEMO_BODIES_PER_PAGE each); templates
MEMO_BODIES_PER_PAGE = 2
MEMO_MAX_BODY = 128 * 1024  # larger pages are edited every time rather than held in memory
MEMO_GIVE_UP = 8   # a page whose template missed this often in a row changes more than templates serve:
MEMO_RETRY = 32    # it is edited without asking for edits, but tried again every 32nd time
_KNOWN_ENCODINGS = frozenset({"", "identity", "gzip", "br", "deflate", "zstd"})
_WANTED = frozenset({b"content-type", b"content-encoding", b"content-security-policy", b"transfer-encoding"})
_PROBE = "<a href='https://x.example/'>\"=`</head></body>"


@lru_cache(maxsize=64)
def ascii_compatible(charset: str) -> bool:
    """True when ASCII text is encoded as itself and ASCII bytes never occur inside other
    characters (so bytes-level search and insertion of ASCII is safe). Unknown labels count
    as compatible: browsers treat them as windows-1252."""
    try:
        info = codecs.lookup(charset)
    except LookupError:
        return True
    if info.name.startswith(("utf-16", "utf-32", "utf-7", "iso2022", "hz", "cp037", "cp500", "cp1140",
                             "cp273", "cp875", "cp424", "cp1026")):
        return False
    try:
        return _PROBE.encode(info.name) == _PROBE.encode("ascii")
    except (UnicodeError, LookupError):
        return False


@lru_cache(maxsize=256)
def _declared_charset(content_type: str) -> str:
    parsed = parse_content_type(content_type)
    charset = (parsed[2].get("charset") or "") if parsed else ""
    return "gb18030" if charset.lower() in ("gb2312", "gbk") else charset


def _worth_trying(misses: int) -> bool:
    """Whether a template is tried after `misses` misses in a row: always at first, then
    every MEMO_RETRY-th time (a page may settle again)."""
    return misses < MEMO_GIVE_UP or misses % MEMO_RETRY == 0


def _templated_charset(content_type: str) -> bool:
    """A charset declared in Content-Type, in which ASCII digits are themselves (templates)."""
    charset = _declared_charset(content_type)
    return bool(charset) and ascii_compatible(charset)


def page_charset(content_type: str, body: bytes) -> str:
    """The charset mitmproxy's `get_text` would use: declared, else `<meta charset>`, else Latin-1."""
    return _declared_charset(content_type) or infer_content_encoding(content_type, body)


class HtmlEdit:
    """Runs the editors on HTML responses (see the module docstring)."""

    def __init__(self, editors: Sequence[HtmlEditor], max_bytes: int = MAX_EDIT_BYTES) -> None:
        self.editors = tuple(editors)
        self.max_bytes = max_bytes
        # page key -> its last bodies, newest first
        self._memo: OrderedDict[tuple[object, ...], list[_Remembered]] = OrderedDict()
        self._memo_bodies = 0  # bodies in all the pages' lists (at most MEMO_ENTRIES)
        # route -> (its editors, their ids, the indexes of those that read the CSP)
        self._by_route: dict[object, tuple[list[HtmlEditor], tuple[int, ...], frozenset[int]]] = {}
        # (editors, host, path, method, Content-Type) -> the page's template
        self._templates: OrderedDict[tuple[object, ...], PageTemplate] = OrderedDict()

    def response(self, flow: http.HTTPFlow) -> None:
        resp, md = flow.response, flow.metadata
        if resp is None or flow.error or resp.stream or resp.status_code != 200:
            return
        if md.get(metadata.LISTENER) != "reverse" or md.get(metadata.BLOCKED_BY):
            return
        route = md.get(metadata.ROUTE)
        chosen = self._by_route.get(route)
        if chosen is None:
            chosen = self._editors_for(route)
        editors, editor_ids, csp_readers = chosen
        raw = resp.raw_content
        if not editors or raw is None or len(raw) > self.max_bytes:
            return
        ctype, cenc, te, csp = "", "", "", []
        for name, value in resp.headers.fields:
            key = name.lower()
            if key in _WANTED:
                text = value.decode("utf-8", "surrogateescape")
                if key == b"content-type":
                    ctype = text
                elif key == b"content-encoding":
                    cenc = text.strip().lower()
                elif key == b"content-security-policy":
                    csp.append(text)
                elif key == b"transfer-encoding":
                    te = text
        if not ctype[:9].lower() == "text/html":
            return
        method = flow.request.method
        path = (md.get(metadata.ORIGINAL_PATH) or flow.request.path).split("?", 1)[0]
        host = md.get(metadata.ORIGINAL_HOST, "")
        key: tuple[object, ...] | None = None
        policy = tuple(csp)
        if len(raw) <= MEMO_MAX_BODY:
            key = (editor_ids, host, path, method, ctype, cenc)
            bodies = self._memo.get(key)
            if bodies is not None:
                for i, hit in enumerate(bodies):
                    if hit[0] == raw and hit[1] == policy:  # exact: the whole body, not a digest of it
                        if i:
                            bodies.insert(0, bodies.pop(i))
                        self._memo.move_to_end(key)
                        self._apply(resp, hit[2], hit[3], te)
                        return
        template_key: tuple[object, ...] | None = None
        template: PageTemplate | None = None
        if cenc in ("", "identity") and len(raw) <= MEMO_MAX_BODY and _templated_charset(ctype):
            template_key = (editor_ids, host, path, method, ctype)
            template = self._templates.get(template_key)
            if template is not None:
                trying = _worth_trying(template.misses)
                if trying:
                    out = self._from_template(template, raw, editors, csp_readers, ctype, host, path, method,
                                              policy, md)
                    if out is not None:
                        template.misses = 0
                        self._templates.move_to_end(template_key)
                        if key is not None:  # a page that turns static is then found in the memo
                            self._remember(key, raw, policy, out, template.csp)
                        self._apply(resp, out, template.csp, te)
                        return
                template.misses += 1
                if not trying:
                    template_key = None  # given up for now: edited without asking for edits
        result = self._edit(resp, raw, editors, ctype, cenc, csp, host, path, method,
                            str(md.get(metadata.REQUEST_ID) or ""), template_key is not None)
        if key is not None:
            self._remember(key, raw, policy, result[0], result[1])
        if template_key is not None and result[0] is not None and result[2] is not None:
            self._templates[template_key] = new = PageTemplate.build(raw, result[0], result[1], result[2], csp)
            # after a retry that missed, the next request tries the new template
            misses = template.misses if template is not None else 0
            new.misses = misses if misses <= MEMO_GIVE_UP else MEMO_GIVE_UP - 1
            self._templates.move_to_end(template_key)
            if len(self._templates) > MEMO_ENTRIES:
                self._templates.popitem(last=False)
        self._apply(resp, result[0], result[1], te)

    def _remember(self, key: tuple[object, ...], raw: bytes, policy: tuple[str, ...], out: bytes | None,
                  csp: list[str] | None) -> None:
        """Put a result first in its page's list (at most MEMO_BODIES_PER_PAGE), and drop the
        least recently used pages while the memo holds more than MEMO_ENTRIES bodies."""
        bodies = self._memo.get(key)
        if bodies is None:
            bodies = self._memo[key] = []
        else:
            self._memo.move_to_end(key)
        bodies.insert(0, (raw, policy, out, csp))
        self._memo_bodies += 1
        if len(bodies) > MEMO_BODIES_PER_PAGE:
            self._memo_bodies -= len(bodies) - MEMO_BODIES_PER_PAGE
            del bodies[MEMO_BODIES_PER_PAGE:]
        while self._memo_bodies > MEMO_ENTRIES:
            self._memo_bodies -= len(self._memo.popitem(last=False)[1])

    @staticmethod
    def _from_template(template: PageTemplate, raw: bytes, editors: list[HtmlEditor], csp_readers: frozenset[int],
                       ctype: str, host: str, path: str, method: str, policy: tuple[str, ...],
                       md: dict[str, object]) -> bytes | None:
        """`template.apply` for this response: an editor asked to redo an edit (`redo_edit`)
        sees the page's fields; when the Content-Security-Policy differs from the one the
        template was made under, the edits of the editors that read it (`csp_readers`) are
        redone too, and the policy they leave becomes the template's."""
        pages: list[HtmlPage] = []  # made at the first redo: most template hits redo nothing

        def redo(owner: int, span: bytes) -> bytes | None:
            redo_edit = getattr(editors[owner], "redo_edit", None)
            if redo_edit is None:
                return None
            if not pages:
                pages.append(HtmlPage(b"", _declared_charset(ctype), host, path, method,
                                      str(md.get(metadata.REQUEST_ID) or ""), list(policy)))
            return redo_edit(pages[0], span)

        if policy == template.csp_in:
            return template.apply(raw, redo)
        if not csp_readers and template.csp is not None:
            return None  # the policy was changed by an editor that doesn't say it reads it
        out = template.apply(raw, redo, csp_readers)
        if out is not None:
            template.csp = pages[0].csp if pages and pages[0].csp_changed else None
            template.csp_in = policy
        return out

    def _editors_for(self, route: object) -> tuple[list[HtmlEditor], tuple[int, ...], frozenset[int]]:
        """The editors configured for `route`, their ids (for the memo key) and the indexes of
        those that read the CSP (`reads_csp`, for templates), remembered per route."""
        editors = [e for e in self.editors if "*" in e.routes or route in e.routes]
        chosen = self._by_route[route] = (editors, tuple(id(e) for e in editors),
                                          frozenset(i for i, e in enumerate(editors) if getattr(e, "reads_csp", False)))
        if len(self._by_route) > 1024:  # routes are few; never grow without bound
            self._by_route.clear()
        return chosen

    def _edit(self, resp: http.Response, raw: bytes, editors: list[HtmlEditor], ctype: str, cenc: str,
              csp: list[str], host: str, path: str, method: str, rid: str,
              track: bool = False) -> tuple[bytes | None, list[str] | None, list[OwnedEdit] | None]:
        """(new raw body or None, new CSP values or None, the edits in `raw`'s coordinates or
        None). Edits are asked of the editors only with `track`, and returned only when every
        editor that changed the page reported them correctly."""
        if cenc not in _KNOWN_ENCODINGS:
            log.info("request %s: HTML of %s not edited: cannot decode content-encoding %r", rid, path, cenc)
            return None, None, None
        try:
            body = raw if cenc in ("", "identity") else encoding.decode(raw, cenc)
        except ValueError as e:
            log.info("request %s: HTML of %s not edited: %s", rid, path, e)
            return None, None, None
        assert isinstance(body, bytes)
        charset = page_charset(ctype, body)
        transcode = not ascii_compatible(charset)
        if transcode:
            try:
                body = body.decode(charset).encode("utf-8", "surrogatepass")
            except (UnicodeError, LookupError) as e:
                log.info("request %s: HTML of %s not edited: not valid %s: %s", rid, path, charset, e)
                return None, None, None
        page = HtmlPage(body, "utf-8" if transcode else charset, host, path, method, rid, list(csp))
        changed = False
        edits: list[OwnedEdit] | None = [] if track and not transcode and cenc in ("", "identity") else None
        for index, editor in enumerate(editors):
            page.edits = [] if edits is not None else None  # an earlier bad report stops asking
            new = editor.edit_html(page)
            if new is not None:
                if edits is not None:
                    edits = merge_edits(edits, page.body, new, page.edits or (), index)
                page.body, changed = new, True
        if not changed:
            return None, (page.csp if page.csp_changed else None), None
        out = page.body
        if transcode:
            out = out.decode("utf-8", "surrogatepass").encode(charset)
        if cenc not in ("", "identity"):
            out = encoding.encode(out, cenc)
            assert isinstance(out, bytes)
        return out, (page.csp if page.csp_changed else None), edits

    @staticmethod
    def _apply(resp: http.Response, raw: bytes | None, csp: list[str] | None, transfer_encoding: str) -> None:
        if raw is not None:
            resp.raw_content = raw
            if not transfer_encoding:  # with Transfer-Encoding there is no Content-Length to fix
                _set_content_length(resp.headers, len(raw))
        if csp is not None:
            resp.headers.set_all("content-security-policy", csp)


def _set_content_length(headers: Headers, length: int) -> None:
    """`headers["content-length"] = str(length)` in one pass over the fields (Headers'
    __setitem__ lower-cases and compares every field twice)."""
    value = str(length).encode()
    fields = headers.fields
    for i, (name, _) in enumerate(fields):
        if name.lower() == b"content-length":
            headers.fields = (*fields[:i], (name, value),
                              *(f for f in fields[i + 1:] if f[0].lower() != b"content-length"))
            return
    headers.fields = (*fields, (b"content-length", value))
