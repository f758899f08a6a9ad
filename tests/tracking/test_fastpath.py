"""The cheap ON path: bundled hooks, batched submits, and HTML edits on bytes (charsets,
content encodings, the result memo, CSP hashes)."""

from __future__ import annotations

import asyncio
import gzip

import pytest

from addons import metadata
from addons.bundle import Bundle, BundleError
from addons.eventbatch import BatchRecorder
from addons.htmledit import HtmlEdit, ascii_compatible
from addons.outbound import Outbound, OutboundSettings, check_redirect
from addons.recorder import Recorder
from addons.snippet import Snippet, SnippetSettings
from addons.visitor import Salts, Visitors
from tests.tracking.conftest import make_flow

SECRET = b"0123456789abcdef0123456789abcdef"
PAGE = "<html><head><title>Café</title></head><body><a href='https://example.net/x'>ext</a></body></html>"


def encoded_flow(path, raw, content_encoding, **kw):
    """A flow whose response body is `raw` as sent, with that Content-Encoding (no re-encoding)."""
    f = make_flow(path, **kw)
    f.response.headers["content-encoding"] = content_encoding
    f.response.raw_content = raw
    f.response.headers["content-length"] = str(len(raw))
    return f


@pytest.fixture
def editor(tmp_path, sink):
    visitors = Visitors(Salts(tmp_path))
    outbound = Outbound(OutboundSettings(secret=SECRET), Recorder(sink), visitors)
    snippet = Snippet(SnippetSettings(secret=SECRET), Recorder(sink), visitors)
    return HtmlEdit([outbound, snippet])


# --- Bundle ------------------------------------------------------------------------------------

def test_bundle_calls_parts_in_order_and_awaits_a_returned_coroutine():
    calls = []

    class Sync:
        def request(self, flow):
            calls.append(("sync", flow))

    class Async:
        def request(self, flow):
            async def later():
                calls.append(("async", flow))
            return later()

    class After:
        def request(self, flow):
            calls.append(("after", flow))

        def done(self):
            calls.append(("done", None))

    bundle = Bundle("b", [Sync(), Async(), After()])
    pending = bundle.request("f")
    assert calls == [("sync", "f")] and pending is not None
    asyncio.run(pending)
    assert calls == [("sync", "f"), ("async", "f"), ("after", "f")]
    assert bundle.done() is None and calls[-1] == ("done", None)
    assert Bundle("b", [Sync()]).response("f") is None  # no part has the hook


def test_a_part_that_raises_is_logged_and_the_next_part_still_runs(caplog):
    calls = []

    class Broken:
        def request(self, flow):
            raise ValueError("Invalid IPv6 URL")

    class BrokenLater:
        def request(self, flow):
            async def later():
                raise RuntimeError("later")
            return later()

    class Closes:  # as Endpoints closes the reserved prefix after the endpoints before it
        def request(self, flow):
            calls.append(flow)

    with caplog.at_level("ERROR", logger="portico.bundle"):
        assert Bundle("b", [Broken(), Closes()]).request("f1") is None
        asyncio.run(Bundle("b", [BrokenLater(), Broken(), Closes()]).request("f2"))
    assert calls == ["f1", "f2"]
    assert caplog.text.count("addon error in") == 3 and "Broken.request" in caplog.text


def test_bundle_refuses_a_part_with_a_hook_it_would_drop():
    class Connects:
        def server_connect(self, data):
            pass

    with pytest.raises(BundleError, match="Connects.server_connect"):
        Bundle("b", [Connects()])


class Recording:
    """An after_chain part: notes what the response looked like when its hook ran."""

    def __init__(self, log):
        self.log = log

    def response(self, flow):
        self.log.append(("recorded", flow.response.headers.get("x-later", "")))

    def error(self, flow):
        self.log.append(("error", str(flow.error.msg)))


class Later:
    """An addon after the bundle in the chain that changes the response."""

    def __init__(self, log):
        self.log = log

    def response(self, flow):
        self.log.append(("later", ""))
        flow.response.headers["x-later"] = "seen"


class Named:
    name = "outreach"

    def request(self, flow):
        flow.metadata["named"] = True


