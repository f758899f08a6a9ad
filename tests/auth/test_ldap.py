"""LdapDirectory against a real slapd: logins, escaping, outages, failover, TLS, caches."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest

from auth.errors import AccountDisabled, DirectoryUnavailable, InvalidCredentials
from auth.ldap import LdapDirectory, LdapSettings
from tests.auth.ldapkit import LoopbackServer, hold, settings
from tests.auth.slapd import (GROUPS, SERVICE_DN, SERVICE_PW, SUFFIX, Slapd, group_dn,
                              make_ca, user_dn)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def directory(slapd: Slapd, service_pw_env: str) -> Iterator[LdapDirectory]:
    d = LdapDirectory(settings(slapd.ldap_url, service_pw_env))
    yield d
    d.close()


@pytest.fixture
def closed_url(refused_port: int) -> str:
    """An LDAP URL whose port refuses connections (see tests/conftest.py for why it is held)."""
    return f"ldap://127.0.0.1:{refused_port}"


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a hung directory)."""
    server = LoopbackServer(hold)
    yield server.url
    server.close()


# --- logins ---------------------------------------------------------------------------------

def test_good_login_returns_identity_with_nested_groups(directory: LdapDirectory) -> None:
    ident = directory.authenticate("alice", "alice-pw")
    assert ident.username == "alice"
    assert ident.dn == user_dn("alice")
    assert ident.display_name == "Alice Liddell"
    assert ident.email == "alice@example.org"
    # developers directly, staff through developers (nested)
    assert ident.groups == ("developers", "staff")


def test_login_name_is_canonicalised_from_the_directory(directory: LdapDirectory) -> None:
    assert directory.authenticate("ALICE", "alice-pw").username == "alice"


def test_wrong_password_and_unknown_user_raise_the_same_exception_type(directory: LdapDirectory) -> None:
    with pytest.raises(InvalidCredentials) as wrong:
        directory.authenticate("alice", "not-her-password")
    with pytest.raises(InvalidCredentials) as unknown:
        directory.authenticate("mallory", "whatever")
    assert type(wrong.value) is type(unknown.value) is InvalidCredentials
    assert (wrong.value.reason, unknown.value.reason) == ("bad_password", "unknown_user")
    assert "not-her-password" not in str(wrong.value)


def test_empty_password_is_refused_without_contacting_the_directory(closed_url: str,
                                                                    service_pw_env: str) -> None:
    # nothing listens at this URL: reaching the network would raise DirectoryUnavailable
    d = LdapDirectory(settings(closed_url, service_pw_env))
    with pytest.raises(InvalidCredentials) as e:
        d.authenticate("alice", "")
    assert e.value.reason == "empty_password"


@pytest.mark.parametrize("username", [
    "*", "*)(uid=*", "alice)(|(uid=*", "al*", "*)(objectClass=*", "alice)(uid=bob",
    "alice\x00", "alice\\2a", "(uid=alice)", "star*",
])
def test_ldap_injection_attempts_do_not_log_in(directory: LdapDirectory, username: str) -> None:
    for password in ("alice-pw", "bob-pw", "star-pw"):
        with pytest.raises(InvalidCredentials):
            directory.authenticate(username, password)


def test_filter_metacharacters_in_a_real_uid_are_matched_literally(directory: LdapDirectory) -> None:
    assert directory.authenticate("star*(x)", "star-pw").dn == user_dn("star*(x)")


def test_more_than_one_matching_entry_is_refused(slapd: Slapd, service_pw_env: str) -> None:
    d = LdapDirectory(settings(slapd.ldap_url, service_pw_env,
                               user_filter="(&(objectClass=person)(|(uid={username})(mail={username})))"))
    assert d.authenticate("alice@example.org", "alice-pw").username == "alice"
    with pytest.raises(InvalidCredentials) as e:
        d.authenticate("shared@example.org", "dave-pw")  # right password of one of the two
    assert e.value.reason == "ambiguous_user"


def test_disabled_filter_refuses_disabled_account_with_right_password(slapd: Slapd,
                                                                       service_pw_env: str) -> None:
    plain = LdapDirectory(settings(slapd.ldap_url, service_pw_env))
    assert plain.authenticate("carol", "carol-pw").username == "carol"
    guarded = LdapDirectory(settings(slapd.ldap_url, service_pw_env,
                                     disabled_filter="(employeeType=disabled)"))
    with pytest.raises(AccountDisabled):
        guarded.authenticate("carol", "carol-pw")
    assert guarded.authenticate("alice", "alice-pw").username == "alice"
    assert guarded.lookup("carol") is None


