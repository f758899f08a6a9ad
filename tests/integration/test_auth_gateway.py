"""Authentication and access rules end to end: a real gateway, a real slapd (StartTLS with a
test CA), a real upstream that echoes the headers it received."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from auth.users import UsersFile
from tests.auth.slapd import SERVICE_DN, SERVICE_PW, SUFFIX, Slapd, slapd_available
from tests.integration.harness import EchoUpstream, GatewayThread, request

pytestmark = pytest.mark.skipif(not slapd_available(),
                                reason="slapd/ldap-utils not installed: run scripts/install-system-deps.sh")

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
HTML = {"Accept": "text/html,application/xhtml+xml"}

RULES = """
access_control:
  default_policy: deny
  rules:
    - {id: public, path_prefixes: [/public/], policy: bypass}
    - {id: office, path_prefixes: [/office/], networks: [10.0.0.0/8], methods: [GET, HEAD], policy: bypass}
    - {id: admins, path_prefixes: [/admin/], groups: [admins], policy: authenticated}
    - {id: admin-others, path_prefixes: [/admin/], policy: deny}
    - {id: members, path_prefixes: [/members/], policy: authenticated}
    - {id: api, domains: [api.example.org], policy: authenticated}
    - {id: blocked, path_prefixes: [/blocked/], policy: deny}
    - {id: outbound, path_prefixes: [/fwd], policy: authenticated}
"""


def ldap_config(slapd: Slapd, tmp: Path, upstream: EchoUpstream, extra: str = "", session: str = "") -> str:
    pw = tmp / "service.pw"
    pw.write_text(SERVICE_PW)
    return f"""
listen: 127.0.0.1:0
grpc: {{listen: 127.0.0.1:0}}
telemetry: {{enabled: false, path: {tmp / 'data'}}}
trusted_proxies: [127.0.0.1/32]
routes:
  - match: {{host: "*", path_prefix: /}}
    upstream: {upstream.url}
