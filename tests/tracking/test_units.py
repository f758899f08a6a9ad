"""Pure functions and addon logic of tracking: tables, privacy, salts, signing, CSP, beacons, logs."""

from __future__ import annotations

import logging
import os
import re
import stat

import apachelogs
import pytest
from mitmproxy import flow as mflow

from addons import metadata
from addons.accesslog import AccessLog, AccessLogSettings, format_line
from addons.attribution import Goal
from addons.outbound import check_redirect, rewrite_links
from addons.outreachlinks import CLICK_PURPOSE, PIXEL_PURPOSE, OutreachError, make_tracked_urls, parse_hit
from addons.privacy import clean_path, truncate_address
from addons.recorder import Recorder
from addons.referrers import classify
from addons.snippet import BeaconError, RateLimiter, add_hash_to_csp, inject, parse_beacon, plan_for_csp
from addons.tracking import Tracking, TrackingSettings
from addons.useragent import parse_user_agent
from addons.visitor import Salts, Visitors
from proxy.config import parse_config
from proxy.schema import ConfigError
from tests.tracking.conftest import EventSink, make_flow

SECRET = b"0123456789abcdef0123456789abcdef"
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")


# --- referrers -------------------------------------------------------------------------------

@pytest.mark.parametrize(("referer", "params", "cls", "host", "path"), [
    ("", {}, "direct", "", ""),
    ("https://www.example.org/about?x=1", {}, "internal", "www.example.org", "/about"),
    ("https://intranet.example.org/", {}, "internal", "intranet.example.org", "/"),
    ("https://www.google.com/search?q=childcare", {}, "search", "www.google.com", "/search"),
    ("https://www.google.co.uk/", {}, "search", "www.google.co.uk", "/"),
    ("https://duckduckgo.com/", {}, "search", "duckduckgo.com", "/"),
    ("https://t.co/abc", {}, "social", "t.co", "/abc"),
    ("https://m.facebook.com/story.php?id=1", {}, "social", "m.facebook.com", "/story.php"),
    ("https://mail.google.com/mail/u/0/", {}, "email", "mail.google.com", "/mail/u/0/"),
    ("https://outlook.office.com/mail/", {}, "email", "outlook.office.com", "/mail/"),
    ("https://blog.other.net/post/1?utm=x", {}, "external", "blog.other.net", "/post/1"),
    ("", {"utm_source": "newsletter", "utm_medium": "email"}, "email", "newsletter", ""),
    ("https://mail.yahoo.com/", {"utm_source": "spring", "utm_medium": "email"}, "email", "mail.yahoo.com", "/"),
    ("", {"utm_source": "twitter"}, "social", "twitter", ""),
    ("", {"ref": "producthunt.com"}, "external", "producthunt.com", ""),
    ("", {"utm_source": "google", "utm_medium": "cpc"}, "search", "google", ""),
    ("not a url", {}, "direct", "", ""),
    ("http://[::1", {}, "direct", "", ""),  # urlsplit raises: no referrer, not a lost event
])
def test_referrer_classification_table(referer, params, cls, host, path):
    ref = classify(referer, params, "www.example.org", ["intranet.example.org"])
    assert (ref.source_class, ref.host, ref.path) == (cls, host, path)
    assert "?" not in ref.path  # never the query


# --- user agents -----------------------------------------------------------------------------

@pytest.mark.parametrize(("ua", "browser", "os_name", "device", "bot", "reason"), [
    (CHROME, "Chrome", "Linux", "desktop", False, ""),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.5 Mobile/15E148 Safari/604.1", "Safari", "iOS", "mobile", False, ""),
    ("Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0 Safari/537.36",
     "Chrome", "Android", "tablet", False, ""),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 "
     "Safari/537.36 Edg/126.0.2592.87", "Edge", "Windows", "desktop", False, ""),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:127.0) Gecko/20100101 Firefox/127.0",
     "Firefox", "macOS", "desktop", False, ""),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Other", "Other", "bot", True,
     "crawler"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0.0.0 "
     "Safari/537.36", "Chrome", "Linux", "bot", True, "headless"),
    ("curl/8.5.0", "Other", "Other", "bot", True, "library"),
    ("python-requests/2.32", "Other", "Other", "bot", True, "library"),
    ("", "Other", "Other", "bot", True, "empty"),
])
def test_user_agent_table(ua, browser, os_name, device, bot, reason):
    parsed = parse_user_agent(ua)
    assert (parsed.browser, parsed.os, parsed.device, parsed.bot, parsed.bot_reason) == \
        (browser, os_name, device, bot, reason)


