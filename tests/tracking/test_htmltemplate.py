"""Page templates (addons/htmltemplate.py): a page that differs from the last one only in
digits gets exactly the bytes the editors would have produced, without running them; any
other change runs the editors. The reference everywhere is a fresh HtmlEdit, which has no
template and edits the page from scratch."""

from __future__ import annotations

import gzip
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addons.htmledit import MEMO_GIVE_UP, MEMO_RETRY, HtmlEdit
from addons.htmlpage import HtmlPage
from addons.htmltemplate import PageTemplate, check_edits, merge_edits
from addons.outbound import Outbound, OutboundSettings, check_redirect
from addons.recorder import Recorder
from addons.snippet import Snippet, SnippetSettings
from addons.visitor import Salts, Visitors
from tests.tracking.conftest import make_flow

SECRET = b"0123456789abcdef0123456789abcdef"
PAGE = ("<html><head><title>Counter</title></head><body><!-- 0001 --><p>Seen 17 times</p>"
        "<a href='https://partner1.example.net/page/1'>p1</a> <a href=/local/2>l2</a>"
        "<a href=\"//partner2.example.net/x?id=7\">p2</a><a href='https://www.example.org/same/3'>s3</a>"
        "<p>Generated at 12:00:01</p></body></html>")


class Counting:
    """Wraps an editor and counts its calls (a template hit runs no editor)."""

    def __init__(self, editor) -> None:
        self.editor, self.calls, self.redos, self.routes = editor, 0, 0, editor.routes
        self.reads_csp = getattr(editor, "reads_csp", False)

    def edit_html(self, page: HtmlPage) -> bytes | None:
        self.calls += 1
        return self.editor.edit_html(page)

    def redo_edit(self, page: HtmlPage, span: bytes) -> bytes | None:
        self.redos += 1
        redo = getattr(self.editor, "redo_edit", None)
        return None if redo is None else redo(page, span)


def editors(tmp_path, inject: bool = True) -> list:
    visitors = Visitors(Salts(tmp_path))
    return [Outbound(OutboundSettings(secret=SECRET), Recorder(None), visitors),
            Snippet(SnippetSettings(secret=SECRET, inject=inject), Recorder(None), visitors)]


@pytest.fixture
def counted(tmp_path):
    parts = [Counting(e) for e in editors(tmp_path)]
    return HtmlEdit(parts), parts


def served(edit: HtmlEdit, body: str | bytes, path: str = "/p", **kw):
    f = make_flow(path, body=body if isinstance(body, bytes) else body.encode(), **kw)
    edit.response(f)
    return f.response


def fresh(tmp_path, body: str | bytes, path: str = "/p", **kw):
    return served(HtmlEdit(editors(tmp_path)), body, path, **kw)


def test_a_page_that_changed_only_in_digits_is_served_from_the_template(counted, tmp_path):
    edit, parts = counted
    served(edit, PAGE)
    assert [p.calls for p in parts] == [1, 1]
    for n, (seen, clock) in enumerate([("18", "12:00:02"), ("99", "23:59:59"), ("10", "00:00:00")], start=2):
        body = (PAGE.replace("0001", f"{n:04d}").replace("17", seen).replace("12:00:01", clock)
                .replace("/local/2", f"/local/{n}"))  # a local link is text to the editors
        out = served(edit, body)
        assert [p.calls for p in parts] == [1, 1]  # no editor ran
        want = fresh(tmp_path, body)
        assert out.raw_content == want.raw_content and out.headers["content-length"] == str(len(want.raw_content))
        assert f"Seen {seen} times".encode() in out.raw_content and clock.encode() in out.raw_content


@pytest.mark.parametrize("change", [
    ("partner1.example.net/page/1", "partner1.example.net/page/2"),   # a digit inside a rewritten link
    ("partner1.example.net", "partner7.example.net"),                 # ... in its host
    ("id=7", "id=8"),                                                 # ... inside a link's query
    ("id=7", "id=Q"),                                                 # a token there
    ("same/3", "same/4"),                 # inside a link left as it was (same host: not external)
    ("'https://partner1", "'http7://partner1"),                       # not http(s) any more: left as it is
])
def test_a_change_inside_a_link_is_redone_by_its_editor_alone(counted, tmp_path, change):
    """The changed link's value is asked of Outbound on its own; the rest of the page comes
    from the template."""
    edit, parts = counted
    served(edit, PAGE)
    body = PAGE.replace(*change)
    out = served(edit, body)
    assert [p.calls for p in parts] == [1, 1] and parts[0].redos == 1 and parts[1].redos == 0
    assert out.raw_content == fresh(tmp_path, body).raw_content