def test_after_chain_parts_run_once_the_whole_chain_has_run_the_hook():
    """Through mitmproxy's own AddonManager: the deferred part sees what a later addon did."""
    from mitmproxy import hooks
    from mitmproxy.proxy.layers.http import HttpErrorHook, HttpResponseHook
    from mitmproxy.test import taddons, tflow

    log = []
    with taddons.context(loadcore=False) as tctx:
        bundle = Bundle("b", [], visible=[Named()], after_chain=[Recording(log)])
        tctx.master.addons.add(bundle, Later(log))
        assert tctx.master.addons.get("outreach") is bundle.parts[0]  # findable by name, not a child
        assert not hasattr(bundle, "addons") and len(tctx.master.addons.chain) == 2
        flow = tflow.tflow(resp=True)

        async def run():
            await tctx.master.addons.handle_lifecycle(hooks.UpdateHook([flow]))  # nothing due yet
            await tctx.master.addons.handle_lifecycle(HttpResponseHook(flow))
            broken = tflow.tflow(err=True)
            await tctx.master.addons.handle_lifecycle(HttpErrorHook(broken))

        asyncio.run(run())
    assert log == [("later", ""), ("recorded", "seen"), ("error", "error")]
    assert "portico.bundle.due" not in flow.metadata
    assert not hasattr(bundle, "update")  # nothing due: mitmproxy's updates find no hook


def test_update_hook_exists_only_while_a_deferred_hook_is_due():
    """mitmproxy sends `update` after every flow event; the bundle answers only while some
    flow has its recorders due, and a flow that never gets its update doesn't pin it."""
    import gc

    from mitmproxy.test import tflow

    log = []
    bundle = Bundle("b", [], after_chain=[Recording(log)])
    assert not hasattr(bundle, "update")
    first, second = tflow.tflow(resp=True), tflow.tflow(resp=True)
    bundle.response(first)
    bundle.response(second)
    assert callable(bundle.update)
    bundle.update([first])
    assert callable(bundle.update)  # the second flow is still due
    bundle.update([second])
    assert not hasattr(bundle, "update") and len(log) == 2
    lost = tflow.tflow(resp=True)
    bundle.response(lost)  # killed before its update
    del lost
    gc.collect()
    other = tflow.tflow(resp=True)
    bundle.update([other])  # the next update of any flow finds nothing due any more
    assert not hasattr(bundle, "update") and len(log) == 2


def test_chain_entry_joins_bundles_in_order_and_keeps_every_part_findable():
    from addons.bundle import chain_entry
    from mitmproxy.test import taddons

    calls = []

    class Endpoint:
        def request(self, flow):
            calls.append("endpoint")

    class Part:
        def request(self, flow):
            calls.append("part")

    plain = Endpoint()
    assert chain_entry("e", [plain]) is plain  # nothing to join: the addon itself
    entry = chain_entry("e", [Bundle("t", [Part()], visible=[Named()]), plain], after_chain=[Recording([])])
    assert [type(p).__name__ for p in entry.parts] == ["Part", "Named", "Endpoint"]
    flow = make_flow("/")
    entry.request(flow)
    assert calls == ["part", "endpoint"] and flow.metadata["named"] is True
    with taddons.context(loadcore=False) as tctx:
        tctx.master.addons.add(entry)
        assert {n: type(tctx.master.addons.get(n)).__name__ for n in ("outreach", "endpoint", "recording")} == {
            "outreach": "Named", "endpoint": "Endpoint", "recording": "Recording"}
    with pytest.raises(BundleError, match="'endpoint'"):
        chain_entry("e", [Endpoint(), Endpoint()])


def test_after_chain_part_with_a_request_hook_is_refused():
    with pytest.raises(BundleError, match="Named.request"):
        Bundle("b", [], after_chain=[Named()])


# --- BatchRecorder -----------------------------------------------------------------------------

def test_batch_recorder_submits_once_per_batch_on_the_loop(sink):
    calls = []

    class Counting:
        def submit(self, events):
            calls.append(len(events))
            return sink.submit(events)

    async def run():
        recorder = BatchRecorder(Counting(), max_events=1000, interval=0.01)
        for i in range(5):
            recorder.submit([{"type": "request", "time": 1_767_225_600, "attrs": {"n": i}}])
        assert calls == [] and recorder.buffered == 5
        await asyncio.sleep(0.05)
        assert calls == [5] and recorder.buffered == 0
        recorder.submit([{"type": "request", "time": 1_767_225_600, "attrs": {"n": 9}}])
        recorder.flush()  # shutdown: no waiting for the timer
        assert calls == [5, 1]

    asyncio.run(run())
    assert [e.attrs["n"] for e in sink.of("request")] == [0, 1, 2, 3, 4, 9]


def test_batch_recorder_counts_a_failed_batch_without_raising():
    class Broken:
        def submit(self, events):
            raise RuntimeError("store closed")

    recorder = BatchRecorder(Broken())
    recorder.submit([{"type": "x", "attrs": {}}, {"type": "x", "attrs": {}}])  # no loop: at once
    assert recorder.failed == 2


