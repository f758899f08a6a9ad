"""Moderation, forum moderation and phishing through a real gateway to real upstreams."""

from __future__ import annotations

import gzip
import html
import json
import re
from urllib.parse import urlsplit

import brotli
import pytest

from tests.guard.conftest import dns_yaml
from tests.integration.harness import (EchoUpstream, GatewayThread, LoopbackServer, QuietHandler, proxy_request,
                                      request)

PAGES = {
    "/clean": ("text/html", "<html><body><p>Opening hours and directions.</p></body></html>"),
    "/gamble": ("text/html", "<html><body><h1>JACKPOT</h1><p>Free spins! j4ckp0t every hour, jackpot!</p></body></html>"),
    "/mild": ("text/html", "<html><body><p>One jackpot a year at the fair.</p></body></html>"),
    "/links-homograph": ("text/html", '<a href="https://xn--pple-43d.com/login">Sign in</a> <a href="/local">x</a>'),
    "/links-lookalike": ("text/html", '<a href="http://examp1e.org/account">Your account</a>'),
    "/links-ok": ("text/html", '<a href="https://www.example.org/">Home</a>'),
    "/data.json": ("application/json", json.dumps({"msg": "jackpot jackpot jackpot"})),
}


class PageUpstream(LoopbackServer):
    """Serves PAGES with the encoding asked in ?enc=gzip|br and Cache-Control: max-age=300."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        outer = self

        class H(QuietHandler):
            def do_GET(self):  # noqa: N802
                parts = urlsplit(self.path)
                outer.hits[parts.path] = outer.hits.get(parts.path, 0) + 1
                ctype, text = PAGES.get(parts.path, ("text/plain", "ok"))
                body = text.encode()
                headers = {"Content-Type": f"{ctype}; charset=utf-8", "Cache-Control": "max-age=300"}
                if "enc=gzip" in parts.query:
                    body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
                elif "enc=br" in parts.query:
                    body, headers["Content-Encoding"] = brotli.compress(body), "br"
                self.reply(200, headers, body)

        super().__init__(H)


@pytest.fixture(scope="module")
def pages():
    up = PageUpstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def forum():
    up = EchoUpstream("forum")
    yield up
    up.close()


def config(pages_url: str, forum_url: str, tmp, extra: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
grpc: {{listen: 127.0.0.1:0}}
telemetry: {{enabled: false}}
trusted_proxies: [127.0.0.1/32]
cache: {{enabled: true, path: '{tmp}/cache'}}
routes:
  - match: {{host: "*", path_prefix: /}}
    upstream: {pages_url}
    moderate: true
    check_links: true
  - match: {{host: "*", path_prefix: /forum/}}
    upstream: {forum_url}
  - match: {{host: "*", path_prefix: /logged/}}
    upstream: {pages_url}
    strip_prefix: true
    moderate: true
moderation:
  categories:
    - name: gambling
      action: block
      threshold: 10
      phrases: {{jackpot: 5, "free spins": 2}}
      domains: ["||casino.example^"]
      url_patterns: ["/betting/"]
    - name: gambling-mild
      action: warn
      threshold: 5
      phrases: {{jackpot: 5}}
  forum:
    - {{name: alerts, paths: [/forum/alert], action: alert, threshold: 5, fields: [body]}}
    - {{name: holds, paths: [/forum/hold], action: hold, threshold: 5}}
    - {{name: rejects, paths: [/forum/reject], action: reject, threshold: 5}}
phishing:
  protected_domains: [example.org]
  lookalike_action: warn
{extra}
"""


@pytest.fixture(scope="module")
def gw(pages, forum, tmp_path_factory):
    g = GatewayThread(config(pages.url, forum.url, tmp_path_factory.mktemp("gw")))
    yield g
    g.stop()


@pytest.fixture
def events(gw, sink):
    for name in ("moderation", "forummoderation", "phishing"):
        gw.gateway.master.addons.get(name).store = sink
    yield sink
    for name in ("moderation", "forummoderation", "phishing"):
        gw.gateway.master.addons.get(name).store = None


def get(gw, path, client="10.0.0.1", **kw):
    headers = {"X-Forwarded-For": client, **kw.pop("headers", {})}
    return request(gw.url, path, headers=headers, **kw)


@pytest.mark.parametrize("enc", ["identity", "gzip", "br"])
def test_text_over_threshold_is_blocked_in_any_encoding(gw, events, enc):
    status, headers, body = get(gw, f"/gamble?enc={enc}")
    assert status == 403
    text = body.decode()
    assert "Blocked by content policy" in text and "gambling" in text and headers["x-request-id"] in text
    (event,) = events.of("moderation.blocked")
    assert event["category"] == "gambling" and event["score"] >= 10


def test_clean_page_passes_and_json_is_scored_too(gw, events):
    assert get(gw, "/clean")[0] == 200
    assert get(gw, "/data.json")[0] == 403  # 15 points of jackpot in JSON
    assert not events.of("moderation.warned")


def test_domain_and_url_categories_on_requests(gw, events):
    status, _, body = get(gw, "/betting/today")
    assert status == 403 and b"/betting/" in body


