"""The cache end to end: a real gateway (mitmproxy + Portico's addons, LMDB in tmp_path) in
front of a real scripted upstream that counts requests. A hit must not reach the upstream.

Tests share one gateway per module (each uses its own path) and move a fake clock instead
of sleeping; tests that need their own settings start their own gateway.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from addons import cache_policy as P
from tests.cache.conftest import ScriptedUpstream, start_rig


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    up = ScriptedUpstream()
    rig = start_rig(up, tmp_path_factory.mktemp("cache") / "c",
                    extra="  purge_networks: [127.0.0.1]\n  ignore_query_params: [utm_*]\n  sort_query: true")
    yield rig
    rig.gateway.stop()
    up.close()


_n = iter(range(10**6))


def fresh_path(name: str) -> str:
    return f"/{name}-{next(_n)}"


def twice(rig, path, reply, headers=None, second_headers=None):
    rig.upstream.script[path.split("?")[0]] = reply
    first = rig.get(path, headers)
    second = rig.get(path, second_headers if second_headers is not None else headers)
    return first, second


# --- §3 storing and §5.2.2 response directives -----------------------------------------------

@pytest.mark.parametrize(("name", "headers", "upstream_count", "status_part"), [
    ("max-age", {"Cache-Control": "max-age=60"}, 1, "hit"),
    ("s-maxage", {"Cache-Control": "s-maxage=60, max-age=0"}, 1, "hit"),
    ("expires", "expires", 1, "hit"),
    ("expires-zero", {"Expires": "0"}, 2, "fwd="),
    ("no-store", {"Cache-Control": "no-store, max-age=60"}, 2, "fwd="),
    ("private", {"Cache-Control": "private, max-age=60"}, 2, "fwd="),
    ("unknown-directive", {"Cache-Control": "x-foo=1, max-age=60, bar"}, 1, "hit"),
    ("public", {"Cache-Control": "public, max-age=60"}, 1, "hit"),
    ("immutable", {"Cache-Control": "max-age=60, immutable"}, 1, "hit"),
    ("cdn-cache-control-wins", {"CDN-Cache-Control": "max-age=60", "Cache-Control": "no-store"}, 1, "hit"),
    ("portico-field-wins", {"Portico-Cache-Control": "no-store", "Cache-Control": "max-age=60"}, 2, "fwd="),
    ("vary-star", {"Cache-Control": "max-age=60", "Vary": "*"}, 2, "fwd="),
    ("set-cookie", {"Cache-Control": "max-age=60", "Set-Cookie": "a=1"}, 2, "fwd="),
    ("no-freshness", {}, 2, "fwd="),
    ("heuristic", "heuristic", 1, "hit"),
])
def test_response_directives(shared, name, headers, upstream_count, status_part):
    path = fresh_path(name)
    now = shared.clock()
    if headers == "expires":
        headers = {"Expires": P.format_http_date(now + 60)}
    elif headers == "heuristic":
        headers = {"Last-Modified": P.format_http_date(now - 10 * 86400)}
    _, (status, got, body) = twice(shared, path, (200, headers, b"body-" + name.encode()))
    assert status == 200 and body == b"body-" + name.encode()
    assert shared.upstream.count(path) == upstream_count
    assert got["cache-status"].startswith("portico; " + status_part)
    assert "portico-cache-control" not in got


def test_status_404_with_freshness_is_cached(shared):
    path = fresh_path("nf")
    _, (status, got, _) = twice(shared, path, (404, {"Cache-Control": "max-age=60"}, b"gone"))
    assert status == 404 and shared.upstream.count(path) == 1 and "hit" in got["cache-status"]


def test_no_cache_response_is_stored_but_revalidated(shared):
    path = fresh_path("nocache")
    _, (status, got, body) = twice(shared, path, (200, {"Cache-Control": "no-cache", "ETag": '"v1"'}, b"x"))
    assert status == 200 and body == b"x"
    assert shared.upstream.count(path) == 2
    assert shared.upstream.seen[-1].headers.get("if-none-match") == '"v1"'


# --- §4.2.3 age ---------------------------------------------------------------------------------

def test_age_arithmetic(shared):
    path = fresh_path("age")
    shared.upstream.script[path] = (200, {"Cache-Control": "max-age=100", "Age": "30"}, b"a")
    shared.get(path)
    _, h, _ = shared.get(path)
    assert int(h["age"]) == 30 and "ttl=70" in h["cache-status"]
    shared.clock.advance(40)
    _, h, _ = shared.get(path)
    assert int(h["age"]) == 70 and shared.upstream.count(path) == 1
    shared.clock.advance(31)
    _, h, _ = shared.get(path)
    assert shared.upstream.count(path) == 2 and "fwd=stale" in h["cache-status"]


def test_apparent_age_from_date(shared):
    path = fresh_path("date")
    shared.upstream.script[path] = lambda s: (200, [("Cache-Control", "max-age=60"),
                                                    ("Date", P.format_http_date(shared.clock() - 50))], b"d")
    shared.get(path)
    _, h, _ = shared.get(path)
    # BaseHTTPRequestHandler also sends its own Date first; the first Date is the one used
    assert shared.upstream.count(path) == 1 and int(h["age"]) >= 0


# --- §5.2.1 request directives ----------------------------------------------------------------

@pytest.mark.parametrize(("name", "req", "stale_by", "count", "expected_status"), [
    ("req-no-cache", {"Cache-Control": "no-cache"}, 0, 2, 200),
    ("req-pragma", {"Pragma": "no-cache"}, 0, 2, 200),
    ("req-max-age-0", {"Cache-Control": "max-age=0"}, 0, 2, 200),
    ("req-max-age-big", {"Cache-Control": "max-age=1000"}, 0, 1, 200),
    ("req-min-fresh", {"Cache-Control": "min-fresh=100"}, 0, 2, 200),
    ("req-max-stale", {"Cache-Control": "max-stale=100"}, 70, 1, 200),
    ("req-max-stale-short", {"Cache-Control": "max-stale=5"}, 70, 2, 200),
    ("req-only-if-cached", {"Cache-Control": "only-if-cached"}, 0, 1, 200),
    ("req-only-if-cached-stale", {"Cache-Control": "only-if-cached"}, 70, 1, 504),
    ("req-unknown", {"Cache-Control": "foo-bar"}, 0, 1, 200),
])
def test_request_directives(shared, name, req, stale_by, count, expected_status):
    path = fresh_path(name)
    shared.upstream.script[path] = (200, {"Cache-Control": "max-age=60", "ETag": '"e"'}, b"r")
    shared.get(path)
    shared.clock.advance(stale_by)
    status, h, _ = shared.get(path, req)
    assert status == expected_status
    assert shared.upstream.count(path) == count
    shared.clock.advance(-stale_by)


def test_only_if_cached_without_entry_is_504(shared):
    path = fresh_path("oic")
    status, h, _ = shared.get(path, {"Cache-Control": "only-if-cached"})
    assert status == 504 and shared.upstream.count(path) == 0


def test_must_revalidate_refuses_max_stale(shared):
    path = fresh_path("mr")
    shared.upstream.script[path] = (200, {"Cache-Control": "max-age=10, must-revalidate"}, b"m")
    shared.get(path)
    shared.clock.advance(20)
    shared.get(path, {"Cache-Control": "max-stale"})
    shared.clock.advance(-20)
    assert shared.upstream.count(path) == 2


# --- §4.1 Vary ------------------------------------------------------------------------------------

def test_vary_with_several_variants(shared):
    path = fresh_path("vary")
    shared.upstream.script[path] = lambda s: (200, {"Cache-Control": "max-age=60", "Vary": "Accept-Language"},
                                              s.headers.get("accept-language", "none").encode())
    bodies = [shared.get(path, {"Accept-Language": lang})[2] for lang in ("en", "fr", "en", "fr", "de")]
    assert bodies == [b"en", b"fr", b"en", b"fr", b"de"]
    assert shared.upstream.count(path) == 3
    _, h, _ = shared.get(path, {"Accept-Language": "it"})
    assert "fwd=vary-miss" in h["cache-status"]
    _, h, body = shared.get(path)
    assert body == b"none"


# --- §4.3 validation ----------------------------------------------------------------------------

def test_304_updates_stored_headers(shared):
    path = fresh_path("merge")

    def reply(seen):
        if seen.headers.get("if-none-match") == '"v1"':
            return 304, {"Cache-Control": "max-age=120", "ETag": '"v1"', "X-Updated": "yes"}, b""
        return 200, {"Cache-Control": "max-age=10", "ETag": '"v1"', "X-Updated": "no"}, b"payload"
    shared.upstream.script[path] = reply
    shared.get(path)
    shared.clock.advance(20)
    status, h, body = shared.get(path)
    assert (status, body, h["x-updated"]) == (200, b"payload", "yes")
    assert "fwd=stale; fwd-status=304" in h["cache-status"]
    shared.clock.advance(60)  # fresh again for 120 s after the 304
    status, h, body = shared.get(path)
    assert shared.upstream.count(path) == 2 and body == b"payload" and h["cache-control"] == "max-age=120"
    shared.clock.advance(-80)


def test_client_conditional_answered_304_from_store(shared):
    path = fresh_path("cond")
    shared.upstream.script[path] = (200, {"Cache-Control": "max-age=60", "ETag": '"abc"'}, b"c")
    status, h, _ = shared.get(path, {"If-None-Match": '"abc"'})  # miss: fetched in full, stored, 304
    assert status == 304 and "if-none-match" not in shared.upstream.seen[-1].headers
    status, h, body = shared.get(path, {"If-None-Match": '"abc"'})
    assert status == 304 and body == b"" and "hit" in h["cache-status"]
    status, _, body = shared.get(path, {"If-None-Match": '"zzz"'})
    assert status == 200 and body == b"c"
    assert shared.upstream.count(path) == 1


# --- RFC 5861 -------------------------------------------------------------------------------------

def test_stale_while_revalidate_refreshes_exactly_once(shared):
    path = fresh_path("swr")
    version = {"n": 0}
    six_answered = threading.Event()  # the refresh waits for it: no request can see v2 early, however slow

    def reply(seen):
        version["n"] += 1
        if version["n"] > 1:
            six_answered.wait(10)
        return 200, {"Cache-Control": "max-age=10, stale-while-revalidate=60"}, f"v{version['n']}".encode()
    shared.upstream.script[path] = reply
    shared.get(path)
    shared.clock.advance(15)
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: shared.get(path), range(6)))
        six_answered.set()
        assert all(r[2] == b"v1" and "stale-while-revalidate" in r[1]["cache-status"] for r in results)
        deadline = time.time() + 10  # the refresh is stored after its reply: poll (stale answers meanwhile)
        while shared.get(path)[2] != b"v2" and time.time() < deadline:
            time.sleep(0.05)
    finally:
        six_answered.set()
        shared.clock.advance(-15)
    assert shared.upstream.count(path) == 2  # one miss + exactly one background refresh
    shared.clock.advance(15)
    assert shared.get(path)[2] == b"v2"
    shared.clock.advance(-15)


def test_stale_if_error_on_5xx(shared):
    path = fresh_path("sie5")
    shared.upstream.script[path] = (200, {"Cache-Control": "max-age=10, stale-if-error=60"}, b"good")
    shared.get(path)
    shared.upstream.script[path] = (503, {}, b"down")
    shared.clock.advance(20)
    status, h, body = shared.get(path)
    shared.clock.advance(-20)
    assert (status, body) == (200, b"good") and "stale-if-error" in h["cache-status"]


def test_5xx_without_stale_if_error_reaches_the_client(shared):
    path = fresh_path("nosie")
    shared.upstream.script[path] = (200, {"Cache-Control": "max-age=10", "ETag": '"q"'}, b"good")
    shared.get(path)
    shared.upstream.script[path] = (503, {}, b"down")
    shared.clock.advance(20)
    status, _, body = shared.get(path)
    shared.clock.advance(-20)
    assert (status, body) == (503, b"down")


# --- collapsing ---------------------------------------------------------------------------------

def test_concurrent_misses_make_one_upstream_request(shared):
    path = fresh_path("collapse")
    shared.upstream.script[path] = (200, {"Cache-Control": "max-age=60"}, b"once")
    shared.upstream.delay = 0.5
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: shared.get(path), range(8)))
    finally:
        shared.upstream.delay = 0
    assert all(r[0] == 200 and r[2] == b"once" for r in results)
    assert shared.upstream.count(path) == 1
    assert any("collapsed" in r[1]["cache-status"] for r in results)


# --- §4.4 invalidation --------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_unsafe_methods_invalidate(shared, method):
    path = fresh_path("inv")
    other = fresh_path("loc")
    shared.upstream.script[path] = lambda s: ((200, {"Cache-Control": "max-age=60"}, b"page") if s.method == "GET"
                                              else (201, {"Location": other, "Content-Location": "http://x.test/y"},
                                                    b""))
    shared.upstream.script[other] = (200, {"Cache-Control": "max-age=60"}, b"other")
    shared.get(path), shared.get(other)
    status, h, _ = shared.get(path, method=method, body=b"{}")
    assert status == 201 and "fwd=method" in h["cache-status"]
    shared.get(path), shared.get(other)
    assert shared.upstream.count(path, "GET") == 2 and shared.upstream.count(other) == 2


def test_failed_unsafe_method_does_not_invalidate(shared):
    path = fresh_path("inv-fail")
    shared.upstream.script[path] = lambda s: ((200, {"Cache-Control": "max-age=60"}, b"page") if s.method == "GET"
                                              else (500, {}, b"no"))
    shared.get(path)
    shared.get(path, method="POST", body=b"x")
    shared.get(path)
    assert shared.upstream.count(path, "GET") == 1


# --- HEAD and ranges -------------------------------------------------------------------------------

def test_head_and_ranges_from_stored_get(shared):
    path = fresh_path("range")
    shared.upstream.script[path] = (200, {"Cache-Control": "max-age=60", "ETag": '"r"'}, b"0123456789")
    shared.get(path)
    status, h, body = shared.get(path, method="HEAD")
    assert (status, body, h["content-length"]) == (200, b"", "10")
    status, h, body = shared.get(path, {"Range": "bytes=2-4"})
    assert (status, body, h["content-range"]) == (206, b"234", "bytes 2-4/10")
    status, h, _ = shared.get(path, {"Range": "bytes=20-"})
    assert status == 416 and h["content-range"] == "bytes */10"
    status, _, body = shared.get(path, {"Range": "bytes=2-4", "If-Range": '"other"'})
    assert (status, body) == (200, b"0123456789")
    assert shared.upstream.count(path) == 1


def test_range_miss_is_passed_through(shared):
    path = fresh_path("rangemiss")
    shared.upstream.script[path] = lambda s: (206, {"Content-Range": "bytes 0-1/4", "Cache-Control": "max-age=60"},
                                              b"ab")
    status, _, body = shared.get(path, {"Range": "bytes=0-1"})
    assert (status, body) == (206, b"ab")
    assert shared.upstream.seen[-1].headers["range"] == "bytes=0-1"
    shared.get(path, {"Range": "bytes=0-1"})
    assert shared.upstream.count(path) == 2  # partial responses are not stored


# --- §3.5 and other safety rules ---------------------------------------------------------------

@pytest.mark.parametrize(("cred_a", "cred_b"), [
    ({"Authorization": "Basic YTph"}, {"Authorization": "Basic Yjpi"}),
    ({"Cookie": "portico_session=aaa"}, {"Cookie": "portico_session=bbb"}),
])
def test_authenticated_responses_not_shared(shared, cred_a, cred_b):
    path = fresh_path("auth")
    shared.upstream.script[path] = lambda s: (200, {"Cache-Control": "max-age=60"},
                                              (s.headers.get("authorization") or s.headers.get("cookie")).encode())
    a = shared.get(path, cred_a)[2]
    b = shared.get(path, cred_b)[2]
    assert a != b and shared.upstream.count(path) == 2
    assert shared.get(path)[2] != a  # nor with an anonymous user


def test_authenticated_public_response_is_shared(shared):
    path = fresh_path("authpub")
    shared.upstream.script[path] = (200, {"Cache-Control": "public, max-age=60"}, b"same")
    shared.get(path, {"Authorization": "Basic YTph"})
    assert shared.get(path, {"Authorization": "Basic Yjpi"})[2] == b"same"
    assert shared.upstream.count(path) == 1


def test_poisoning_headers_are_stripped(shared):
    path = fresh_path("poison")
    shared.upstream.script[path] = lambda s: (200, {"Cache-Control": "max-age=60"},
                                              repr(sorted(s.headers.items())).encode())
    shared.get(path, {"Host": "site.test", "X-Forwarded-Host": "evil.test", "X-Original-URL": "/admin",
                      "X-Rewrite-URL": "/admin"})
    seen = shared.upstream.seen[-1].headers
    assert seen["x-forwarded-host"] == "site.test"
    assert "x-original-url" not in seen and "x-rewrite-url" not in seen


def test_cacheability_comes_from_the_response_not_the_suffix(shared):
    path = fresh_path("deception") + "/profile.css"
    _, (_, h, _) = twice(shared, path, (200, {"Content-Type": "text/html"}, b"private page"))
    assert shared.upstream.count(path) == 2


def test_every_response_has_cache_status(shared):
    path = fresh_path("cs")
    shared.upstream.script[path] = (200, {"Cache-Control": "no-store"}, b"x")
    for method in ("GET", "POST", "HEAD"):
        assert "cache-status" in shared.get(path, method=method)[1]


def test_query_normalisation(shared):
    path = fresh_path("q")
    shared.upstream.script[path] = (200, {"Cache-Control": "max-age=60"}, b"q")
    shared.get(path + "?b=2&a=1&utm_source=news")
    shared.get(path + "?a=1&b=2&utm_campaign=x")
    assert shared.upstream.count() >= 1 and sum(1 for s in shared.upstream.seen if s.path.startswith(path)) == 1


def test_purge_method_for_listed_network(shared):
    path = fresh_path("purge")
    shared.upstream.script[path] = (200, {"Cache-Control": "max-age=60"}, b"p")
    shared.get(path)
    status, _, body = shared.get(path, method="PURGE")
    assert status == 200 and b'"purged": 1' in body
    shared.get(path)
    assert shared.upstream.count(path) == 2
