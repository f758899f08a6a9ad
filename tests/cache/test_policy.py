"""Table tests of the pure RFC 9111/5861/9211/9213 decisions in addons/cache_policy.py."""

from __future__ import annotations

import pytest

from addons import cache_policy as P

F = P.Fields
DATE = "Mon, 02 Jan 2023 00:00:00 GMT"
T0 = P.http_date(DATE)


@pytest.mark.parametrize(("values", "expected"), [
    (["max-age=60"], {"max-age": "60"}),
    (["Max-Age=60, PUBLIC"], {"max-age": "60", "public": None}),
    (['no-cache="Set-Cookie, X-A", max-age=5'], {"no-cache": "Set-Cookie, X-A", "max-age": "5"}),
    (["max-age=1", "max-age=2"], {"max-age": "1"}),  # first wins
    (["foo=bar, s-maxage=10"], {"foo": "bar", "s-maxage": "10"}),  # unknown kept, ignored later
    ([",, ,max-age=3,"], {"max-age": "3"}),
])
def test_parse_cache_control(values, expected):
    assert P.parse_cache_control(values) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("max-age=60", {"max-age": "60"}),
    ("max-age=60, must-revalidate", {"max-age": "60", "must-revalidate": None}),
    ("no-store", {"no-store": None}),
    ("max-age=60;x=1", {"max-age": "60"}),
    ("max-age=60, Foo", None),  # upper-case key: not a structured field -> ignored
    ("max-age=6 0", None),
    ("", None),
])
def test_parse_targeted_field(value, expected):
    assert P.parse_targeted(value) == expected


@pytest.mark.parametrize(("status", "headers", "lifetime", "heuristic"), [
    (200, [("Cache-Control", "s-maxage=30, max-age=10")], 30, False),
    (200, [("Cache-Control", "max-age=10")], 10, False),
    (200, [("Cache-Control", "max-age=abc")], 0, False),
    (200, [("Date", DATE), ("Expires", "Mon, 02 Jan 2023 00:01:40 GMT")], 100, False),
    (200, [("Date", DATE), ("Expires", "0")], 0, False),
    (200, [("Date", DATE), ("Expires", "Mon, 02 Jan 2023 00:01:40 GMT"), ("Cache-Control", "max-age=5")], 5, False),
    (200, [("Date", DATE), ("Last-Modified", "Fri, 23 Dec 2022 00:00:00 GMT")], 86400, True),  # 10% of 10 days
    (200, [("Date", DATE), ("Last-Modified", "Sun, 01 Jan 2023 00:00:00 GMT")], 8640, True),
    (500, [("Date", DATE), ("Last-Modified", "Sun, 01 Jan 2023 00:00:00 GMT")], 0, False),  # not heuristic
    (500, [("Date", DATE), ("Last-Modified", "Sun, 01 Jan 2023 00:00:00 GMT"), ("Cache-Control", "public")],
     8640, True),
    (200, [("CDN-Cache-Control", "max-age=99"), ("Cache-Control", "max-age=1")], 99, False),
    (200, [("Portico-Cache-Control", "max-age=7"), ("CDN-Cache-Control", "max-age=99")], 7, False),
    (200, [("CDN-Cache-Control", "bogus value"), ("Cache-Control", "max-age=1")], 1, False),
    (200, [("CDN-Cache-Control", "no-store"), ("Date", DATE), ("Expires", "Mon, 02 Jan 2023 00:01:40 GMT")], 0, False),
])
def test_freshness_lifetime(status, headers, lifetime, heuristic):
    got = P.freshness_lifetime(status, F(headers), P.response_control(F(headers)))
    assert (got.lifetime, got.heuristic) == (lifetime, heuristic)


def test_default_ttl_replaces_heuristics_only_without_explicit_freshness():
    h = F([("Date", DATE)])
    assert P.freshness_lifetime(200, h, P.response_control(h), default_ttl=30).lifetime == 30
    h = F([("Cache-Control", "max-age=5")])
    assert P.freshness_lifetime(200, h, P.response_control(h), default_ttl=30).lifetime == 5