@pytest.mark.parametrize("change", [
    ("'https://partner1", "'7ttps://partner1"),  # inside a link, but no link value any more: Outbound can't tell
    ("page/1'", "page/10'"),                                          # another length inside a link
    ("<p>Seen", "<pre>Seen"),                                         # ... a tag name
    ("</head>", "</header>"),                                         # ... an end tag
    ("</head>", "</heax>"),               # letters an editor reads: the snippet goes before </body> now
    ("<p>Seen", "<a>Seen"),                                           # a tag name
    ("<a href=/local/2>", "<a hreX=/local/2>"),                       # inside an <a> tag
    ("Seen 17", "Seen+17"),                                           # not a word character
])
def test_any_other_change_runs_the_editors_and_gets_their_result(counted, tmp_path, change):
    edit, parts = counted
    served(edit, PAGE)
    body = PAGE.replace(*change)
    out = served(edit, body)
    assert [p.calls for p in parts] == [2, 2]
    assert out.raw_content == fresh(tmp_path, body).raw_content


def test_a_token_in_a_path_is_served_from_the_template(counted, tmp_path):
    """After a lone `/` a token is a path segment, not a tag name: an image's path outside any
    link, and an external link's path (redone: the link is signed for its new target)."""
    edit, parts = counted
    page = PAGE.replace("<body>", "<body><img src=/s/AbCd/i.png>").replace("page/1", "reset/AbCd")
    served(edit, page)
    for token in ("ZzYy", "q1_2"):
        page = page.replace("AbCd" if "AbCd" in page else "ZzYy", token)
        out = served(edit, page)
        assert [p.calls for p in parts] == [1, 1] and out.raw_content == fresh(tmp_path, page).raw_content
    links = [m.replace("&amp;", "&") for m in re.findall(r'href="/_portico/out\?([^"]+)"', out.raw_content.decode())]
    assert check_redirect(SECRET, links[0]) == ("https://partner1.example.net/reset/q1_2", "/p")


@pytest.mark.parametrize("token", ["q9ZfA_x", "Countes", "AAAAAAA"])
def test_a_token_of_letters_outside_tags_the_editors_read_is_served_from_the_template(counted, tmp_path, token):
    edit, parts = counted
    page = PAGE.replace("<body>", '<body><input type=hidden name=csrf value="abcdefg"><!-- hijklmn -->')
    served(edit, page)
    for word in ("abcdefg", "hijklmn", "Counter"):  # each page differs from the one before in one token
        page = page.replace(word, token)
        out = served(edit, page)
        assert [p.calls for p in parts] == [1, 1]
        assert out.raw_content == fresh(tmp_path, page).raw_content


@pytest.mark.parametrize("change", [
    ("Seen 17", "Seen 170"), ("Seen 17", "Seen 9"), ("12:00:01", "9:00:01"),  # numbers that grew or shrank
    ("Seen 17 times", "Seen many times"), ("Counter", "Count"),                # a word of another length
    ("csrf value=abc", "csrf value=abcdef0123"),                            # a token of another length
])
def test_a_change_of_length_between_edits_is_served_from_the_template(counted, tmp_path, change):
    """The edits after the change move with it (the links' and the snippet's)."""
    edit, parts = counted
    page = PAGE.replace("<body>", "<body><input name=csrf value=abc>")
    served(edit, page)
    body = page.replace(*change)
    out = served(edit, body)
    assert [p.calls for p in parts] == [1, 1]
    assert out.raw_content == fresh(tmp_path, body).raw_content
    again = body.replace("0001", "0002")  # the next one is compared with the moved template
    assert served(edit, again).raw_content == fresh(tmp_path, again).raw_content
    assert [p.calls for p in parts] == [1, 1]