# --- HTML edits --------------------------------------------------------------------------------

@pytest.mark.parametrize(("charset", "ok"), [
    ("utf-8", True), ("ISO-8859-1", True), ("windows-1252", True), ("shift_jis", True), ("x-unknown", True),
    ("utf-16", False), ("utf-16-le", False), ("utf-32", False), ("utf-7", False), ("iso-2022-jp", False),
    ("cp037", False)])
def test_ascii_compatible_charsets(charset, ok):
    assert ascii_compatible(charset) is ok


@pytest.mark.parametrize("charset", ["utf-8", "iso-8859-1", "utf-16"])
def test_page_is_edited_in_its_own_charset(editor, charset):
    f = make_flow("/p", body=PAGE.encode(charset), content_type=f"text/html; charset={charset}")
    editor.response(f)
    text = f.response.raw_content.decode(charset)
    assert "<title>Café</title>" in text  # non-ASCII text kept, in the page's charset
    assert 'href="/_portico/out?u=https%3A%2F%2Fexample.net%2Fx' in text and "data-portico" in text
    assert f.response.headers["content-length"] == str(len(f.response.raw_content))
    assert f.response.headers["content-type"] == f"text/html; charset={charset}"


def test_charset_from_meta_when_the_header_has_none(editor):
    body = ("<html><head><meta charset=iso-8859-1><title>Café</title></head><body></body></html>").encode("latin-1")
    f = make_flow("/p", body=body, content_type="text/html")
    editor.response(f)
    assert f.response.raw_content.startswith(body[:40]) and "Café".encode("latin-1") in f.response.raw_content