# --- privacy ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "v4", "v6", "expected"), [
    ("203.0.113.77", 24, 48, "203.0.113.0/24"),
    ("2001:db8:1234:5678::1", 24, 48, "2001:db8:1234::/48"),
    ("::ffff:198.51.100.9", 24, 48, "198.51.100.0/24"),
    ("203.0.113.77", 32, 48, "203.0.113.77"),
    ("203.0.113.77", 16, 48, "203.0.0.0/16"),
    ("garbage", 24, 48, ""),
])
def test_ip_truncation(address, v4, v6, expected):
    assert truncate_address(address, v4, v6) == expected


def test_query_string_dropped_except_allowlisted_parameters():
    assert clean_path("/search?q=secret&page=2&utm_source=x", frozenset({"page"})) == \
        ("/search?page=2", {"q": "secret", "page": "2", "utm_source": "x"})
    assert clean_path("/a?token=abc", frozenset())[0] == "/a"


# --- salts and sessions ----------------------------------------------------------------------

class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


DAY1 = 1_767_225_600.0 + 3600  # 2026-01-01T01:00:00Z


def test_salts_rotate_daily_keep_yesterday_and_delete_older(tmp_path):
    clock = Clock(DAY1)
    salts = Salts(tmp_path / "salts", clock)
    today1, yesterday1 = salts.current()
    assert yesterday1 is None
    f1 = tmp_path / "salts" / "2026-01-01.salt"
    assert f1.exists() and stat.S_IMODE(f1.stat().st_mode) == 0o600
    assert Salts(tmp_path / "salts", clock).current()[0] == today1  # persisted: processes agree
    clock.t += 86400
    today2, yesterday2 = salts.current()
    assert today2 != today1 and yesterday2 == today1
    clock.t += 86400
    today3, yesterday3 = salts.current()
    assert yesterday3 == today2
    assert sorted(p.name for p in (tmp_path / "salts").iterdir()) == ["2026-01-02.salt", "2026-01-03.salt"]


def test_visitor_id_changes_daily_and_sessions_end_after_30_idle_minutes(tmp_path):
    clock = Clock(DAY1)
    visitors = Visitors(Salts(tmp_path, clock), session_timeout=1800, clock=clock)
    a = visitors.visit("www.example.org", "203.0.113.7", CHROME)
    assert a.new_session and len(a.visitor) == 16 and "203.0.113" not in a.visitor
    clock.t += 1700
    b = visitors.visit("www.example.org", "203.0.113.7", CHROME)
    assert (b.visitor, b.session, b.new_session) == (a.visitor, a.session, False)
    assert visitors.visit("other.example.org", "203.0.113.7", CHROME).visitor != a.visitor  # per site
    clock.t += 1801
    c = visitors.visit("www.example.org", "203.0.113.7", CHROME)
    assert c.new_session and c.session != a.session and c.visitor == a.visitor
    clock.t += 86400
    assert visitors.visit("www.example.org", "203.0.113.7", CHROME).visitor != a.visitor


def test_session_running_across_midnight_keeps_its_id(tmp_path):
    clock = Clock(DAY1 + 22 * 3600 + 59 * 60)  # 23:59
    visitors = Visitors(Salts(tmp_path, clock), clock=clock)
    before = visitors.visit("s", "198.51.100.1", CHROME)
    clock.t += 120  # 00:01 next day
    after = visitors.visit("s", "198.51.100.1", CHROME)
    assert after.session == before.session and not after.new_session and after.visitor != before.visitor


# --- outbound rewriting ----------------------------------------------------------------------