def test_a_token_in_several_places_is_served_from_the_template(counted, tmp_path):
    """A CSRF token in a meta tag, a form and a link's query changes everywhere at once: each
    change is checked on its own (its letters may match the old token's in places)."""
    edit, parts = counted
    old = "AbCdEf12"
    page = PAGE.replace("<title>", f'<meta name=csrf content="{old}"><title>').replace(
        "<body>", f'<body><input name=csrf value="{old}">').replace("x?id=7", f"x?id=7&amp;t={old}")
    served(edit, page)
    for token in ("AbCdEf13", "ZZCdQQ12", "q_9xY0Lm"):
        page = page.replace(old, token)
        old = token
        out = served(edit, page)
        assert [p.calls for p in parts] == [1, 1]
        assert out.raw_content == fresh(tmp_path, page).raw_content
    assert parts[0].redos == 3
    many = page.replace("Seen 17", "Seen 18").replace(old, "k" * 8)  # with a change the editors read:
    many = many.replace("</head>", "</heax>")
    assert served(edit, many).raw_content == fresh(tmp_path, many).raw_content
    assert [p.calls for p in parts] == [2, 2]
    spread = "".join(f"<p>{c}</p>" for c in "abcdefghij")  # more changed places than MAX_SEGMENTS
    served(edit, spread.join(PAGE.split("<p>Generated")), "/q")
    again = spread.upper().replace("<P>", "<p>").replace("</P>", "</p>").join(PAGE.split("<p>Generated"))
    assert served(edit, again, "/q").raw_content == fresh(tmp_path, again, "/q").raw_content
    assert [p.calls for p in parts] == [4, 4]


def test_the_snippet_marker_is_a_word_the_template_does_not_touch(counted, tmp_path):
    edit, parts = counted
    page = PAGE.replace("<title>", "<title data-portico>")  # "already injected": no snippet
    served(edit, page)
    body = page.replace("data-portico", "dxta-portico")
    out = served(edit, body)
    assert [p.calls for p in parts] == [2, 2] and b"data-portico" in out.raw_content  # injected this time
    assert out.raw_content == fresh(tmp_path, body).raw_content


@pytest.mark.parametrize("before, after", [("page/1", "page/9"), ("page/1", "page/1?t=abcdef"),
                                           ("page/1?t=abcdef", "page/1?t=Zq_9x0")])
def test_a_changed_link_is_signed_for_its_new_target(counted, before, after):
    """The case that matters most: a stale signature would send the click to the old page
    (a per-request token inside a link, too)."""
    edit, parts = counted
    page = PAGE.replace("page/1", before)
    served(edit, page)
    out = served(edit, page.replace(before, after)).raw_content.decode()
    links = [m.replace("&amp;", "&") for m in re.findall(r'href="/_portico/out\?([^"]+)"', out)]
    assert check_redirect(SECRET, links[0]) == (f"https://partner1.example.net/{after}", "/p")
    assert parts[0].calls == (2 if len(before) != len(after) else 1)


def test_templates_are_per_page(counted, tmp_path):
    edit, parts = counted
    served(edit, PAGE, "/a")
    out = served(edit, PAGE.replace("0001", "0002"), "/b")  # another page: its own links' signatures
    assert [p.calls for p in parts] == [2, 2] and out.raw_content == fresh(tmp_path, PAGE.replace("0001", "0002"),
                                                                            "/b").raw_content


@pytest.mark.parametrize("policies", [
    # a nonce per request
    ["script-src 'nonce-R4nd0mA'", "script-src 'nonce-Zz9_other'", "script-src 'nonce-third+/='"],
    ["script-src 'sha256-AAAA'", "script-src 'sha256-AAAA'; img-src *", "script-src 'sha256-BBBB'"],  # hashes added
    ["script-src 'nonce-R4nd0mA'", "script-src 'sha256-AAAA'", "default-src 'self'"],  # the plan changes
])
def test_a_changed_policy_redoes_only_the_snippet(counted, tmp_path, policies):
    """A Content-Security-Policy with a new nonce on every response (strict CSP) used to miss
    the template every time: the snippet's tag is now redone for the new policy, and the
    header it sets (a hash added) is the one a fresh edit sets."""
    edit, parts = counted
    for n, policy in enumerate(["", *policies]):
        body = PAGE.replace("0001", f"{n:04d}")
        headers = {"Content-Security-Policy": policy} if policy else None
        out = served(edit, body, resp_headers=headers)
        want = fresh(tmp_path, body, resp_headers=headers)
        assert out.raw_content == want.raw_content
        assert out.headers.get_all("content-security-policy") == want.headers.get_all("content-security-policy")
    assert [p.calls for p in parts] == [1, 1] and parts[1].redos == len(policies)