@pytest.mark.parametrize(("times", "now", "age"), [
    (P.Times(T0, T0, T0, 0), T0, 0),
    (P.Times(T0, T0, T0, 0), T0 + 25, 25),
    (P.Times(T0, T0, T0, 30), T0 + 5, 35),  # Age header + resident time
    (P.Times(T0, T0 + 2, T0, 0), T0 + 2, 2),  # response delay
    (P.Times(T0, T0, T0 - 10, 0), T0, 10),  # apparent age from Date
    (P.Times(T0, T0, T0 + 50, 3), T0, 3),  # Date in the future: never negative
])
def test_current_age(times, now, age):
    assert P.current_age(times, now) == age


def _reuse(resp_cc, req_cc, lifetime, age):
    control = P.response_control(F([("Cache-Control", resp_cc)]))
    return P.decide_reuse(P.Freshness(lifetime), age, control, P.parse_cache_control([req_cc]),
                          swr_cap=3600, sie_cap=3600).action


@pytest.mark.parametrize(("resp_cc", "req_cc", "lifetime", "age", "action"), [
    ("max-age=60", "", 60, 10, "fresh"),
    ("max-age=60", "", 60, 61, "revalidate"),
    ("no-cache, max-age=60", "", 60, 1, "revalidate"),
    ("max-age=60", "no-cache", 60, 1, "revalidate"),
    ("max-age=60", "max-age=0", 60, 1, "revalidate"),
    ("max-age=60, immutable", "max-age=0", 60, 1, "fresh"),
    ("max-age=60", "max-age=5", 60, 10, "revalidate"),
    ("max-age=60", "min-fresh=55", 60, 10, "revalidate"),
    ("max-age=60", "max-stale", 60, 600, "stale-ok"),
    ("max-age=60", "max-stale=10", 60, 65, "stale-ok"),
    ("max-age=60", "max-stale=10", 60, 75, "revalidate"),
    ("max-age=60, must-revalidate", "max-stale", 60, 65, "revalidate"),
    ("max-age=60, proxy-revalidate", "max-stale", 60, 65, "revalidate"),
    ("max-age=60, stale-while-revalidate=30", "", 60, 80, "swr"),
    ("max-age=60, stale-while-revalidate=30", "", 60, 95, "revalidate"),
    ("max-age=60", "foo, bar=1", 60, 10, "fresh"),  # unknown request directives ignored
])
def test_decide_reuse(resp_cc, req_cc, lifetime, age, action):
    assert _reuse(resp_cc, req_cc, lifetime, age) == action


@pytest.mark.parametrize(("resp_cc", "req_cc", "ttl", "allowed"), [
    ("max-age=1, stale-if-error=60", "", -30, True),
    ("max-age=1, stale-if-error=60", "", -90, False),
    ("max-age=1", "stale-if-error=60", -30, True),
    ("max-age=1, must-revalidate, stale-if-error=60", "", -30, False),
    ("max-age=1", "", -30, False),
])
def test_stale_if_error(resp_cc, req_cc, ttl, allowed):
    control = P.response_control(F([("Cache-Control", resp_cc)]))
    assert P.stale_if_error_allows(control, P.parse_cache_control([req_cc]), ttl, 3600) is allowed


@pytest.mark.parametrize(("req", "resp", "why"), [
    ([], [("Cache-Control", "max-age=5")], None),
    ([], [("Cache-Control", "no-store")], "no-store"),
    ([], [("Cache-Control", "private, max-age=5")], "private"),
    ([("Cache-Control", "no-store")], [("Cache-Control", "max-age=5")], "request-no-store"),
    ([], [("Vary", "*"), ("Cache-Control", "max-age=5")], "vary-star"),
    ([], [("Set-Cookie", "a=1"), ("Cache-Control", "max-age=5")], "set-cookie"),
])
def test_storable(req, resp, why):
    assert P.storable("GET", 200, F(req), F(resp), P.response_control(F(resp)), P.request_control(F(req)),
                      authenticated=False, store_set_cookie=False, default_ttl=None) == why