def test_memberof_mode_reads_groups_from_the_user_entry(slapd: Slapd, service_pw_env: str) -> None:
    d = LdapDirectory(settings(slapd.ldap_url, service_pw_env, group_search_mode="memberof"))
    assert d.authenticate("alice", "alice-pw").groups == ("developers",)  # overlay: no nesting
    assert d.authenticate("dave", "dave-pw").groups == ("staff",)


def test_nesting_can_be_turned_off(slapd: Slapd, service_pw_env: str) -> None:
    d = LdapDirectory(settings(slapd.ldap_url, service_pw_env, nested_groups=False))
    assert d.authenticate("alice", "alice-pw").groups == ("developers",)


def test_lookup_without_password(directory: LdapDirectory) -> None:
    ident = directory.lookup("bob")
    assert ident is not None and ident.groups == ("admins",)
    assert directory.lookup("nobody") is None
    assert directory.lookup("*") is None


def test_password_is_not_kept_on_connections_caches_or_logs(
        slapd: Slapd, service_pw_env: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    d = LdapDirectory(settings(slapd.ldap_url, service_pw_env))
    d.authenticate("alice", "alice-pw")
    with pytest.raises(InvalidCredentials):
        d.authenticate("alice", "Wrong-Secret-123")
    for pool in (d._service_pool, d._bind_pool):  # noqa: SLF001
        for conn in list(pool._idle.queue):  # noqa: SLF001
            assert conn.password is None
    dump = repr(d.credentials._entries) + repr(d.groups._entries)  # noqa: SLF001
    assert "alice-pw" not in dump
    assert "Wrong-Secret-123" not in caplog.text and "alice-pw" not in caplog.text


# --- outages, timeouts, failover, reconnect -------------------------------------------------

def test_directory_down_is_unavailable_not_bad_credentials(closed_url: str,
                                                           service_pw_env: str) -> None:
    d = LdapDirectory(settings(closed_url, service_pw_env))
    with pytest.raises(DirectoryUnavailable) as e:
        d.authenticate("alice", "alice-pw")
    assert not isinstance(e.value, InvalidCredentials)
    assert "127.0.0.1" in str(e.value)


def test_directory_stopped_mid_run_fails_closed(own_slapd: Slapd, service_pw_env: str) -> None:
    d = LdapDirectory(settings(own_slapd.ldap_url, service_pw_env))
    assert d.authenticate("alice", "alice-pw").username == "alice"
    own_slapd.stop()
    for user, password in (("bob", "bob-pw"), ("alice", "wrong"), ("mallory", "x")):
        with pytest.raises(DirectoryUnavailable):
            d.authenticate(user, password)


def test_hung_directory_honours_the_response_timeout(blackhole: str, service_pw_env: str) -> None:
    d = LdapDirectory(settings(blackhole, service_pw_env, response_timeout=1.0))
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable):
        d.authenticate("alice", "alice-pw")
    assert time.monotonic() - started < 5


def test_urls_are_tried_in_order_until_one_answers(closed_url: str, slapd: Slapd, service_pw_env: str) -> None:
    hung = LoopbackServer(hold)  # accepts and never answers
    try:
        d = LdapDirectory(settings([closed_url, hung.url, slapd.ldap_url], service_pw_env, response_timeout=3.0))
        assert d.authenticate("bob", "bob-pw").username == "bob"
        tried = len(hung._conns)  # noqa: SLF001 - the connections it accepted
        assert tried >= 1
        # the failed URLs are now tried last: the next connection goes to slapd, not to the
        # hung server first (which would also cost the 3 s response timeout)
        d._service_pool.close()  # noqa: SLF001 - force a new connection
        assert d.lookup("alice") is not None
        assert len(hung._conns) == tried  # noqa: SLF001
    finally:
        hung.close()


def test_pool_reconnects_after_directory_restart(own_slapd: Slapd, service_pw_env: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "portico.auth.ldap")
    d = LdapDirectory(settings(own_slapd.ldap_url, service_pw_env))
    assert d.authenticate("alice", "alice-pw").username == "alice"
    own_slapd.restart()
    # pooled connections are dead now; the next call must reconnect transparently
    assert d.authenticate("bob", "bob-pw").username == "bob"
    assert d.lookup("alice") is not None
    assert "reconnecting" in caplog.text  # a pooled connection really was found dead