def test_a_policy_under_which_the_snippet_stays_out_runs_the_editors(counted, tmp_path):
    edit, parts = counted
    served(edit, PAGE)
    for policy, calls in [("connect-src 'none'", 2), ("script-src 'nonce-abc'", 3)]:
        out = served(edit, PAGE, resp_headers={"Content-Security-Policy": policy})
        assert out.raw_content == fresh(tmp_path, PAGE, resp_headers={"Content-Security-Policy": policy}).raw_content
        assert [p.calls for p in parts] == [calls, calls]  # the second: the snippet had no edit to redo


@pytest.mark.parametrize("kind", ["gzip", "no declared charset", "utf-16"])
def test_no_template_where_digits_are_not_bytes_of_their_own(counted, tmp_path, kind):
    edit, parts = counted
    for n in range(3):
        body = PAGE.replace("0001", f"{n:04d}")
        if kind == "gzip":
            f = make_flow("/p", body=gzip.compress(body.encode()))
            f.response.headers["content-encoding"] = "gzip"
            edit.response(f)
            out = gzip.decompress(f.response.raw_content)
        elif kind == "utf-16":
            out = served(edit, body.encode("utf-16"), content_type="text/html; charset=utf-16").raw_content
            out = out.decode("utf-16").encode()
        else:
            out = served(edit, body, content_type="text/html").raw_content
        assert out == fresh(tmp_path, body).raw_content
    assert [p.calls for p in parts] == [3, 3] and not edit._templates


def test_an_editor_that_does_not_report_its_edits_gets_no_template(tmp_path):
    class Shouting:
        routes = frozenset({"*"})
        calls = 0

        def edit_html(self, page):
            Shouting.calls += 1
            return page.body.replace(b"<title>", b"<title>!")

    edit = HtmlEdit([*editors(tmp_path), Shouting()])
    for n in range(3):
        out = served(edit, PAGE.replace("0001", f"{n:04d}"))
        assert out.raw_content.count(b"<title>!") == 1
    assert Shouting.calls == 3 and not edit._templates


def test_a_page_whose_template_keeps_failing_is_given_up_and_retried(counted, tmp_path):
    edit, parts = counted
    for n in range(MEMO_GIVE_UP + MEMO_RETRY + 2):  # never a template hit
        body = PAGE.replace("Counter", "Counter " + "+/"[n % 2] * 4 + f"{n:02d}")  # base64's + and /
        assert served(edit, body).raw_content == fresh(tmp_path, body).raw_content
    template = next(iter(edit._templates.values()))
    assert template.misses >= MEMO_GIVE_UP
    tries = template.misses
    for k in range(MEMO_RETRY + 2):  # the page turns into one that changes in digits only (never repeating)
        body = PAGE.replace("0001", f"{k + 2:04d}")
        assert served(edit, body).raw_content == fresh(tmp_path, body).raw_content
    assert template is not edit._templates[next(iter(edit._templates))] or template.misses < tries
    assert next(iter(edit._templates.values())).misses == 0  # found again at a retry, then hits


# --- the template's own arithmetic --------------------------------------------------------