def test_rewrite_links_signs_external_links_only():
    page = ('<a href="https://example.net/x?a=1&amp;b=2">ext</a> <a class=x href=\'/about\'>in</a> '
            '<a href="https://www.example.org/self">self</a> <a href="mailto:a@b.c">m</a> '
            '<A HREF=//cdn.other.org/y>proto-rel</A> <link href="https://example.net/style.css">')
    out, count = rewrite_links(page, SECRET, "/_portico/", "www.example.org", "/page")
    assert count == 2
    assert "href='/about'" in out and 'href="https://www.example.org/self"' in out and "mailto:a@b.c" in out
    assert '<link href="https://example.net/style.css">' in out  # only <a>
    hrefs = re.findall(r'href="(/_portico/out\?[^"]+)"', out, re.IGNORECASE)
    assert len(hrefs) == 2
    query = hrefs[0].replace("&amp;", "&").split("?", 1)[1]
    assert check_redirect(SECRET, query) == ("https://example.net/x?a=1&b=2", "/page")
    again, count2 = rewrite_links(out, SECRET, "/_portico/", "www.example.org", "/page")
    assert count2 == 0 and again == out  # idempotent


@pytest.mark.parametrize("mutate", [
    lambda q: q.replace("example.net", "evil.example"),
    lambda q: q.split("&s=")[0],
    lambda q: q.replace("&s=", "&s=A"),
    lambda q: q.replace("f=%2Fpage", "f=%2Fother"),
])
def test_tampered_outbound_redirect_is_refused(mutate):
    out, _ = rewrite_links('<a href="https://example.net/x">x</a>', SECRET, "/_portico/", "h", "/page")
    query = re.search(r'out\?([^"]+)"', out).group(1).replace("&amp;", "&")
    assert isinstance(check_redirect(SECRET, query), tuple)
    assert isinstance(check_redirect(SECRET, mutate(query)), str)
    assert isinstance(check_redirect(b"another-secret-another-secret!!", query), str)


# --- outreach links --------------------------------------------------------------------------

def test_tracked_urls_verify_and_hide_the_recipient():
    urls = make_tracked_urls(SECRET, "https://www.example.org", "spring-2026", url="https://www.example.org/donate",
                             recipients=["Ada@Example.org", None], sent_at=1000, recipient_tracking=True)
    assert not re.search(r"ada(@|%40)", urls[0].pixel, re.I) and "example.org%" not in urls[0].pixel
    q = urls[0].link.split("?", 1)[1]
    hit = parse_hit(SECRET, CLICK_PURPOSE, q)
    assert hit.campaign == "spring-2026" and hit.recipient and hit.target == "https://www.example.org/donate"
    assert parse_hit(SECRET, PIXEL_PURPOSE, urls[1].pixel.split("?", 1)[1]).recipient is None
    assert isinstance(parse_hit(SECRET, PIXEL_PURPOSE, q), str)  # a click token is not a pixel token
    assert isinstance(parse_hit(SECRET, CLICK_PURPOSE, q.replace("donate", "steal")), str)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"campaign": "bad name"}, "campaign"),
    ({"url": "javascript:alert(1)"}, "url"),
    ({"base_url": "www.example.org"}, "base_url"),
    ({"recipients": ["ada"], "recipient_tracking": False}, "recipient"),
])
def test_tracked_url_input_errors_name_the_field(kwargs, field):
    args = {"campaign": "c1", "base_url": "https://www.example.org"} | kwargs
    with pytest.raises(OutreachError, match=f"^{field}:"):
        make_tracked_urls(SECRET, args.pop("base_url"), args.pop("campaign"), **args)


# --- CSP ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("csp", "mode", "nonce"), [
    ([], "plain", ""),
    (["default-src 'self'"], "plain", ""),
    (["script-src 'nonce-r4nd0m' 'strict-dynamic'; object-src 'none'"], "nonce", "r4nd0m"),
    (["script-src 'self' 'nonce-abc'"], "nonce", "abc"),
    (["script-src 'sha256-AAAA'"], "hash", ""),
    (["script-src 'strict-dynamic' 'sha256-AAAA'"], "hash", ""),
    (["script-src https://cdn.example.net"], "skip", ""),
    (["default-src 'none'"], "skip", ""),
    (["script-src 'self'; connect-src https://api.example.net"], "skip", ""),
    (["script-src 'nonce-a'", "script-src 'nonce-b'"], "skip", ""),
    (["img-src *"], "plain", ""),
])
def test_csp_plan_table(csp, mode, nonce):
    plan = plan_for_csp(csp)
    assert (plan.mode, plan.nonce) == (mode, nonce)
    if mode == "skip":
        assert plan.reason