def test_wrong_service_account_password_is_unavailable_and_names_the_dn(
        slapd: Slapd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAD_PW", "definitely-wrong")
    d = LdapDirectory(settings(slapd.ldap_url, "BAD_PW"))
    with pytest.raises(DirectoryUnavailable) as e:
        d.authenticate("alice", "alice-pw")
    assert SERVICE_DN in str(e.value) and "definitely-wrong" not in str(e.value)


def test_health_check(closed_url: str, slapd: Slapd, service_pw_env: str) -> None:
    LdapDirectory(settings(slapd.ldap_url, service_pw_env)).check()
    with pytest.raises(DirectoryUnavailable):
        LdapDirectory(settings(closed_url, service_pw_env)).check()


def test_service_password_from_file(slapd: Slapd, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SERVICE_PW + "\n")
    d = LdapDirectory(LdapSettings(urls=(slapd.ldap_url,), base_dn=SUFFIX, bind_dn=SERVICE_DN,
                                   password_file=str(pw)))
    assert d.authenticate("bob", "bob-pw").username == "bob"


# --- TLS ------------------------------------------------------------------------------------

def test_ldaps_with_the_right_ca(slapd: Slapd, service_pw_env: str) -> None:
    d = LdapDirectory(settings(slapd.ldaps_url, service_pw_env, ca_file=str(slapd.ca.ca_file)))
    assert d.authenticate("bob", "bob-pw").username == "bob"


def test_starttls_with_the_right_ca(slapd: Slapd, service_pw_env: str) -> None:
    d = LdapDirectory(settings(slapd.ldap_url, service_pw_env, start_tls=True,
                               ca_file=str(slapd.ca.ca_file)))
    assert d.authenticate("bob", "bob-pw").username == "bob"
    conn = d._bind_pool._idle.queue[0]  # noqa: SLF001
    assert conn.tls_started


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_wrong_ca_is_refused(slapd: Slapd, service_pw_env: str, tmp_path: Path, mode: str) -> None:
    other = make_ca(tmp_path / "other", "other")
    url, kw = (slapd.ldaps_url, {}) if mode == "ldaps" else (slapd.ldap_url, {"start_tls": True})
    d = LdapDirectory(settings(url, service_pw_env, ca_file=str(other.ca_file), **kw))
    with pytest.raises(DirectoryUnavailable) as e:
        d.authenticate("bob", "bob-pw")
    assert "certificate" in str(e.value).lower()


def test_system_trust_store_does_not_accept_a_private_ca(slapd: Slapd, service_pw_env: str) -> None:
    with pytest.raises(DirectoryUnavailable):
        LdapDirectory(settings(slapd.ldaps_url, service_pw_env)).authenticate("bob", "bob-pw")


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_certificate_for_another_name_is_refused(tmp_path: Path, service_pw_env: str, mode: str) -> None:
    server = Slapd(tmp_path / "misnamed", server_names=("ldap.elsewhere.test",), server_ips=()).start()
    try:
        server.seed()
        url, kw = (server.ldaps_url, {}) if mode == "ldaps" else (server.ldap_url, {"start_tls": True})
        d = LdapDirectory(settings(url, service_pw_env, ca_file=str(server.ca.ca_file), **kw))
        with pytest.raises(DirectoryUnavailable) as e:
            d.authenticate("bob", "bob-pw")
        assert "ldap.elsewhere.test" in str(e.value)  # the name check, not the chain, failed
    finally:
        server.stop()


# --- caches ---------------------------------------------------------------------------------

def test_successful_login_is_cached_for_the_ttl_only(own_slapd: Slapd, service_pw_env: str) -> None:
    clock = FakeClock()
    d = LdapDirectory(settings(own_slapd.ldap_url, service_pw_env, auth_cache_ttl=60,
                               group_cache_ttl=600), clock=clock)
    d.authenticate("alice", "alice-pw")
    with own_slapd.admin() as admin:
        admin.modify(user_dn("alice"), {"userPassword": [(ldap3.MODIFY_REPLACE, ["new-pw"])]})
    clock.now += 30
    assert d.authenticate("alice", "alice-pw").username == "alice"  # cached: no bind
    with pytest.raises(InvalidCredentials):
        d.authenticate("alice", "wrong")  # a different password is never a cache hit
    clock.now += 31
    with pytest.raises(InvalidCredentials):
        d.authenticate("alice", "alice-pw")  # TTL over: the directory says no
    assert d.authenticate("alice", "new-pw").username == "alice"


def test_group_changes_are_seen_after_the_group_ttl(own_slapd: Slapd, service_pw_env: str) -> None:
    clock = FakeClock()
    d = LdapDirectory(settings(own_slapd.ldap_url, service_pw_env, auth_cache_ttl=3600,
                               group_cache_ttl=300), clock=clock)
    assert d.authenticate("bob", "bob-pw").groups == ("admins",)
    with own_slapd.admin() as admin:
        admin.modify(group_dn("developers"), {"member": [(ldap3.MODIFY_ADD, [user_dn("bob")])]})
    clock.now += 100
    assert d.authenticate("bob", "bob-pw").groups == ("admins",)  # still cached
    clock.now += 201
    assert d.authenticate("bob", "bob-pw").groups == ("admins", "developers", "staff")


def test_refresh_groups_reports_changes_and_departures(own_slapd: Slapd, service_pw_env: str) -> None:
    clock = FakeClock()
    d = LdapDirectory(settings(own_slapd.ldap_url, service_pw_env, auth_cache_ttl=3600,
                               group_cache_ttl=300), clock=clock)
    d.authenticate("bob", "bob-pw")
    d.authenticate("dave", "dave-pw")
    d.authenticate("alice", "alice-pw")
    with own_slapd.admin() as admin:
        admin.modify(group_dn("admins"), {"member": [(ldap3.MODIFY_ADD, [user_dn("alice")])]})
        admin.modify(group_dn("staff"), {"member": [(ldap3.MODIFY_DELETE, [user_dn("dave")])]})
        admin.delete(user_dn("dave"))
    assert d.refresh_groups().refreshed == 0  # nothing is old enough yet
    clock.now += 151
    report = d.refresh_groups()
    assert report.gone == ("dave",)
    assert report.changed == ("alice",)
    assert report.refreshed == 2 and report.failed == 0
    # refreshed groups are served from the cache; the departed user's cached login is gone
    assert d.authenticate("alice", "alice-pw").groups == ("admins", "developers", "staff")
    with pytest.raises(InvalidCredentials):
        d.authenticate("dave", "dave-pw")


def test_refresh_during_outage_counts_failures_and_logins_fail_closed_later(
        own_slapd: Slapd, service_pw_env: str) -> None:
    clock = FakeClock()
    d = LdapDirectory(settings(own_slapd.ldap_url, service_pw_env, auth_cache_ttl=3600,
                               group_cache_ttl=300), clock=clock)
    d.authenticate("bob", "bob-pw")
    own_slapd.stop()
    clock.now += 200
    assert d.refresh_groups().failed == 1
    assert d.authenticate("bob", "bob-pw").username == "bob"  # groups still fresh (< TTL)
    clock.now += 200
    with pytest.raises(DirectoryUnavailable):
        d.authenticate("bob", "bob-pw")  # groups expired and cannot be fetched: 503


def test_group_search_base_is_respected(slapd: Slapd, service_pw_env: str) -> None:
    d = LdapDirectory(settings(slapd.ldap_url, service_pw_env, groups_base_dn=f"ou=people,{SUFFIX}"))
    assert d.authenticate("alice", "alice-pw").groups == ()
    d2 = LdapDirectory(settings(slapd.ldap_url, service_pw_env, groups_base_dn=GROUPS))
    assert d2.authenticate("alice", "alice-pw").groups == ("developers", "staff")


# --- settings -------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"urls": ()}, "urls"),
    ({"urls": ("http://x",)}, "urls[0]"),
    ({"urls": ("ldap://ldap.example.org",)}, "clear text"),
    ({"bind_dn": "cn=x", "password_env": None}, "password_file or password_env"),
    ({"user_filter": "(uid=alice)"}, "{username}"),
    ({"user_filter": "(&(uid={username})"}, "unbalanced"),
    ({"group_filter": "member=x"}, "parentheses"),
    ({"response_timeout": 0}, "response_timeout"),
    ({"pool_size": 0}, "pool_size"),
    ({"preset": "novell"}, "preset"),
])
def test_bad_settings_are_refused_with_the_field_named(kw: dict[str, object], message: str) -> None:
    base: dict[str, object] = dict(urls=("ldap://127.0.0.1:389",), base_dn=SUFFIX)
    base.update(kw)
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}").replace("[", r"\[")):
        LdapSettings(**base)  # type: ignore[arg-type]


def test_plain_ldap_to_a_remote_host_is_allowed_with_start_tls_or_explicit_opt_in() -> None:
    LdapSettings(urls=("ldap://ldap.example.org",), base_dn=SUFFIX, start_tls=True)
    LdapSettings(urls=("ldap://ldap.example.org",), base_dn=SUFFIX, allow_plaintext=True)