def test_apply_copies_the_changed_span_next_to_edits_but_never_into_them():
    body = b"ab12cd34ef"
    # "cd" replaced by "XYZ", an insertion of "!" before "ef"
    result = b"ab12XYZ34!ef"
    edits = [(4, 6, 3), (8, 8, 1)]
    assert check_edits(body, result, edits)
    t = PageTemplate.build(body, result, None, edits)
    assert t.apply(b"ab99cd34ef") == b"ab99XYZ34!ef"
    assert t.apply(b"ab99cd35ef") == b"ab99XYZ35!ef"   # the span ends where the insertion is: fine
    assert t.apply(b"ab99cd35e#") is None                  # not a word character
    assert t.apply(b"ab99cd35eg") == b"ab99XYZ35!eg"      # a token's letter
    assert t.apply(b"ab99cd35e") == b"ab99XYZ35!e"        # a shorter token, after the insertion
    t2 = PageTemplate.build(body, result, None, edits)
    assert t2.apply(b"ab12cd35ef") == b"ab12XYZ35!ef"
    assert t2.apply(b"ab13cd36ef") == b"ab13XYZ36!ef"      # changes on both sides of an edit
    t3 = PageTemplate.build(b"x1y2z", b"xABy2z", None, [(1, 2, 2)])  # the edit replaced a digit
    assert t3.apply(b"x3y2z") is None                      # ... which changed: the editors must run
    assert t3.apply(b"x1y5z") == b"xABy5z"
    assert t3.apply(b"x3y7z") is None
    assert t3.apply(b"x11y5z") is None                     # ... grew: the editors must run
    assert t3.apply(b"x1y55z") == b"xABy55z"               # a number after it grew: the edit stays
    assert t3.apply(b"x1y5z") == b"xABy5z" and t3.starts == (1,) and t3.ends == (2,)
    t4 = PageTemplate.build(b"a1b2c", b"a1bX2c", None, [(3, 3, 1)])  # an insertion before the 2
    assert t4.apply(b"a123b2c") == b"a123bX2c" and t4.starts == t4.ends == (5,)  # it moved
    assert t4.apply(b"a123b2c7") == b"a123bX2c7"            # a letter added at the end


def test_check_edits_refuses_a_report_that_does_not_match():
    assert not check_edits(b"abcdef", b"abXdef", [(2, 3, 2)])
    assert not check_edits(b"abcdef", b"abXdeg", [(2, 3, 1)])
    assert not check_edits(b"abcdef", b"abXdef", [(3, 4, 1), (2, 3, 1)])  # out of order
    assert check_edits(b"abcdef", b"abXdef", [(2, 3, 1)])


def test_merge_refuses_an_edit_inside_an_earlier_edits_output():
    done = [(2, 3, 3, 0)]           # "abcdef" -> "abXYZdef" by editor 0; editor 1 next
    assert merge_edits(done, b"abXYZdef", b"abXY!Zdef", [(4, 4, 1)], 1) is None
    assert merge_edits(done, b"abXYZdef", b"ab!XYZdef", [(2, 2, 1)], 1) == [(2, 2, 1, 1), (2, 3, 3, 0)]
    assert merge_edits(done, b"abXYZdef", b"abXYZd!ef", [(6, 6, 1)], 1) == [(2, 3, 3, 0), (4, 4, 1, 1)]
    assert merge_edits(done, b"abXYZdef", b"abXYZ!def", [(5, 5, 1)], 1) == [(2, 3, 3, 0), (3, 3, 1, 1)]  # right after
    assert merge_edits(done, b"abXYZdef", b"abXYZ!ef", [(5, 6, 1)], 1) == [(2, 3, 3, 0), (3, 4, 1, 1)]
    assert merge_edits(done, b"abXYZdef", b"abXYZdef", [(4, 4, 1)], 1) is None  # a wrong report


def test_apply_redoes_a_changed_edit_with_its_editor_and_keeps_the_lengths_right():
    """An edit whose bytes changed is asked of its editor alone (`redo`); a new length moves
    the edits after it, for this page and the next."""
    body = b"<a href='//x?t=AB'>k 1 <a href='//x?t=CD'>n 5."
    quoted = [(body.index(v), body.index(v) + 10) for v in (b"'//x?t=AB'", b"'//x?t=CD'")]

    def redo(owner: int, span: bytes) -> bytes | None:
        asked.append((owner, span))
        return None if b"Q" in span else b"<" + span[1:-1].lower() * (2 if b"L" in span else 1) + b">"

    result = body
    for start, end in reversed(quoted):
        result = result[:start] + b"<" + body[start + 1:end - 1].lower() + b">" + result[end:]
    t = PageTemplate.build(body, result, None, [(*quoted[0], 10, 3), (*quoted[1], 10, 3)])
    asked: list[tuple[int, bytes]] = []
    assert t.apply(body.replace(b"AB", b"XY"), redo) == result.replace(b"ab", b"xy")
    assert asked == [(3, b"'//x?t=XY'")]
    assert t.apply(body.replace(b"AB", b"XY").replace(b"CD", b"LM"), redo) == result.replace(b"ab", b"xy").replace(
        b"<//x?t=cd>", b"<//x?t=lm//x?t=lm>")   # a longer replacement
    assert t.apply(body.replace(b"AB", b"XY").replace(b"CD", b"LM").replace(b"n 5", b"n 6"), redo) == result.replace(
        b"ab", b"xy").replace(b"<//x?t=cd>", b"<//x?t=lm//x?t=lm>").replace(b"n 5", b"n 6")  # after the longer one
    assert t.apply(body.replace(b"AB", b"XY").replace(b"CD", b"LM").replace(b"k 1", b"k 2"), redo) == result.replace(
        b"ab", b"xy").replace(b"<//x?t=cd>", b"<//x?t=lm//x?t=lm>").replace(b"k 1", b"k 2")
    assert t.apply(body.replace(b"AB", b"QQ").replace(b"CD", b"LM"), redo) is None  # the editor can't tell
    no_owner = PageTemplate.build(body, result, None, [(*quoted[0], 10), (*quoted[1], 10)])
    assert no_owner.apply(body.replace(b"AB", b"XY"), redo) is None
    assert PageTemplate.build(body, result, None, [(*quoted[0], 10, 3), (*quoted[1], 10, 3)]).apply(
        body.replace(b"AB", b"XY")) is None  # no redo given


