"""Access rules: first match wins, default deny, domains, paths, methods, networks, subjects."""

from __future__ import annotations

import pytest

from auth.access import (AccessControl, AccessRule, RequestInfo, Subject, decide, normalize_host,
                         normalize_path, unclear_path)
from auth.identity import Identity

CONTROL = AccessControl(default_policy="deny", rules=(
    AccessRule(id="health", domains=("*",), paths=(r"^/healthz$",), policy="bypass"),
    AccessRule(id="static", domains=("app.example.org",), path_prefixes=("/static/",), policy="bypass"),
    AccessRule(id="office-read", domains=("app.example.org",), networks=("10.0.0.0/8", "2001:db8::/32"),
               methods=("GET", "HEAD"), policy="bypass"),
    AccessRule(id="admin", domains=("admin.example.org",), groups=("admins",), policy="authenticated"),
    AccessRule(id="admin-bob", domains=("admin.example.org",), users=("bob",), policy="authenticated"),
    AccessRule(id="admin-others", domains=("admin.example.org",), policy="deny"),
    AccessRule(id="api-write-blocked", domain_regex=(r"api\d*\.example\.org",), methods=("DELETE",),
               policy="deny"),
    AccessRule(id="apps", domains=("*.example.org",), policy="authenticated"),
))

ALICE = Subject("alice", ("admins",))
CAROL = Subject("carol", ("dev",))
BOB = Subject("bob", ())


@pytest.mark.parametrize("host, path, method, ip, who, outcome, rule", [
    # bypass rules, first match wins
    ("app.example.org", "/healthz", "GET", None, None, "allow", "health"),
    ("other.test", "/healthz", "GET", None, None, "allow", "health"),
    ("other.test", "/healthz/x", "GET", None, None, "deny", "default"),
    ("app.example.org", "/static/app.css", "GET", None, None, "allow", "static"),
    # networks and methods together
    ("app.example.org", "/page", "GET", "10.1.2.3", None, "allow", "office-read"),
    ("app.example.org", "/page", "POST", "10.1.2.3", None, "login", "apps"),
    ("app.example.org", "/page", "GET", "192.0.2.1", None, "login", "apps"),
    ("app.example.org", "/page", "GET", "2001:db8::1", None, "allow", "office-read"),
    ("app.example.org", "/page", "GET", "::ffff:10.0.0.9", None, "allow", "office-read"),
    ("app.example.org", "/page", "GET", "not-an-ip", None, "login", "apps"),
    # subjects: group requirement and named users, then deny for the rest
    ("admin.example.org", "/", "GET", None, ALICE, "allow", "admin"),
    ("admin.example.org", "/", "GET", None, BOB, "allow", "admin-bob"),
    ("admin.example.org", "/", "GET", None, CAROL, "deny", "admin-others"),
    ("admin.example.org", "/", "GET", None, None, "login", "admin"),
    # regex domains
    ("api2.example.org", "/x", "DELETE", None, ALICE, "deny", "api-write-blocked"),
    ("api2.example.org", "/x", "GET", None, ALICE, "allow", "apps"),
    ("apiX.example.org", "/x", "DELETE", None, ALICE, "allow", "apps"),
    # wildcard: subdomains at any depth, not the apex
    ("a.b.example.org", "/", "GET", None, CAROL, "allow", "apps"),
    ("example.org", "/", "GET", None, CAROL, "deny", "default"),
    ("evilexample.org", "/", "GET", None, CAROL, "deny", "default"),
    # host normalisation
    ("APP.Example.ORG.:443", "/static/x", "GET", None, None, "allow", "static"),
    # default deny
    ("unknown.test", "/", "GET", None, ALICE, "deny", "default"),
])
def test_rule_table(host: str, path: str, method: str, ip: str | None, who: Subject | None,
                    outcome: str, rule: str) -> None:
    d = decide(RequestInfo(host, path, method, ip), who, CONTROL)
    assert (d.outcome, d.rule) == (outcome, rule), d.reason