auth:
  backend: ldap
  ldap:
    urls: [{slapd.ldap_url}]
    start_tls: true
    ca_file: {slapd.ca.ca_file}
    base_dn: {SUFFIX}
    bind_dn: {SERVICE_DN}
    password_file: {pw}
    connect_timeout: 2
    response_timeout: 5
  regulation: {{max_retries: 3, address_max_retries: 1000, ban_time: 10m}}
  {session}
{extra}
{RULES}
"""


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd")).start()
    try:
        server.seed()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    up = EchoUpstream("site")
    yield up
    up.close()


@pytest.fixture(scope="module")
def gw(slapd: Slapd, upstream: EchoUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    tmp = tmp_path_factory.mktemp("gw")
    forward = "forward: {listen: 127.0.0.1:0, allow_private_destinations: true, connect_ports: [443]}"
    with GatewayThread(ldap_config(slapd, tmp, upstream, forward)) as gateway:
        yield gateway


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def login(gw: GatewayThread, user: str, password: str, nxt: str = "/", headers: dict | None = None):
    body = urlencode({"username": user, "password": password, "next": nxt}).encode()
    return request(gw.url, "/_portico/login", method="POST", body=body, headers=FORM | (headers or {}))


def session_cookie(headers: dict[str, str]) -> str:
    value = headers["set-cookie"]
    assert value.startswith("portico_session="), value
    return value.split(";", 1)[0]


def echoed(gw: GatewayThread, path: str, **kw) -> dict:
    status, _, body = request(gw.url, path, **kw)
    assert status == 200, (status, body[:300])
    return json.loads(body)


def without_volatile(body: bytes) -> bytes:
    return re.sub(rb"[0-9a-f]{16}", b"RID", re.sub(rb'name="username" value="[^"]*"', b"", body))


# --- login page flow -----------------------------------------------------------------------


def test_browser_login_flow_returns_to_the_page_and_upstream_sees_identity_not_credentials(gw):
    status, headers, _ = request(gw.url, "/members/page?x=1&y=2", headers=HTML)
    assert status == 302
    location = headers["location"]
    assert location == "/_portico/login?next=" + quote("/members/page?x=1&y=2", safe="/")
    assert headers["cache-control"] == "no-store"

    status, headers, page = request(gw.url, location)
    assert status == 200
    assert b'<form method="post" action="/_portico/login"' in page
    assert b'value="/members/page?x=1&amp;y=2"' in page
    assert b"<script" not in page and b"http" not in page.split(b"<body>")[1]  # no external assets
    assert "frame-ancestors 'none'" in headers["content-security-policy"]

    status, headers, _ = login(gw, "alice", "alice-pw", "/members/page?x=1&y=2")
    assert status == 303, headers
    assert headers["location"] == "/members/page?x=1&y=2"
    cookie_attrs = [a.strip() for a in headers["set-cookie"].split(";")]
    assert "HttpOnly" in cookie_attrs and "SameSite=Lax" in cookie_attrs and "Path=/" in cookie_attrs
    assert "Secure" not in cookie_attrs  # the client connection is plain HTTP
    cookie = session_cookie(headers)
    assert "alice-pw" not in headers["set-cookie"]

    data = echoed(gw, "/members/page?x=1&y=2",
                  headers={"Cookie": f"theme=dark; {cookie}; lang=en", "Remote-User": "mallory",
                           "Remote-Groups": "admins", "X-Forwarded-User": "mallory"})
    h = data["headers"]
    assert h["remote-user"] == "alice"
    assert h["remote-groups"].split(",") == ["developers", "staff"]  # staff through the nested group
    assert h["remote-email"] == "alice@example.org"
    assert h["remote-name"] == "Alice Liddell"
    assert "x-forwarded-user" not in h and "authorization" not in h
    assert h["cookie"] == "theme=dark; lang=en"
    assert [k for k, _ in data["header_list"]].count("remote-user") == 1


def test_bad_password_and_unknown_user_get_the_same_401(gw):
    status_bad, _, bad = login(gw, "bob", "wrong", "/members/")
    status_unknown, _, unknown = login(gw, "nobody-here", "wrong", "/members/")
    assert status_bad == status_unknown == 401
    assert b"Sign-in failed" in bad
    assert without_volatile(bad) == without_volatile(unknown)
    status, _, _ = login(gw, "bob", "", "/")
    assert status == 401  # empty password never becomes an anonymous bind


@pytest.mark.parametrize("sent_by", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},  # a sandboxed page, or a POST another site redirected here (found by a review)
    {"Sec-Fetch-Site": "cross-site"},
    {"Referer": "https://evil.example/x"},
])
def test_login_posted_from_another_origin_is_refused(gw, sent_by):
    status, headers, _ = login(gw, "alice", "alice-pw", headers=sent_by)
    assert status == 403
    assert "set-cookie" not in headers


def test_logout_from_another_site_is_refused_and_the_session_lives_on(gw):
    _, headers, _ = login(gw, "alice", "alice-pw")
    cookie = session_cookie(headers)
    for sent_by in ({"Sec-Fetch-Site": "cross-site"}, {"Referer": "https://evil.example/"},
                    {"Origin": "https://evil.example"}):
        status, headers, _ = request(gw.url, "/_portico/logout", headers={"Cookie": cookie} | sent_by)
        assert status == 403 and "set-cookie" not in headers
    assert echoed(gw, "/members/", headers={"Cookie": cookie})["headers"]["remote-user"] == "alice"
    origin = gw.url.rstrip("/")
    status, _, _ = request(gw.url, "/_portico/logout", headers={"Cookie": cookie, "Referer": origin + "/members/"})
    assert status == 303  # from the site itself


@pytest.mark.parametrize("nxt", [
    "//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)",
    "http://127.0.0.1:1/elsewhere", "/\t/evil.example", "members/relative",
])
def test_open_redirects_in_next_are_refused(gw, nxt):
    status, headers, _ = login(gw, "alice", "alice-pw", nxt)
    assert status == 303
    assert headers["location"] == "/"


def test_same_origin_absolute_next_is_kept_as_a_path(gw):
    status, headers, _ = login(gw, "alice", "alice-pw", f"{gw.url}/members/a?b=1")
    assert status == 303
    assert headers["location"] == "/members/a?b=1"


def test_logout_clears_the_cookie(gw):
    _, headers, _ = login(gw, "alice", "alice-pw")
    cookie = session_cookie(headers)
    status, headers, _ = request(gw.url, "/_portico/logout", headers={"Cookie": cookie})
    assert status == 303 and headers["location"] == "/_portico/login"
    assert headers["set-cookie"].startswith("portico_session=;") and "Max-Age=0" in headers["set-cookie"]
    # the browser drops the cookie: the next visit asks for a login again
    assert request(gw.url, "/members/", headers=HTML)[0] == 302


def test_forged_session_cookie_is_refused_and_cleared(gw):
    _, headers, _ = login(gw, "alice", "alice-pw")
    name, token = session_cookie(headers).split("=", 1)
    version, kid, payload, mac = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["g"] = ["admins"]
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    forged = f"{name}={version}.{kid}.{forged_payload}.{mac}"
    status, headers, _ = request(gw.url, "/admin/", headers={"Cookie": forged, "Accept": "application/json"})
    assert status == 401
    assert "Max-Age=0" in headers["set-cookie"]


# --- API clients and the forward proxy -----------------------------------------------------


def test_basic_auth_for_api_clients(gw):
    data = echoed(gw, "/v1/items", headers={"Host": "api.example.org", "Authorization": basic("bob", "bob-pw")})
    assert data["headers"]["remote-user"] == "bob"
    assert data["headers"]["remote-groups"] == "admins"
    assert "authorization" not in data["headers"]

    status, headers, body = request(gw.url, "/v1/items", headers={
        "Host": "api.example.org", "Authorization": basic("bob", "nope"), "Accept": "application/json"})
    assert status == 401
    assert headers["www-authenticate"].startswith('Basic realm="Portico"')
    assert json.loads(body)["status"] == 401

    status, headers, body = request(gw.url, "/v1/items", headers={"Host": "api.example.org",
                                                                   "Accept": "application/json"})
    assert status == 401 and "www-authenticate" in headers  # no redirect for API clients
    status, _, _ = request(gw.url, "/v1/items", headers={"Host": "api.example.org",
                                                         "Authorization": "Basic !!!notbase64"})
    assert status == 401


def forward(port: int, url: str, headers: dict[str, str] | None = None,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", url, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def test_forward_proxy_requires_proxy_authorization_then_passes(gw, upstream):
    port = gw.gateway.forward_port
    target = f"{upstream.url}/fwd"
    status, headers, _ = forward(port, target)
    assert status == 407
    assert headers["proxy-authenticate"].startswith("Basic")
    status, _, _ = forward(port, target, {"Proxy-Authorization": basic("alice", "bad")})
    assert status == 407

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        status, _, body = forward(port, target, {"Proxy-Authorization": basic("alice", "alice-pw")}, conn)
        assert status == 200
        seen = json.loads(body)["headers"]
        assert "proxy-authorization" not in seen
        assert "remote-user" not in seen  # identity headers never go to third-party sites
        # the same connection stays authenticated (cached per client connection)
        status, _, _ = forward(port, target, {}, conn)
        assert status == 200
    finally:
        conn.close()
    status, _, _ = forward(port, target)  # a new connection must authenticate again
    assert status == 407


def test_forward_proxy_connect_needs_credentials_then_meets_the_rules(gw):
    def connect(headers: dict[str, str]) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", gw.gateway.forward_port, timeout=10)
        try:
            conn.request("CONNECT", "127.0.0.1:443", headers=headers)
            return conn.getresponse().status
        finally:
            conn.close()

    assert connect({}) == 407
    assert connect({"Proxy-Authorization": basic("alice", "wrong")}) == 407
    # authenticated, then the access rules apply to the destination (no rule allows it)
    assert connect({"Proxy-Authorization": basic("alice", "alice-pw")}) == 403


# --- access rules through the gateway ---------------------------------------------------------

ALICE = basic("alice", "alice-pw")  # developers, staff
BOB = basic("bob", "bob-pw")  # admins


@pytest.mark.parametrize(("path", "method", "auth", "client", "expected", "rule"), [
    ("/public/x", "GET", None, None, 200, None),
    ("/public/x", "POST", None, None, 200, None),
    ("/office/x", "GET", None, "10.1.2.3", 200, None),
    ("/office/x", "POST", None, "10.1.2.3", 403, "default"),  # method not in the rule
    ("/office/x", "GET", None, "192.168.1.9", 403, "default"),  # network not in the rule
    ("/admin/", "GET", BOB, None, 200, None),
    ("/admin/", "GET", ALICE, None, 403, "admin-others"),  # group requirement not met
    ("/admin/", "GET", None, None, 401, None),
    ("/public/%2e%2e/admin/", "GET", None, None, 401, None),  # judged as /admin/
    ("/members/x", "GET", ALICE, None, 200, None),
    ("/blocked/x", "GET", ALICE, None, 403, "blocked"),
    ("/elsewhere", "GET", ALICE, None, 403, "default"),
    ("/_portico/health", "GET", None, None, 200, None),
    ("/_portico/pixel-or-anything", "GET", None, None, 404, None),  # reserved: bypass, then Endpoints
    ("/_portico/dashboard", "GET", None, None, 403, "default"),  # the dashboard goes through the rules
])
def test_access_rules_table(gw, path, method, auth, client, expected, rule):
    headers = {"Accept": "application/json"}
    if auth:
        headers["Authorization"] = auth
    if client:
        headers["X-Forwarded-For"] = client  # the peer 127.0.0.1 is a trusted proxy here
    status, resp_headers, body = request(gw.url, path, method=method, headers=headers)
    assert status == expected, body[:300]
    if rule is not None:
        assert resp_headers["x-portico-rule"] == rule
        assert rule in json.loads(body)["detail"]


def test_denied_page_for_browsers_names_the_rule(gw):
    status, _, body = request(gw.url, "/blocked/", headers=HTML | {"Authorization": ALICE})
    assert status == 403
    assert b"Access denied" in body and b"&#x27;blocked&#x27;" in body


def test_identity_headers_from_anonymous_clients_are_stripped(gw):
    data = echoed(gw, "/public/x", headers={"Remote-User": "admin", "Remote-Groups": "admins",
                                            "Remote-Email": "x@y", "Remote-Name": "Eve",
                                            "X-Forwarded-User": "admin"})
    assert not {"remote-user", "remote-groups", "remote-email", "remote-name", "x-forwarded-user"} & set(data["headers"])


@pytest.mark.parametrize("path, status", [
    ("/public/..;/admin/x", 401),             # Tomcat reads ..; as .. : /admin/x
    ("/public/x/..%2F..%2Fadmin/x", 401),     # nginx decodes %2F, then resolves: /admin/x
    ("/PUBLIC/x", 403),                       # not the bypass rule's path for a case-sensitive upstream
    ("/admin", 401),                          # the /admin/ rule covers /admin
    ("/public/x\\..\\..\\admin", 400),      # IIS reads \ as /
    ("/public/%5C..%5Cadmin", 400),
    ("/public/a%00b", 400),
])
def test_a_path_spelled_to_slip_past_the_rules_is_judged_by_its_strictest_reading(gw, upstream, path, status):
    before = len(upstream.requests)
    got, _, body = request(gw.url, path, headers={"Accept": "application/json"})
    assert got == status, body[:300]
    assert len(upstream.requests) == before  # never forwarded


def test_underscore_spellings_and_folded_lines_cannot_smuggle_an_identity(gw):
    # CGI/WSGI servers read Remote_User as REMOTE_USER; a folded line could be read as a header
    data = echoed(gw, "/public/x", headers={"Remote_User": "admin", "X_Forwarded_User": "admin",
                                            "X_Forwarded_For": "6.6.6.6", "X-Note": "a\r\n Remote-User: admin"})
    got = data["headers"]
    assert not {"remote_user", "x_forwarded_user", "x_forwarded_for", "remote-user"} & set(got)
    assert got["x-note"] == "a Remote-User: admin"  # one line, joined with a space


# --- regulation -----------------------------------------------------------------------------


def test_repeated_failures_ban_the_user_even_with_the_right_password(gw):
    for _ in range(3):
        assert login(gw, "dave", "wrong")[0] == 401
    status, headers, body = login(gw, "dave", "dave-pw")
    assert status == 401 and "set-cookie" not in headers
    _, _, plain_failure = login(gw, "nobody-else", "wrong")
    assert without_volatile(body) == without_volatile(plain_failure)  # a ban looks like any failure
    status, _, _ = request(gw.url, "/members/", headers={"Authorization": basic("dave", "dave-pw")})
    assert status == 401
    assert login(gw, "bob", "bob-pw")[0] == 303  # other users from the same address are not affected


# --- sessions expire, the directory goes away ----------------------------------------------


def test_session_expires_after_inactivity(slapd, upstream, tmp_path):
    config = ldap_config(slapd, tmp_path, upstream,
                         session="session: {inactivity_timeout: 3s, refresh_after: 0s, absolute_lifetime: 1h}")
    with GatewayThread(config) as gateway:  # 3 s: a slow login on a loaded machine must not expire it
        _, headers, _ = login(gateway, "alice", "alice-pw")
        cookie = session_cookie(headers)
        assert echoed(gateway, "/members/", headers={"Cookie": cookie})["headers"]["remote-user"] == "alice"
        time.sleep(4.1)  # last seen is kept in whole seconds, rounded up: expired at most 4 s after
        status, headers, _ = request(gateway.url, "/members/", headers=HTML | {"Cookie": cookie})
        assert status == 302 and headers["location"].startswith("/_portico/login")
        assert "Max-Age=0" in headers["set-cookie"]


def test_directory_stopped_answers_503_and_never_lets_a_request_through(upstream, tmp_path):
    own = Slapd(tmp_path / "slapd").start()
    try:
        own.seed()
        with GatewayThread(ldap_config(own, tmp_path, upstream)) as gateway:
            assert request(gateway.url, "/members/", headers={"Authorization": basic("alice", "alice-pw")})[0] == 200
            own.stop()
            before = len(upstream.requests)
            status, _, body = login(gateway, "bob", "bob-pw")
            assert status == 503 and b"Request id" in body
            status, _, _ = request(gateway.url, "/members/", headers={"Authorization": basic("bob", "bob-pw")})
            assert status == 503
            status, _, _ = request(gateway.url, "/members/", headers={"Authorization": basic("bob", "wrong")})
            assert status == 503  # an outage is never reported as bad credentials
            assert len(upstream.requests) == before
            own.start_same_ports()
            assert request(gateway.url, "/members/", headers={"Authorization": basic("bob", "bob-pw")})[0] == 200
    finally:
        own.stop()


def file_backend_config(upstream: EchoUpstream, tmp_path: Path, auth_extra: str = "") -> str:
    """A gateway with the file backend and one user, erin (group members), who may see /members/."""
    users = UsersFile(tmp_path / "users.yaml", must_exist=False)
    users.add("erin", "erin-pw", groups=("members",), n=2**10)
    return f"""