def test_inside_an_a_tag_only_a_change_within_one_edit_is_redone():
    body = b"<a title=TT href='//x?t=AB'>k</a>"
    start = body.index(b"'//x")
    t = PageTemplate.build(body, body.replace(b"'//x?t=AB'", b'"S"'), None, [(start, start + 10, 3, 0)])
    assert t.apply(body.replace(b"TT", b"UU"), lambda owner, span: b'"S"') is None  # the tag, outside the edit
    assert t.apply(body.replace(b"AB", b"CD"), lambda owner, span: b'"S2"') == body.replace(b"'//x?t=AB'", b'"S2"')


# --- property: a template hit is always what the editors would produce ---------------------

FRAGMENTS = st.sampled_from([
    "<a href='https://ext{d}.example/p/{d}'>x</a>", "<a href=\"//cdn{d}.example/{d}\">y</a>",
    "<a href=/local/{d}>l</a>", "<a class=c{d} href=https://e.example/{d}>z</a>", "<p>{d} items</p>",
    "<!-- {d} -->", "<span data-n=\"{d}\">{d}</span>", "<a href=&#104;ttps://ent.example/{d}>e</a>",
    "text {d}{d} ", "<img src=/i/{d}.png>", "<a hre{d}f='https://odd.example/'>o</a>",
    "<a href='https://www.example.org/{d}'>same host</a>", "<input name=csrf value={d}>",
    # where a token could make or unmake what an editor looks for
    "<{d} href=//tag.example/>", "<a {d}=//attr.example/>", "<a title={d} href=//t.example/>", "</hea{d}>",
    "<i data-portic{d}>", "<i {d}-portico>", "<a href={d}//v.example/>", "<a href='{d}://s.example/'>",
])
# three characters: digits; word characters (with the letters the editors look for); and
# also characters that are not word characters
VALUES = st.one_of(st.text("0123456789", min_size=3, max_size=3),
                   st.text("0123456789adefhrAHRbtopciy_", min_size=3, max_size=3),
                   st.text("0123456789adefhrAHRbtopciy_-</>\"' =:&", min_size=3, max_size=3),
                   st.text("0123456789", min_size=1, max_size=5),                     # other lengths
                   st.text("0123456789adefhrAHRbtopciy_", min_size=0, max_size=5))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.tuples(FRAGMENTS, VALUES), min_size=1, max_size=12),
       steps=st.lists(st.lists(st.tuples(st.integers(0, 11), VALUES), min_size=1, max_size=3),
                      min_size=1, max_size=4),
       head=st.booleans())
def test_template_results_equal_a_fresh_edit(tmp_path, parts, steps, head):
    """Each step changes one to three tokens of the page at once (a request later)."""
    def page(values):
        body = "".join(f.format(d=v) for (f, _), v in zip(parts, values))
        return ("<html><head><title>t</title></head><body>" if head else "<html><body>") + body + "</body></html>"

    values = [v for _, v in parts]
    edit = HtmlEdit(editors(tmp_path))
    served(edit, page(values))
    for changes in steps:
        for index, value in changes:
            values[index % len(values)] = value
        body = page(values)
        assert served(edit, body).raw_content == fresh(tmp_path, body).raw_content
        for template in edit._templates.values():
            assert check_edits(template.body, template.result, list(zip(template.starts, template.ends, [
                (b - a) + (s2 - s1) for a, b, s1, s2 in zip(template.starts, template.ends, template.shifts,
                                                            template.shifts[1:])])))



