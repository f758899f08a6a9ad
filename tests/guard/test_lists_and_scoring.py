"""Pure decision tables: list formats, category matching, phrase scoring, homographs, lookalikes,
continue-link signing."""

from __future__ import annotations

import gzip
import os
import time

import brotli
import pytest

from addons.homograph import COMMONLY_TARGETED, ProtectedDomains, decode_host
from addons.lists import CategorySource, ReloadingCategory, domain_match, load_category, parse_domain_line
from addons.textscore import DEFAULT_FORUM_WORDS, PhraseScorer, decode_body, heat, visible_text
from addons.verdicts import ContinueSigner, split_continue, with_continue


@pytest.mark.parametrize(("line", "expected"), [
    ("casino.example", ["casino.example"]),
    ("  Casino.Example.  # comment", ["casino.example"]),
    ("0.0.0.0 ads.example tracker.example", ["ads.example", "tracker.example"]),
    ("127.0.0.1 localhost", []),
    ("||bets.example^", ["bets.example"]),
    ("||bets.example^$third-party", ["bets.example"]),
    ("||cdn.example/path/ads.js", ["cdn.example"]),
    ("! adblock comment", []),
    ("# hosts comment", []),
    ("*.wild.example", ["wild.example"]),
    ("bücher.example", ["xn--bcher-kva.example"]),
    ("not a domain/at all", []),
])
def test_domain_line_formats(line, expected):
    assert parse_domain_line(line) == expected


@pytest.mark.parametrize(("host", "expected"), [
    ("casino.example", "casino.example"),
    ("www.casino.example", "casino.example"),
    ("a.b.casino.example", "casino.example"),
    ("notcasino.example", None),
    ("casino.example.org", None),
    ("example", None),
])
def test_domains_match_themselves_and_subdomains(host, expected):
    assert domain_match({"casino.example"}, host) == expected


def test_category_from_directory_yaml_and_inline_and_reload(tmp_path):
    d = tmp_path / "gambling"
    d.mkdir()
    (d / "domains.hosts").write_text("0.0.0.0 slots.example\n")
    (d / "domains-adblock.txt").write_text("||poker.example^\n")
    (d / "urls.txt").write_text(r"/bet(s|ting)?/" + "\n")
    (d / "phrases.txt").write_text("5 jackpot\n2 free spins\n")
    f = tmp_path / "extra.yaml"
    f.write_text("domains: [dice.example]\nurl_patterns: ['casino=1']\nphrases: {roulette: 3}\n")
    src = CategorySource("gambling", domains=("casino.example",), phrases={"Wager": 1}, file=f, directory=d)
    lists = load_category(src)
    assert lists.domains == {"slots.example", "poker.example", "casino.example", "dice.example"}
    assert lists.match_url("http://x.example/betting/today")
    assert lists.match_url("http://x.example/?casino=1")
    assert not lists.match_url("http://x.example/alphabet/")
    assert lists.phrases == {"jackpot": 5, "free spins": 2, "roulette": 3, "wager": 1}
    cat = ReloadingCategory(src, interval=0)
    (d / "domains.hosts").write_text("0.0.0.0 slots.example roulette.example\n")
    os.utime(d / "domains.hosts", (time.time() + 5, time.time() + 5))
    assert "roulette.example" in cat.current().domains
    (d / "urls.txt").write_text("([unclosed\n")  # a broken reload keeps the previous lists
    os.utime(d / "urls.txt", (time.time() + 10, time.time() + 10))
    assert "roulette.example" in cat.current().domains


PAGE = ("<html><head><title>Win big</title><script>var jackpot='jackpot jackpot';</script>"
        "<style>.jackpot{}</style></head><body><p>Hit the JACKPOT today!</p><p>Free   spins for all, "
        "j4ckp0t guaranteed</p></body></html>")


@pytest.mark.parametrize("encoding", ["identity", "gzip", "br"])
def test_phrases_score_visible_text_of_compressed_html(encoding):
    raw = PAGE.encode()
    body = {"identity": raw, "gzip": gzip.compress(raw), "br": brotli.compress(raw)}[encoding]
    text = visible_text(decode_body(body, encoding, 100_000).decode())
    assert "var jackpot" not in text and "Win big" in text
    score = PhraseScorer({"jackpot": 5, "free spins": 2}).score(text)
    assert score.hits == {"jackpot": 2, "free spins": 1}  # script/style not counted, leetspeak is
    assert score.total == 12


def test_decoding_is_bounded():
    bomb = gzip.compress(b"a" * 50_000_000)
    assert len(decode_body(bomb, "gzip", 1000)) == 1000
    with pytest.raises(ValueError, match="Content-Encoding"):
        decode_body(b"x", "compress", 10)


@pytest.mark.parametrize(("post", "at_least", "below"), [
    ("Thanks, that fixed my build. Class assignment done.", None, 1),
    ("you are an 1d10t", 5, None),
    ("f.u.c.k this thread", 3, None),
    ("sh!t, fuuuuck", 5, None),
    ("YOU ARE AN IDIOT, A TOTAL IDIOT!!!", 12, None),
    ("I LOVE THIS NEW RELEASE SO MUCH", 2, 3),  # shouting alone is only a small signal
])
def test_forum_scoring_with_obfuscation_and_escalation(post, at_least, below):
    score = heat(post, PhraseScorer(DEFAULT_FORUM_WORDS).score(post))
    if at_least is not None:
        assert score.total >= at_least, score
    if below is not None:
        assert score.total < below, score


PROTECTED = ProtectedDomains(COMMONLY_TARGETED, own=("example.org",))


@pytest.mark.parametrize(("host", "kind", "target"), [
    ("xn--pple-43d.com", "homograph", "apple.com"),
    ("xn--80ak6aa92e.com", "homograph", "apple.com"),
    ("examp1e.org", "lookalike", "example.org"),
    ("exmaple.org", "lookalike", "example.org"),
    ("example.net", "lookalike", "example.org"),
    ("rnicrosoft.com", "lookalike", "microsoft.com"),
    ("paypal-login.com", "lookalike", "paypal.com"),
    ("paypal.com.account-check.example", "lookalike", "paypal.com"),
    ("login.gooogle.com", "lookalike", "google.com"),
])
def test_homograph_and_lookalike_table(host, kind, target):
    finding = PROTECTED.check(host)
    assert finding is not None and (finding.kind, finding.target) == (kind, target), finding


@pytest.mark.parametrize("host", ["apple.com", "www.example.org", "example.org", "amazon.co.uk", "ebay.de",
                                  "wikipedia.org", "bing.com", "127.0.0.1", "docs.python.org", "xn--bcher-kva.example"])
def test_legitimate_hosts_are_not_flagged(host):
    assert PROTECTED.check(host) is None


def test_punycode_is_decoded():
    assert decode_host("xn--pple-43d.com") == "\u0430pple.com"


def test_continue_link_is_bound_to_url_user_and_time():
    signer = ContinueSigner(b"k" * 32, ttl=60)
    url = "http://site.example/page?a=1"
    link = with_continue(url, signer.token(url, "alice", now=1000))
    stripped, token = split_continue(link)
    assert stripped == url and token
    assert signer.valid(token, url, "alice", now=1010)
    assert not signer.valid(token, url, "bob", now=1010)
    assert not signer.valid(token, "http://site.example/other", "alice", now=1010)
    assert not signer.valid(token, url, "alice", now=2000)
    assert not ContinueSigner(b"x" * 32, 60).valid(token, url, "alice", now=1010)
    assert not signer.valid("garbage", url, "alice")