def test_csp_hash_is_added_only_to_the_script_directive():
    assert add_hash_to_csp("default-src 'self'; script-src 'sha256-AAAA'; img-src *", "XYZ") == \
        "default-src 'self'; script-src 'sha256-AAAA' 'sha256-XYZ'; img-src *"


def test_injection_before_head_else_body_and_only_once():
    tag = "<script data-portico src=x></script>"
    assert inject("<html><head><title>t</title></HEAD><body></body>", tag) == \
        f"<html><head><title>t</title>{tag}</HEAD><body></body>"
    assert inject("<p>x</p></body>", tag) == f"<p>x</p>{tag}</body>"
    assert inject("<p>fragment</p>", tag) is None
    assert inject(inject("<head></head>", tag) or "", tag) is None


# --- beacon validation -------------------------------------------------------------------------

def test_valid_beacon_batch_is_accepted():
    events = parse_beacon(b'{"events":[{"type":"pageview","url":"/a?b=1","ref":"https://x.org/","spa":false},'
                          b'{"type":"click","url":"/a","track":"signup","tag":"button","text":"Sign up"},'
                          b'{"type":"custom","url":"/a","name":"enrolment.enrolled","props":{"org":"acme","n":2}},'
                          b'{"type":"engagement","url":"/a","ms":1234}]}', 16384, 50)
    assert [e["type"] for e in events] == ["pageview", "click", "custom", "engagement"]


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"not json", 400, "body: expected JSON"),
    (b'{"events": []}', 400, "events: expected a non-empty list"),
    (b'[1,2]', 400, "events: expected"),
    (b'{"events":[{"type":"hack","url":"/"}]}', 400, "events[0].type: expected one of"),
    (b'{"events":[{"type":"pageview"}]}', 400, "events[0].url: required"),
    (b'{"events":[{"type":"pageview","url":"https://evil/"}]}', 400, "events[0].url: expected a path"),
    (b'{"events":[{"type":"custom","url":"/","name":"User.Joined!"}]}', 400, "events[0].name"),
    (b'{"events":[{"type":"custom","url":"/","name":"x","props":{"a":[1]}}]}', 400, "events[0].props.a"),
    (b'{"events":[{"type":"engagement","url":"/","ms":-5}]}', 400, "events[0].ms"),
    (b'{"events":[{"type":"outbound","url":"/","href":"javascript:x"}]}', 400, "events[0].href"),
    (b'{"events":[' + b",".join([b'{"type":"pageview","url":"/"}'] * 51) + b"]}", 413, "51 events exceed"),
    (b'{"events":[{"type":"pageview","url":"/' + b"a" * 20000 + b'"}]}', 413, "exceeds the limit"),
])
def test_malformed_and_oversized_beacons_are_refused_with_a_reason(body, status, message):
    with pytest.raises(BeaconError) as err:
        parse_beacon(body, 16384, 50)
    assert err.value.status == status and message in str(err.value)


def test_rate_limiter_per_visitor():
    limiter = RateLimiter(60)
    assert limiter.allow("a", 60, now=0.0)
    assert not limiter.allow("a", 1, now=0.5)
    assert limiter.allow("b", 1, now=0.5)  # per visitor
    assert limiter.allow("a", 1, now=2.0)  # refilled one per second


# --- access log --------------------------------------------------------------------------------

GOACCESS_COMBINED = re.compile(  # GoAccess COMBINED: %h %^[%d:%t %^] "%r" %s %b "%R" "%u"
    r'^(?P<h>\S+) \S+ \S+ \[(?P<d>\d{2}/\w{3}/\d{4}):(?P<t>\d{2}:\d{2}:\d{2}) [+-]\d{4}\] '
    r'"(?P<r>(?:[^"\\]|\\.)*)" (?P<s>\d{3}) (?P<b>\d+|-) "(?P<R>(?:[^"\\]|\\.)*)" "(?P<u>(?:[^"\\]|\\.)*)"$')


def _logged_flow():
    f = make_flow("/search?q=private&page=2", headers={
        "user-agent": 'Mozilla/5.0 "quoted" agent', "referer": "https://www.google.com/search?q=secret"})
    f.request.timestamp_start = 1_767_225_600.0
    return f