def test_warn_page_continue_link_is_bound_to_url_and_user(gw, events):
    status, _, body = get(gw, "/mild?x=1")
    assert status == 403
    text = body.decode()
    assert "Warning" in text and "gambling-mild" in text
    link = html.unescape(re.search(r'href="([^"]+)"', text).group(1))
    assert link.startswith("http://") and "/mild?x=1&portico_continue=" in link
    path = link.split("/", 3)[3]
    path = "/" + path
    status, _, body = get(gw, path)  # same user (client 10.0.0.1), same URL
    assert status == 200 and b"One jackpot a year" in body
    assert get(gw, path, client="10.0.0.2")[0] == 403  # another user
    other = path.replace("/mild?x=1", "/mild?x=2")
    assert get(gw, other)[0] == 403  # another URL
    assert [e["continued"] for e in events.of("moderation.warned")] == [False, True, False, False]


def test_flagged_responses_are_not_cached(gw, pages):
    before = dict(pages.hits)
    for _ in range(2):
        assert get(gw, "/logged/clean?c=1")[0] == 200
        assert get(gw, "/logged/mild?c=1")[0] == 403
    new = {k: v - before.get(k, 0) for k, v in pages.hits.items()}
    assert new["/clean"] == 1  # the control: a clean cacheable page is served from the cache
    assert new["/mild"] == 2  # the flagged one goes upstream every time


def post(gw, path, body: bytes, ctype: str, client="10.0.0.1"):
    return request(gw.url, path, method="POST", body=body,
                   headers={"Content-Type": ctype, "X-Forwarded-For": client})


def test_forum_clean_post_goes_through_without_alert(gw, forum, events):
    status, _, body = post(gw, "/forum/alert", b"body=Thanks+for+the+help&title=hello", "application/x-www-form-urlencoded")
    assert status == 200 and json.loads(body)["name"] == "forum"
    assert not events.of("moderation.alert")


def test_forum_alert_forwards_and_records(gw, forum, events):
    n = len(forum.requests)
    status, _, _ = post(gw, "/forum/alert", json.dumps({"body": "you 1d10t, f.u.c.k off"}).encode(), "application/json")
    assert status == 200 and len(forum.requests) == n + 1
    (alert,) = events.of("moderation.alert")
    assert alert["rule"] == "alerts" and alert["action"] == "alert" and alert["score"] >= 5
    assert alert["route"] == "*/forum/" and alert["client"] == "10.0.0.0/24"  # no raw address in the store
    # the rule only reads `body`: abuse in another field is not this rule's business
    status, _, _ = post(gw, "/forum/alert", b"title=IDIOT+IDIOT+IDIOT&body=fine", "application/x-www-form-urlencoded")
    assert status == 200 and len(events.of("moderation.alert")) == 1


def test_forum_hold_and_reject_do_not_forward(gw, forum, events):
    n = len(forum.requests)
    status, _, body = post(gw, "/forum/hold", b"text=YOU+ARE+AN+IDIOT+AND+A+MORON!!!", "application/x-www-form-urlencoded")
    assert status == 202 and b"held for review" in body
    status, _, body = post(gw, "/forum/reject", b"shut up, loser, sh1t post", "text/plain")
    assert status == 422 and b"not published" in body
    assert len(forum.requests) == n
    assert [a["action"] for a in events.of("moderation.alert")] == ["hold", "reject"]


def test_outbound_homograph_link_blocks_and_lookalike_warns(gw, events):
    status, _, body = get(gw, "/links-homograph")
    assert status == 403 and b"apple.com" in body
    status, _, body = get(gw, "/links-lookalike")
    assert status == 403 and b"Warning: possible phishing" in body and b"example.org" in body
    assert get(gw, "/links-ok")[0] == 200
    kinds = sorted((e["kind"], e["action"]) for e in events.of("phishing.detected"))
    assert kinds == [("homograph", "block"), ("lookalike", "warn")]


def test_forward_proxy_destinations(unbound, sink):
    cfg = f"""
listen: 127.0.0.1:0
grpc: {{listen: 127.0.0.1:0}}
telemetry: {{enabled: false}}
forward: {{listen: 127.0.0.1:0, allow_private_destinations: true}}
moderation:
  categories: [{{name: gambling, action: block, domains: ["0.0.0.0 casino.example"]}}]
phishing: {{protected_domains: [example.org], lookalike_action: block, blocklist: ["||clean.example^"]}}
""" + dns_yaml(unbound)
    with GatewayThread(cfg) as g:
        g.gateway.master.addons.get("phishing").store = sink
        port = g.gateway.forward_port
        for target, reason in [("http://xn--pple-43d.com/", b"apple.com"), ("http://examp1e.org/", b"example.org"),
                               ("http://clean.example/", b"blocklist"), ("http://www.casino.example/", b"gambling")]:
            status, _, body = proxy_request(port, target)
            assert status == 403 and reason in body, (target, body[:400])
        status, _, _ = proxy_request(port, "xn--pple-43d.com:443", method="CONNECT")
        assert status == 403
        assert {e["kind"] for e in sink.of("phishing.detected")} == {"homograph", "lookalike", "blocklist"}