@pytest.mark.parametrize(("cc", "why"), [
    ("max-age=5", "authenticated"), ("public, max-age=5", None), ("s-maxage=5", None),
    ("must-revalidate, max-age=5", None),
])
def test_authenticated_responses_are_shared_only_when_allowed(cc, why):
    resp = F([("Cache-Control", cc)])
    assert P.storable("GET", 200, F([]), resp, P.response_control(resp), {}, authenticated=True,
                      store_set_cookie=False, default_ttl=None) == why


def test_status_without_freshness_is_not_stored():
    resp = F([])
    assert P.storable("GET", 500, F([]), resp, P.response_control(resp), {}, authenticated=False,
                      store_set_cookie=False, default_ttl=None) == "no-freshness"


@pytest.mark.parametrize(("value", "length", "expected"), [
    ("bytes=0-4", 10, (0, 4)), ("bytes=5-", 10, (5, 9)), ("bytes=-3", 10, (7, 9)), ("bytes=8-100", 10, (8, 9)),
    ("bytes=10-", 10, "unsatisfiable"), ("bytes=0-1,3-4", 10, None), ("items=0-1", 10, None), ("bytes=5-2", 10, None),
])
def test_parse_range(value, length, expected):
    assert P.parse_range(value, length) == expected


@pytest.mark.parametrize(("req", "stored", "result"), [
    ([("If-None-Match", '"a"')], [("ETag", '"a"')], True),
    ([("If-None-Match", 'W/"a"')], [("ETag", '"a"')], True),
    ([("If-None-Match", '"b", "a"')], [("ETag", '"a"')], True),
    ([("If-None-Match", '"b"')], [("ETag", '"a"')], False),
    ([("If-None-Match", "*")], [("ETag", '"a"')], True),
    ([("If-Modified-Since", DATE)], [("Last-Modified", "Sun, 01 Jan 2023 00:00:00 GMT")], True),
    ([("If-Modified-Since", "Sun, 01 Jan 2023 00:00:00 GMT")], [("Last-Modified", DATE)], False),
    ([("If-None-Match", '"b"'), ("If-Modified-Since", DATE)], [("ETag", '"a"'), ("Last-Modified", DATE)], False),
])
def test_client_conditionals(req, stored, result):
    assert P.not_modified_for_client(F(req), F(stored)) is result


def test_merge_not_modified_updates_fields_but_not_content_length():
    merged = P.merge_not_modified([("Content-Length", "5"), ("Cache-Control", "max-age=1"), ("X-Old", "1")],
                                  [("Cache-Control", "max-age=99"), ("Content-Length", "0"), ("X-New", "2")])
    assert F(merged).get("content-length") == "5"
    assert F(merged).get("cache-control") == "max-age=99"
    assert F(merged).get("x-old") == "1" and F(merged).get("x-new") == "2"


@pytest.mark.parametrize(("query", "ignore", "sort", "expected"), [
    ("b=2&a=1", (), False, "b=2&a=1"),
    ("b=2&a=1", (), True, "a=1&b=2"),
    ("utm_source=x&id=3&utm_medium=y", ("utm_*",), False, "id=3"),
    ("fbclid=1&id=3", ("utm_*", "fbclid"), True, "id=3"),
])
def test_normalize_query(query, ignore, sort, expected):
    assert P.normalize_query(query, ignore, sort) == expected


@pytest.mark.parametrize(("ref", "expected"), [
    ("/x?y=1", "http://a.test/x?y=1"),
    ("http://a.test/z", "http://a.test/z"),
    ("http://A.TEST:80/z", "http://a.test/z"),
    ("https://a.test/z", None),
    ("http://evil.test/z", None),
    ("//a.test/q", "http://a.test/q"),
])
def test_same_origin_target(ref, expected):
    assert P.same_origin_target("http", "a.test", ref) == expected


def test_cache_status_rendering():
    assert P.cache_status(hit=True, ttl=41.2) == "portico; hit; ttl=41"
    assert P.cache_status(fwd="uri-miss", fwd_status=200, stored=True, ttl=60) == \
        "portico; fwd=uri-miss; fwd-status=200; stored; ttl=60"
    assert P.cache_status(hit=True, ttl=-2.5, detail="stale-while-revalidate") == \
        "portico; hit; ttl=-3; detail=stale-while-revalidate"