def test_combined_log_line_parses_with_apachelogs_and_goaccess_regex():
    line = format_line(_logged_flow(), AccessLogSettings(format="combined", query_allowlist=frozenset({"page"})))
    entry = apachelogs.LogParser(apachelogs.COMBINED).parse(line)
    assert entry.remote_host == "203.0.113.0"  # network, not the address
    assert entry.request_line == "GET /search?page=2 HTTP/1.1"
    assert entry.final_status == 200 and entry.bytes_sent == len(b"<html><head></head><body>hi</body></html>")
    assert entry.headers_in["Referer"] == "https://www.google.com/search"
    assert entry.headers_in["User-Agent"] == 'Mozilla/5.0 "quoted" agent'
    assert entry.request_time.year == 2026
    m = GOACCESS_COMBINED.match(line)
    assert m and m["s"] == "200" and m["d"] == "01/Jan/2026" and m["t"] == "00:00:00"


def test_common_and_json_formats():
    common = format_line(_logged_flow(), AccessLogSettings(format="common"))
    assert apachelogs.LogParser(apachelogs.COMMON).parse(common).request_line == "GET /search HTTP/1.1"
    import json

    data = json.loads(format_line(_logged_flow(), AccessLogSettings(format="json")))
    assert data["path"] == "/search" and data["status"] == 200 and data["client"] == "203.0.113.0"
    assert data["request_id"] == "rid1" and data["route"] == "site"


def test_access_log_file_rotates_by_size_and_logs_each_flow_once(tmp_path):
    path = tmp_path / "logs" / "access.log"
    log = AccessLog(AccessLogSettings(format="combined", path=str(path), max_size=2000, backups=2))
    for i in range(100):
        f = make_flow(f"/page/{i}")
        log.response(f)
        log.error(f)  # a flow that also errored later: still one line
    log.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["access.log", "access.log.1", "access.log.2"]
    lines = [ln for p in path.parent.iterdir() for ln in p.read_text().splitlines()]
    parser = apachelogs.LogParser(apachelogs.COMBINED)
    assert all(parser.parse(ln) for ln in lines)
    paths = [parser.parse(ln).request_line.split()[1] for ln in lines]
    assert len(paths) == len(set(paths))  # no duplicates
    assert all(os.path.getsize(path.parent / f) <= 2200 for f in files)


# --- the tracking addon ------------------------------------------------------------------------

def _tracking(sink, tmp_path, **kw):
    settings = TrackingSettings(secret=SECRET, query_allowlist=frozenset({"page"}), **kw)
    return Tracking(settings, Recorder(sink), Visitors(Salts(tmp_path)))


def test_an_unparsable_referer_header_still_gives_the_request_event(sink, tmp_path):
    from addons.accesslog import referrer_without_query

    tracking = _tracking(sink, tmp_path, bot_follow_timeout=0.0)
    tracking.response(make_flow("/badref", headers={"user-agent": CHROME, "referer": "http://[::1"}))
    tracking.flush_pending(force=True)
    (event,) = sink.of("request")
    assert event.attrs["path"] == "/badref" and event.attrs["ref_class"] == "direct"
    assert referrer_without_query("http://[::1") == "-"  # the access log's view of it


def test_request_event_fields_and_no_raw_address(sink, tmp_path):
    tracking = _tracking(sink, tmp_path, bot_follow_timeout=60)
    f = make_flow("/landing?utm_source=newsletter&utm_medium=email&utm_campaign=spring&page=3&email=a@b.c",
                  headers={"user-agent": CHROME, "referer": "https://mail.google.com/mail/u/0/#inbox"})
    f.metadata[metadata.USER] = "ada"
    f.metadata[metadata.GROUPS] = ("staff",)
    f.metadata[metadata.CACHE_STATUS] = "miss"
    tracking.response(f)
    tracking.response(make_flow("/style.css", content_type="text/css", body=b"x",
                                headers={"user-agent": CHROME}))  # an asset follows: a browser
    tracking.error(f)  # a second hook for the same flow records nothing more
    reqs = sink.of("request")
    assert len(reqs) == 2
    a = reqs[0].attrs
    assert a["path"] == "/landing?page=3" and a["status"] == 200 and a["net"] == "203.0.113.0/24"
    assert a["utm_source"] == "newsletter" and a["utm_campaign"] == "spring" and a["ref_class"] == "email"
    assert a["ref_host"] == "mail.google.com" and a["browser"] == "Chrome" and a["device"] == "desktop"
    assert a["user"] == "ada" and a["groups"] == ["staff"] and a["cache"] == "miss" and a["route"] == "site"
    assert a["bot"] is False and len(a["visitor"]) == 16 and a["session"]
    assert not any("203.0.113.77" in str(v) for e in sink.events for v in e.attrs.values())
    assert len(sink.of("session.start")) == 1