@pytest.mark.parametrize("path", ["/static/../admin", "/static/%2e%2e/admin", "/static%2F..%2Fadmin",
                                  "/static/./../admin"])
def test_dot_segments_cannot_ride_a_bypass_prefix(path: str) -> None:
    d = decide(RequestInfo("app.example.org", path), None, CONTROL)
    assert d.rule != "static" and d.outcome == "login"


def test_encoded_path_still_hits_its_rule() -> None:
    control = AccessControl(rules=(AccessRule(paths=(r"^/admin",), policy="deny"),), default_policy="bypass")
    for path in ("/admin", "/%61dmin", "//admin", "/x/../admin", "/admin?x=1"):
        assert decide(RequestInfo("h", path), None, control).outcome == "deny", path


def test_query_is_not_part_of_path_matching() -> None:
    control = AccessControl(rules=(AccessRule(paths=(r"^/public$",), policy="bypass"),))
    assert decide(RequestInfo("h", "/public?next=/admin"), None, control).outcome == "allow"
    assert decide(RequestInfo("h", "/publicity"), None, control).outcome == "deny"


def test_default_policy_applies_when_nothing_matches() -> None:
    for policy, anon, known in (("deny", "deny", "deny"), ("authenticated", "login", "allow"),
                                ("bypass", "allow", "allow")):
        control = AccessControl(default_policy=policy)  # type: ignore[arg-type]
        assert decide(RequestInfo("h"), None, control).outcome == anon
        assert decide(RequestInfo("h"), ALICE, control).outcome == known


def test_identity_works_as_subject_and_trace_explains() -> None:
    ident = Identity("carol", ("dev",))
    d = decide(RequestInfo("admin.example.org", "/"), ident, CONTROL)
    assert d.outcome == "deny" and d.rule == "admin-others"
    assert any(line.startswith("health:") for line in d.trace)
    assert any("'carol' is not in users" in line for line in d.trace)


def test_rules_without_id_are_named_by_position() -> None:
    control = AccessControl(rules=(AccessRule(domains=("a",), policy="bypass"),
                                   AccessRule(policy="deny")))
    assert decide(RequestInfo("b"), None, control).rule == "rules[1]"