# (fragment, token length): tokens that make or unmake what an editor looks for, in place
TOKEN_SLOTS = [
    ("<{d} href=//tag.example/>", 1), ("<a {d}=//attr.example/>", 4), ("<a title={d} href=//t.example/>", 4),
    ("</{d}>", 4), ("<i {d}-portico>", 4), ("<i data-{d}>", 7), ("<p>{d}</p>", 4), ("<!-- {d} -->", 4),
    ("<input name=csrf value={d}>", 4), ("<a href='https://x{d}.example/'>x</a>", 4), ("<a href=/l/{d}>l</a>", 4),
    # inside link values (the edits Outbound can redo): query, scheme, bare, entity, same host, host
    ("<a href='https://x.example/p?t={d}'>x</a>", 4), ("<a href=\"{d}s://y.example/\">y</a>", 4),
    ("<a href=https://b.example/?q={d}>b</a>", 4), ("<a href='&#104;ttps://e.example/?k={d}'>e</a>", 4),
    ("<a href='https://www.example.org/?s={d}'>same</a>", 4), ("<a href='https://{d}.example.org/'>h</a>", 3),
    ("<a class=k href='//c.example/?v={d}' title=z>c</a>", 4),
    # after a lone `/` (a URL's path) and after `</`
    ("<img src=/i/{d}.png>", 4), ("<a href='https://r.example/reset/{d}'>r</a>", 4), ("<p>a/{d}</p>", 4),
    ("<x/{d}>", 4), ("</{d} >", 4),
]
SPECIAL = {1: ["a", "A", "b", "1", "_"], 3: ["www", "WWW", "abc", "7ab"],
           4: ["head", "heax", "HEAD", "body", "bod1", "data", "dxta", "href", "hrex", "HREF", "a__1", "http", "HTTP",
               "7ttp"], 7: ["portico", "portic0"]}


def slot_token(length: int) -> st.SearchStrategy[str]:
    """A token of the slot's length, or of another one (templates move the edits after it)."""
    return st.one_of(st.sampled_from(SPECIAL[length]), st.text("0123456789adefhrAHRbtopciy_", min_size=length,
                                                                 max_size=length),
                     st.text("0123456789adefhrAHRbtopciy_", min_size=1, max_size=length + 3),
                     st.text("0123456789", min_size=1, max_size=length + 3))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), slots=st.lists(st.sampled_from(TOKEN_SLOTS), min_size=1, max_size=6), head=st.booleans())
def test_one_token_at_a_time_equals_a_fresh_edit(tmp_path, data, slots, head):
    """One word token changes a request, in every context: where the template may serve the
    page and where it must not (after `<` or `/`, next to `-`, inside an `<a` tag)."""
    values = [data.draw(slot_token(n)) for _, n in slots]
    edit = HtmlEdit(editors(tmp_path))

    def page() -> str:
        return (("<html><head><title>t</title></head><body>" if head else "<html><body>")
                + "".join(f.format(d=v) for (f, _), v in zip(slots, values)) + "</body></html>")

    served(edit, page())
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(slots) - 1))
        values[i] = data.draw(slot_token(slots[i][1]))
        body = page()
        policy = data.draw(POLICIES)  # and a Content-Security-Policy that may change as well
        headers = {"Content-Security-Policy": policy.format(n=data.draw(st.integers(0, 99)))} if policy else None
        out, want = served(edit, body, resp_headers=headers), fresh(tmp_path, body, resp_headers=headers)
        assert out.raw_content == want.raw_content
        assert out.headers.get_all("content-security-policy") == want.headers.get_all("content-security-policy")


POLICIES = st.sampled_from(["", "script-src 'nonce-n{n}'", "script-src 'sha256-AAAA'", "default-src 'self'",
                            "connect-src 'none'", "script-src 'nonce-n{n}'; connect-src 'self'"])