def test_pseudonymised_users(sink, tmp_path):
    tracking = _tracking(sink, tmp_path, pseudonymise_users=True)
    f = make_flow("/", headers={"user-agent": "curl/8"})
    f.metadata[metadata.USER] = "ada"
    tracking.response(f)
    user = sink.of("request")[0].attrs["user"]
    assert user != "ada" and len(user) == 16 and "groups" not in sink.of("request")[0].attrs


def test_bot_flags_crawler_and_html_without_follow_up(sink, tmp_path):
    tracking = _tracking(sink, tmp_path, bot_follow_timeout=0.0)
    tracking.response(make_flow("/", headers={"user-agent": "Mozilla/5.0 (compatible; bingbot/2.0)"},
                                client_ip="192.0.2.1"))
    crawler = sink.of("request")[0].attrs
    assert crawler["bot"] is True and crawler["bot_reason"] == "crawler"
    assert "visitor" not in crawler and crawler["bot_visitor"]  # excluded from visitor counts
    tracking.response(make_flow("/", headers={"user-agent": CHROME}, client_ip="192.0.2.2"))
    assert len(sink.of("request")) == 1  # held until something follows or the timeout passes
    tracking.flush_pending()
    sneaky = sink.of("request")[1].attrs
    assert sneaky["bot"] is True and sneaky["bot_reason"] == "no-follow" and "visitor" not in sneaky


def test_every_flow_yields_exactly_one_request_event(sink, tmp_path):
    tracking = _tracking(sink, tmp_path, bot_follow_timeout=0.0)
    blocked = make_flow("/admin", status=403, content_type="text/html")
    blocked.metadata[metadata.BLOCKED_BY] = "acl:deny"
    errored = make_flow("/down", status=None)
    errored.error = mflow.Error("connection refused")
    for f in (blocked, errored):
        tracking.response(f)
        tracking.error(f)
    tracking.flush_pending(force=True)
    reqs = sink.of("request")
    assert sorted(e.attrs["path"] for e in reqs) == ["/admin", "/down"]
    assert {e.attrs["path"]: e.attrs["status"] for e in reqs} == {"/admin": 403, "/down": 502}
    assert [e.attrs.get("blocked_by") for e in reqs if e.attrs["path"] == "/admin"] == ["acl:deny"]
    assert [e.attrs.get("error") for e in reqs if e.attrs["path"] == "/down"] == ["connection refused"]


def test_session_started_by_an_endpoint_is_announced_by_its_first_recorded_flow(sink, tmp_path):
    """An email click (or a beacon, or an outbound redirect) answered by Portico can start a
    session with its own visit(): the first flow of it that tracking records says
    session.start, once, whoever started it."""
    tracking = _tracking(sink, tmp_path, bot_follow_timeout=0.0)
    click = make_flow("/_portico/c?x=1", headers={"user-agent": CHROME}, status=302)
    visit = tracking.visitors.visit("www.example.org", "203.0.113.77", CHROME)  # what the click endpoint does
    assert visit.new_session
    click.metadata[metadata.VISITOR], click.metadata[metadata.SESSION] = visit.visitor, visit.session
    tracking.response(click)
    tracking.response(make_flow("/landing", headers={"user-agent": CHROME}))
    tracking.flush_pending(force=True)
    starts = sink.of("session.start")
    assert [(e.attrs["session"], e.attrs["entry"]) for e in starts] == [(visit.session, "/_portico/c")]
    assert {e.attrs["session"] for e in sink.of("request")} == {visit.session}