@pytest.mark.parametrize("kw, message", [
    ({"policy": "one_factor"}, "policy: expected one of"),
    ({"policy": "deny", "paths": ("([",)}, r"paths\[0\]: invalid regular expression"),
    ({"policy": "deny", "domain_regex": ("*",)}, r"domain_regex\[0\]"),
    ({"policy": "deny", "domains": ("ex ample.org",)}, r"domains\[0\]"),
    ({"policy": "deny", "domains": ("*.*.org",)}, r"domains\[0\]"),
    ({"policy": "deny", "methods": ("FETCH",)}, r"methods\[0\]"),
    ({"policy": "deny", "networks": ("10.0.0.0/33",)}, r"networks\[0\]"),
    ({"policy": "deny", "path_prefixes": ("static",)}, r"path_prefixes\[0\]"),
    ({"policy": "bypass", "groups": ("admins",)}, "cannot have users/groups"),
])
def test_bad_rules_name_the_field(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AccessRule(**kw)  # type: ignore[arg-type]


def test_duplicate_rule_ids_and_bad_default_are_refused() -> None:
    with pytest.raises(ValueError, match=r"rules\[1\].id"):
        AccessControl(rules=(AccessRule(id="a", policy="deny"), AccessRule(id="a", policy="deny")))
    with pytest.raises(ValueError, match="default_policy"):
        AccessControl(default_policy="allow")  # type: ignore[arg-type]


@pytest.mark.parametrize("raw, host", [("Example.ORG", "example.org"), ("a.b:8080", "a.b"),
                                       ("x.org.", "x.org"), ("[::1]:443", "[::1]")])
def test_normalize_host(raw: str, host: str) -> None:
    assert normalize_host(raw) == host


@pytest.mark.parametrize("raw, path", [
    ("/", "/"), ("", "/"), ("/a/b/", "/a/b/"), ("/a/./b/../c", "/a/c"), ("/../../etc", "/etc"),
    ("/a%20b", "/a%20b"), ("/%7Euser", "/~user"), ("/a?b#c", "/a"), ("/a/..", "/"),
])
def test_normalize_path(raw: str, path: str) -> None:
    assert normalize_path(raw) == path


CONFUSING = AccessControl(default_policy="bypass", rules=(
    AccessRule(id="admin", path_prefixes=("/admin/",), policy="deny"),
    AccessRule(id="docs", path_prefixes=("/Docs/",), policy="deny"),
))


@pytest.mark.parametrize("path, reading", [
    ("/admin/secret", "RFC 3986"),
    ("/admin", "the prefix without its slash"),
    ("/admin;x=1/secret", "Tomcat, Jetty, Spring drop ;params"),
    ("/admin;/secret", "Tomcat"),
    ("/public/..;/admin/secret", "Tomcat: ..; is a dot segment"),
    ("/ADMIN/secret", "IIS, Express: case ignored"),
    ("/admin./secret", "IIS trims trailing dots"),
    ("/admin/..%2Fsecret", "Express, Flask: %2F is not a separator, so this is under /admin/"),
    ("/public/x/..%2F..%2Fadmin/secret", "nginx: %2F decoded, then dot segments resolved"),
    ("/admin/../public/x", "Express: dot segments not resolved"),
    ("/docs/guide", "a rule written in capitals, read ignoring case"),
])
def test_every_upstreams_reading_of_a_path_is_judged_and_the_strictest_wins(path: str, reading: str) -> None:
    decision = decide(RequestInfo(host="a.example.org", path=path, method="GET"), None, CONFUSING)
    assert decision.outcome == "deny", (reading, decision)


LOWER_CASE_RULES = AccessControl(default_policy="bypass", rules=(
    AccessRule(id="admin", path_prefixes=("/admin/",), policy="deny"),
    AccessRule(id="exact", paths=("^/exact$",), policy="deny"),
))


@pytest.mark.parametrize("path", [
    "/admin./secret", "/admin%2e%2E/secret", "/admin%20/secret", "/ADMIN/secret",   # IIS trims, folds case
    "/exact/", "/exact/.", "/exact//", "/EXACT/",                                    # Express, Spring: /exact
])
def test_readings_apply_when_no_rule_path_has_capitals(path: str) -> None:
    decision = decide(RequestInfo(host="a.example.org", path=path, method="GET"), None, LOWER_CASE_RULES)
    assert decision.outcome == "deny", decision


@pytest.mark.parametrize("path", ["/public/x", "/administrator", "/admins/x", "/public/a%2Fb", "/Public/X"])
def test_paths_no_reading_puts_under_a_rule_stay_allowed(path: str) -> None:
    assert decide(RequestInfo(host="a.example.org", path=path, method="GET"), None, CONFUSING).outcome == "allow"


@pytest.mark.parametrize("path, unclear", [
    ("/admin\\secret", True), ("/a%5Cb", True), ("/a%5cb", True), ("/a%00b", True), ("/a%09b", True),
    ("/a%7Fb", True), ("/a\x01b", True), ("/api/v4/projects/group%2Fproject", False), ("/a%20b", False),
    ("/x?q=a\\b", False), ("/public/x#/../../admin/x", True), ("/%u0061dmin/s", True),
    ("/public/%c0%ae%c0%ae/admin", True), ("/100%/x", True), ("/a;jsessionid=AB12", False), ("/v1.2/x", False),
])
def test_backslashes_and_control_characters_make_a_path_unclear(path: str, unclear: bool) -> None:
    assert (unclear_path(path) is not None) is unclear