listen: 127.0.0.1:0
grpc: {{listen: 127.0.0.1:0}}
telemetry: {{enabled: false, path: {tmp_path / 'data'}}}
routes: [{{match: {{host: "*", path_prefix: /}}, upstream: {upstream.url}}}]
auth: {{backend: file, users_file: {tmp_path / 'users.yaml'}{auth_extra}}}
access_control:
  rules: [{{path_prefixes: [/members/], groups: [members], policy: authenticated}}]
"""


def test_file_backend_through_the_gateway(upstream, tmp_path):
    config = file_backend_config(upstream, tmp_path, ", headers: {user: X-Portico-Who}")
    with GatewayThread(config) as gateway:
        data = echoed(gateway, "/members/", headers={"Authorization": basic("erin", "erin-pw")})
        assert data["headers"]["x-portico-who"] == "erin" and "remote-user" not in data["headers"]
        assert request(gateway.url, "/members/", headers={"Authorization": basic("erin", "x")})[0] == 401
    key = tmp_path / "data" / "session.key"
    assert key.stat().st_mode & 0o777 == 0o600


# (after the tests of the module's gateway: mitmproxy's `ctx.master` is process-wide, so a
# second gateway started in this process takes over the first one's hooks)
def test_configured_identity_header_names_from_anonymous_clients_are_stripped(upstream, tmp_path):
    config = file_backend_config(upstream, tmp_path, ", headers: {user: X-Portico-Who, groups: X-Portico-Roles}")
    config = config.replace("rules: [", "rules: [{path_prefixes: [/public/], policy: bypass}, ")
    with GatewayThread(config) as gateway:
        data = echoed(gateway, "/public/x", headers={"X-Portico-Who": "admin", "X_Portico_Roles": "admins"})
        assert not {"x-portico-who", "x_portico_roles", "x-portico-roles"} & set(data["headers"])
        data = echoed(gateway, "/members/", headers={"Authorization": basic("erin", "erin-pw"),
                                                     "X-Portico-Who": "admin", "X_Portico_Who": "admin"})
        assert data["headers"]["x-portico-who"] == "erin" and "x_portico_who" not in data["headers"]


def test_logout_revokes_the_token_itself_even_across_a_restart(upstream, tmp_path):
    """A copy of a logged-out session cookie (another tab, a stolen copy) is refused too, and
    stays refused after the gateway restarts; other sessions of the same user keep working."""
    config = file_backend_config(upstream, tmp_path)
    with GatewayThread(config) as gateway:
        old = session_cookie(login(gateway, "erin", "erin-pw")[1])
        other = session_cookie(login(gateway, "erin", "erin-pw")[1])
        assert echoed(gateway, "/members/", headers={"Cookie": old})["headers"]["remote-user"] == "erin"
        status, headers, _ = request(gateway.url, "/_portico/logout", headers={"Cookie": old})
        assert status == 303 and "Max-Age=0" in headers["set-cookie"]
        status, headers, _ = request(gateway.url, "/members/", headers={"Cookie": old} | HTML)
        assert status == 302 and "Max-Age=0" in headers["set-cookie"]
        assert echoed(gateway, "/members/", headers={"Cookie": other})["headers"]["remote-user"] == "erin"
    with GatewayThread(config) as gateway:
        assert request(gateway.url, "/members/", headers={"Cookie": old} | HTML)[0] == 302
        assert echoed(gateway, "/members/", headers={"Cookie": other})["headers"]["remote-user"] == "erin"


# --- identity events in the telemetry store ------------------------------------------------


def stored_events(gateway: GatewayThread, *types: str) -> list:
    from datetime import datetime, timedelta, timezone

    from telemetry.query import ListQuery

    store = gateway.gateway.store
    store.flush(10)
    now = datetime.now(timezone.utc)
    page = store.list_events(ListQuery(start=now - timedelta(hours=1), end=now + timedelta(hours=1),
                                       types=types, limit=1000))
    return page.events


def wait_for_events(gateway: GatewayThread, type_: str, count: int, timeout: float = 10) -> list:
    deadline = time.monotonic() + timeout
    while True:
        events = stored_events(gateway, type_)
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def test_login_and_account_events_reach_the_store(upstream, tmp_path):
    import ldap3

    from tests.auth.slapd import group_dn, user_dn

    own = Slapd(tmp_path / "slapd").start()
    try:
        own.seed()
        with own.admin() as c:
            c.add(group_dn("acme-members"), ["groupOfNames"], {"cn": "acme-members",
                                                                   "member": [user_dn("alice"), user_dn("star*(x)")]})
            c.add(group_dn("acme-admins"), ["groupOfNames"], {"cn": "acme-admins", "member": [user_dn("bob")]})
            c.add(group_dn("globex-members"), ["groupOfNames"], {"cn": "globex-members", "member": [user_dn("dave")]})
        config = ldap_config(own, tmp_path, upstream, session="""accounts:
    group_pattern: '^(?P<org>[a-z0-9]+)-(?P<role>admins|members)$'
    roles: {admins: admin, members: member}
    check_interval: 1s