def test_in_a_running_loop_flows_are_captured_then_built_in_order_without_keeping_the_flow(sink, tmp_path):
    """In the gateway the hook only copies what the event needs; the events are built
    `build_interval` later, all waiting flows in one batch, in the order they came."""
    import asyncio
    import gc
    import weakref

    tracking = _tracking(sink, tmp_path, bot_follow_timeout=0.0, build_interval=0.05)

    async def run() -> tuple[int, bool]:
        css = {"headers": {"user-agent": CHROME}, "content_type": "text/css"}  # assets: recorded, not held
        flow = make_flow("/first", **css)
        ref = weakref.ref(flow)
        tracking.response(flow)
        tracking.response(make_flow("/second", **css))
        del flow
        gc.collect()
        waiting = len(sink.events)
        await asyncio.sleep(0.2)
        return waiting, ref() is None

    waiting, flow_released = asyncio.run(run())
    assert waiting == 0  # not built in the hook
    assert flow_released  # only copies were kept: no flow (or body) waits with them
    assert [e.attrs["path"] for e in sink.of("request")] == ["/first", "/second"]  # the timer built them
    tracking.flush_pending(force=True)
    assert len(sink.of("session.start")) == 1 and len({e.attrs["session"] for e in sink.of("request")}) == 1


def test_an_endpoint_visit_first_builds_the_flows_captured_before_it(sink, tmp_path):
    """A campaign click attributes what follows it, never the page seen just before it:
    the click's visit() builds the captured flows first, as if they had been built live."""
    import asyncio

    tracking = _tracking(sink, tmp_path, bot_follow_timeout=0.0, build_interval=60)

    async def run() -> None:
        tracking.response(make_flow("/before", headers={"user-agent": CHROME}))
        visit = tracking.visitors.visit("www.example.org", "203.0.113.77", CHROME)  # the click endpoint
        visit.state.campaign_first = visit.state.campaign_last = "spring"
        tracking.response(make_flow("/after", headers={"user-agent": CHROME}))
        tracking.done()  # shutdown builds what was captured

    asyncio.run(run())
    tracking.flush_pending(force=True)
    by_path = {e.attrs["path"]: e.attrs for e in sink.of("request")}
    assert "campaign" not in by_path["/before"]
    assert by_path["/after"]["campaign"] == "spring"
    assert by_path["/before"]["session"] == by_path["/after"]["session"]


def test_a_flow_captured_before_midnight_and_built_after_keeps_that_days_visitor_id(sink, tmp_path):
    """Building waits up to 0.5 s: a request seen at 23:59:59.8 UTC and visited at
    00:00:00.3 counts under the day it came in (yesterday's salt), as it would live."""
    now = [86400.0 * 20000 - 0.2]
    visitors = Visitors(Salts(tmp_path, lambda: now[0]), clock=lambda: now[0])
    live = visitors.visit("www.example.org", "203.0.113.77", CHROME).visitor
    seen = now[0]
    now[0] += 0.5  # past midnight: the salts rotate at the next look
    late = visitors.visit_at(seen, "www.example.org", "203.0.113.77", CHROME)
    assert late.visitor == live
    after = visitors.visit("www.example.org", "203.0.113.77", CHROME)
    assert after.visitor != live and after.session == late.session  # continued under today's id


def test_flows_closing_after_shutdown_are_built_and_flushed_at_once(sink, tmp_path):
    import asyncio

    tracking = _tracking(sink, tmp_path, bot_follow_timeout=0.0, build_interval=60)

    async def run() -> int:
        tracking.running()
        tracking.done()  # the gateway stops; a flow still closing ends after it
        tracking.response(make_flow("/late", headers={"user-agent": CHROME}, content_type="text/css"))
        return len(sink.of("request"))

    assert asyncio.run(run()) == 1  # no timer would fire once the store closes


def test_a_full_capture_batch_is_built_at_once_and_one_bad_flow_loses_no_other(sink, tmp_path, caplog):
    import asyncio

    tracking = _tracking(sink, tmp_path, bot_follow_timeout=0.0, build_interval=60, build_batch=3)
    css = {"headers": {"user-agent": CHROME}, "content_type": "text/css"}  # assets: recorded, not held
    bad = make_flow("/bad", **css)
    bad.metadata[metadata.ORIGINAL_PATH] = 42  # not a path: building its event raises

    async def run() -> int:
        for f in (make_flow("/a", **css), bad, make_flow("/c", **css)):
            tracking.response(f)
        return len(sink.events)

    with caplog.at_level(logging.ERROR, logger="portico.tracking"):
        built = asyncio.run(run())
    tracking.flush_pending(force=True)
    assert built > 0  # the third capture filled the batch: built without waiting for the timer
    assert sorted(e.attrs["path"] for e in sink.of("request")) == ["/a", "/c"]
    assert "could not build the request event" in caplog.text