def test_gzip_page_is_decoded_and_encoded_once_and_memo_gives_the_same_bytes(editor):
    raw = gzip.compress(PAGE.encode())
    outputs = []
    for _ in range(2):
        f = encoded_flow("/p", raw, "gzip")
        editor.response(f)
        outputs.append(f.response.raw_content)
    assert outputs[0] == outputs[1] and len(editor._memo) == 1
    html = gzip.decompress(outputs[0]).decode()
    link = html.split('href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert check_redirect(SECRET, link.split("?", 1)[1]) == ("https://example.net/x", "/p")
    other = encoded_flow("/other", raw, "gzip")
    editor.response(other)  # same body, another page: signed for that page, not served from the memo
    assert "f=%2Fother" in gzip.decompress(other.response.raw_content).decode()


def test_memo_hit_is_exact_for_bodies_of_the_same_length(editor):
    """The memo holds a page's last bodies and compares the whole body: a body of the same
    length with another link is edited afresh, never given the other body's result, and a
    page alternating between two variants gets each its own."""
    first = PAGE.replace("example.net/x", "example.net/a")
    second = PAGE.replace("example.net/x", "example.net/b")   # same length, other link
    assert len(first) == len(second)
    outputs = []
    for body in (first, second, first, second):
        f = encoded_flow("/p", body.encode(), "identity")
        editor.response(f)
        html = f.response.raw_content.decode()
        link = html.split('href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        outputs.append(check_redirect(SECRET, link.split("?", 1)[1])[0])
    assert outputs == ["https://example.net/a", "https://example.net/b"] * 2


def test_unknown_content_encoding_and_non_html_are_left_alone(editor):
    f = encoded_flow("/p", b"\x00\x01garbage", "x-custom")
    editor.response(f)
    assert f.response.raw_content == b"\x00\x01garbage" and f.response.headers["content-encoding"] == "x-custom"
    j = make_flow("/j", body=PAGE.encode(), content_type="application/json")
    editor.response(j)
    assert j.response.raw_content == PAGE.encode()
    blocked = make_flow("/b", body=PAGE.encode())
    blocked.metadata[metadata.BLOCKED_BY] = "acl:deny"
    editor.response(blocked)
    assert blocked.response.raw_content == PAGE.encode()


def test_hash_only_csp_gets_the_inline_snippet_and_its_hash(editor):
    f = make_flow("/p", body=PAGE.encode(), resp_headers={"Content-Security-Policy": "script-src 'sha256-AAAA'"})
    editor.response(f)
    assert "<script data-portico" in f.response.raw_content.decode()
    assert f.response.headers["content-security-policy"].startswith("script-src 'sha256-AAAA' 'sha256-")
    again = make_flow("/p", body=PAGE.encode(), resp_headers={"Content-Security-Policy": "script-src 'sha256-AAAA'"})
    editor.response(again)  # from the memo: body and header both
    assert again.response.raw_content == f.response.raw_content
    assert again.response.headers["content-security-policy"] == f.response.headers["content-security-policy"]


def test_link_set_memo_gives_the_same_page_as_a_fresh_rewrite():
    """Pages whose body changes but whose links don't reuse the link set's replacements; links
    that only look external (same host, entities) come back exactly as they were."""
    from collections import OrderedDict

    from addons.outbound import rewrite_links_bytes

    links = (b"<a href='https://a.example/1'>a</a> <a class=x HREF=\"//www.example.org/same\">s</a> "
             b"<a href=&#104;ttps://b.example/2>b</a> <a href='/local'>l</a>")
    pages: OrderedDict = OrderedDict()
    for n in range(3):
        body = b"<p>token %d</p>" % n + links
        fresh = rewrite_links_bytes(body, "utf-8", SECRET, "/_portico/", "www.example.org", "/p")
        memo = rewrite_links_bytes(body, "utf-8", SECRET, "/_portico/", "www.example.org", "/p", (), None, pages)
        assert memo == fresh and fresh[1] == 2 and len(pages) == 1
        assert b'HREF="//www.example.org/same"' in fresh[0] and b"<a href='/local'>" in fresh[0]
        assert fresh[0].startswith(b"<p>token %d</p>" % n)
    other = rewrite_links_bytes(links, "utf-8", SECRET, "/_portico/", "www.example.org", "/q", (), None, pages)
    assert other[1] == 2 and b"f=%2Fq" in other[0] and len(pages) == 2  # the page path is part of the key


def test_parts_with_request_paths_are_called_only_for_their_paths_and_first():
    calls = []

    class Pixel:
        request_paths = frozenset({"/_portico/px.gif"})

        def request(self, flow):
            calls.append("pixel")

    class Closer:
        def request(self, flow):
            calls.append("closer")

    bundle = Bundle("b", [Closer(), Pixel()])
    bundle.request(make_flow("/page?x=1"))
    assert calls == ["closer"]
    bundle.request(make_flow("/_portico/px.gif?c=1"))
    assert calls == ["closer", "pixel", "closer"]


def test_the_memo_keeps_a_pages_last_bodies_and_finds_a_page_that_turns_static(editor, monkeypatch):
    from addons.htmledit import MEMO_BODIES_PER_PAGE, MEMO_ENTRIES

    for n in range(40):   # a new body every time: still edited, only the last bodies kept
        f = make_flow("/token", body=PAGE.replace("<body>", f"<body><!-- {n} -->").encode())
        editor.response(f)
        assert b'href="/_portico/out?u=' in f.response.raw_content and b"data-portico" in f.response.raw_content
    assert [len(bodies) for bodies in editor._memo.values()] == [MEMO_BODIES_PER_PAGE]
    first = make_flow("/token", body=PAGE.encode())
    editor.response(first)   # the page turns static: remembered at once...

    def not_again(*args, **kwargs):
        raise AssertionError("a page served again must come from the memo")

    monkeypatch.setattr(editor, "_edit", not_again)
    monkeypatch.setattr(editor, "_from_template", not_again)
    again = make_flow("/token", body=PAGE.encode())
    editor.response(again)   # ...and served from it the next time
    assert again.response.raw_content == first.response.raw_content
    monkeypatch.undo()
    for n in range(MEMO_ENTRIES + 10):   # many pages: the memo stays bounded
        editor.response(make_flow(f"/p{n}", body=PAGE.encode()))
    assert sum(len(bodies) for bodies in editor._memo.values()) == editor._memo_bodies == MEMO_ENTRIES


def test_the_memo_holds_as_many_static_pages_as_bodies_and_a_nonce_page_takes_one_entry(editor, monkeypatch):
    from addons.htmledit import MEMO_BODIES_PER_PAGE, MEMO_ENTRIES

    pages = [f"/p{n}" for n in range(MEMO_ENTRIES)]
    for path in pages:
        editor.response(make_flow(path, body=PAGE.encode()))
    for n in range(50):   # strict CSP: a new nonce every response, served by the template
        editor.response(make_flow("/csp", body=PAGE.encode(),
                                  resp_headers={"Content-Security-Policy": f"script-src 'nonce-n{n:04d}'"}))
    assert len(editor._memo[next(k for k in editor._memo if "/csp" in k)]) == MEMO_BODIES_PER_PAGE

    def not_again(*args, **kwargs):
        raise AssertionError("a static page served again must come from the memo")

    monkeypatch.setattr(editor, "_edit", not_again)
    monkeypatch.setattr(editor, "_from_template", not_again)
    for path in pages[MEMO_BODIES_PER_PAGE:]:   # the nonce page pushed out only as many bodies as it keeps
        editor.response(make_flow(path, body=PAGE.encode()))