""").replace("telemetry: {enabled: false, ", "telemetry: {sync: false, ").replace(
            "    response_timeout: 5\n", "    response_timeout: 5\n    auth_cache_ttl: 0\n    group_cache_ttl: 0.01\n")
        # no periodic check while alice is promoted: it could see her between the two group
        # changes (in neither group: left then joined); the restart below runs it every second
        with GatewayThread(config.replace("check_interval: 1s", "check_interval: 1h")) as gateway:
            assert login(gateway, "alice", "alice-pw")[0] == 303
            assert login(gateway, "alice", "wrong")[0] == 401
            assert login(gateway, "dave", "dave-pw")[0] == 303
            status, headers, _ = login(gateway, "bob", "bob-pw")
            cookie = session_cookie(headers)
            request(gateway.url, "/admin/", headers={"Authorization": ALICE})  # denied: admin-others
            request(gateway.url, "/_portico/logout", headers={"Cookie": cookie})

            joined = {(e.attrs["user"], e.attrs["org"], e.attrs["role"]) for e in stored_events(gateway, "user.joined")}
            assert joined == {("alice", "acme", "member"), ("bob", "acme", "admin"), ("dave", "globex", "member")}
            assert all(e.attrs["project"] == "default" for e in stored_events(gateway, "user.joined"))
            logins = [(e.attrs["user"], e.attrs["outcome"], e.attrs.get("reason")) for e in stored_events(gateway, "auth.login")]
            assert ("alice", "success", None) in logins and ("alice", "failure", "bad_password") in logins
            assert not any("alice-pw" in json.dumps(dict(e.attrs)) for e in stored_events(gateway))
            denied = stored_events(gateway, "access.denied")
            assert [(e.attrs["rule"], e.attrs["user"]) for e in denied] == [("admin-others", "alice")]
            assert [e.attrs["user"] for e in stored_events(gateway, "auth.logout")] == ["bob"]

            # alice is promoted: acme member -> admin, noticed at her next login
            with own.admin() as c:
                c.modify(group_dn("acme-members"), {"member": [(ldap3.MODIFY_DELETE, [user_dn("alice")])]})
                c.modify(group_dn("acme-admins"), {"member": [(ldap3.MODIFY_ADD, [user_dn("alice")])]})
            assert login(gateway, "alice", "alice-pw")[0] == 303
            changed = stored_events(gateway, "user.role_changed")
            assert [(e.attrs["user"], e.attrs["org"], e.attrs["previous_role"], e.attrs["role"])
                    for e in changed] == [("alice", "acme", "member", "admin")]
            assert len(stored_events(gateway, "user.joined")) == 3  # not joined again

            # dave disappears from the directory: the directory check reports it
            with own.admin() as c:
                c.delete(user_dn("dave"))
            auth_addon = gateway.gateway.master.addons.get("auth")
            gone = asyncio.run_coroutine_threadsafe(auth_addon.check_directory(), gateway.loop).result(30)
            assert gone == ["dave"]
            left = wait_for_events(gateway, "user.left", 1)
            assert [(e.attrs["user"], e.attrs["org"], e.attrs["reason"]) for e in left] == [
                ("dave", "globex", "directory")]
        # the "seen" state survives a restart: no second user.joined for alice
        with GatewayThread(config) as gateway:
            assert login(gateway, "alice", "alice-pw")[0] == 303
            joined = [e.attrs["user"] for e in stored_events(gateway, "user.joined")]
            assert joined.count("alice") == 1
            # bob disappears: the periodic check (every second here) reports it on its own
            with own.admin() as c:
                c.delete(user_dn("bob"))
            left = wait_for_events(gateway, "user.left", 2)
            assert sorted((e.attrs["user"], e.attrs["org"], e.attrs["reason"]) for e in left) == [
                ("bob", "acme", "directory"), ("dave", "globex", "directory")]
    finally:
        own.stop()


def test_demo_users_and_members_area(tmp_path):
    from proxy import demo

    config, module = demo.prepare(0, tmp_path / "demo", 0)
    try:
        with GatewayThread(config) as gateway:
            assert request(gateway.url, "/")[0] == 200
            assert request(gateway.url, "/members/", headers=HTML)[0] == 302
            (alice, alice_pw, _), (bob, bob_pw, _) = demo.DEMO_USERS
            _, headers, _ = login(gateway, alice, alice_pw, "/members/")
            status, _, body = request(gateway.url, "/members/", headers={"Cookie": session_cookie(headers)})
            assert status == 200 and b"Hello, alice" in body
            _, headers, _ = login(gateway, bob, bob_pw, "/members/")
            status, _, _ = request(gateway.url, "/members/", headers={"Cookie": session_cookie(headers)})
            assert status == 403
    finally:
        module.stop()