def test_path_goal_conversion_carries_campaign_once_per_session(sink, tmp_path):
    from addons.attribution import set_cookie_header

    tracking = _tracking(sink, tmp_path, goals=(Goal("enrolled", path="/enrol/done"),))
    cookie = set_cookie_header(SECRET, "spring", None, 86400, False).split(";", 1)[0]
    for _ in range(2):
        tracking.response(make_flow("/enrol/done", headers={"user-agent": CHROME, "cookie": cookie}))
    tracking.flush_pending(force=True)
    conv = sink.of("conversion")
    assert len(conv) == 1 and conv[0].attrs["campaign_first"] == "spring" and conv[0].attrs["goal"] == "enrolled"
    forged = cookie.replace("spring~spring", "autumn~autumn")
    tracking.response(make_flow("/x", headers={"user-agent": CHROME, "cookie": forged}, client_ip="192.0.2.9"))
    tracking.flush_pending(force=True)
    assert "campaign" not in [e for e in sink.of("request") if e.attrs["path"] == "/x"][0].attrs


def test_a_request_event_the_store_refuses_is_counted_and_logged_not_raised(tmp_path, caplog):
    class Validating:
        def submit(self, events):
            return EventSink().submit(events)   # raises EventError, as Store.submit's caller sees it

    tracking = Tracking(TrackingSettings(secret=SECRET), Recorder(Validating()), Visitors(Salts(tmp_path)))
    with caplog.at_level(logging.WARNING):
        tracking.response(make_flow("/bad\udcff", headers={"user-agent": "curl/8"}))  # a lone surrogate
    assert tracking.recorder.failed == 2 and "cannot be encoded" in caplog.text  # session.start + request
    tracking.response(make_flow("/good", headers={"user-agent": "curl/8"}))
    assert tracking.recorder.submitted == 1


def test_store_failure_never_breaks_a_request(tmp_path, caplog):
    class Broken:
        def submit(self, events):
            raise RuntimeError("store closed")

    tracking = Tracking(TrackingSettings(secret=SECRET), Recorder(Broken()), Visitors(Salts(tmp_path)))
    with caplog.at_level(logging.WARNING):
        tracking.response(make_flow("/", headers={"user-agent": "curl/8"}))
    assert tracking.recorder.failed == 2 and "store closed" in caplog.text


# --- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("tracking: {ipv4_prefix: 33}", "tracking.ipv4_prefix: expected a prefix length from 0 to 32"),
    ("tracking: {goals: [{name: g}]}", "tracking.goals[0].event, path: set exactly one"),
    ("tracking: {goals: [{name: g, event: Bad Name}]}", "tracking.goals[0].event: expected an event name"),
    ("tracking: {access_log: {format: apache}}", "tracking.access_log.format: expected one of"),
    ("tracking: {beacon: {max_bytes: huge}}", "tracking.beacon.max_bytes: expected a size"),
    ("tracking: {click_selectors: ['a\"b']}", "tracking.click_selectors[0]"),
    ("tracking: {secret_file: /a, secret_env: B}", "tracking.secret_file, secret_env"),
    ("tracking: {attribution_window: forever}", "tracking.attribution_window: expected a duration"),
    ("tracking: {beacon: {max_bytes: 0}}", "tracking.beacon.max_bytes: expected a size (bytes) of at least 256"),
    ("tracking: {beacon: {rate_per_minute: -3}}", "tracking.beacon.rate_per_minute: expected a number of events a"),
])
def test_tracking_config_errors_name_the_key(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)


def test_snippet_is_small():
    from addons.snippet import SCRIPT

    assert len(SCRIPT) < 3 * 1024
    assert b"http" not in SCRIPT.replace(b"https?:", b"")  # no third-party URLs

