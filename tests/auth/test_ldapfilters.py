"""Pure filter/DN helpers, and the Active Directory preset (no AD here: its filters are
checked as built strings)."""

from __future__ import annotations

import pytest

from auth import ldapfilters as lf
from auth.ldap import LdapSettings, resolve_settings


@pytest.mark.parametrize("value, escaped", [
    ("alice", "alice"),
    ("*", r"\2a"),
    ("*)(uid=*", r"\2a\29\28uid=\2a"),
    ("a\\b", r"a\5cb"),
    ("nul\x00", r"nul\00"),
    ("Zoë", "Zoë"),
])
def test_filter_values_are_escaped_per_rfc4515(value: str, escaped: str) -> None:
    assert lf.escape_filter_value(value) == escaped


def test_fill_filter_is_single_pass_so_placeholders_in_values_stay_literal() -> None:
    out = lf.fill_filter("(&(uid={username})(member={dn}))", username="{dn}", dn="cn=x*,o=y")
    assert out == r"(&(uid={dn})(member=cn=x\2a,o=y))"


def test_fill_filter_names_a_missing_placeholder() -> None:
    with pytest.raises(ValueError, match="dn"):
        lf.fill_filter("(member={dn})", username="a")


@pytest.mark.parametrize("value, escaped", [
    ("Smith, John", r"Smith\, John"),
    ("a+b", r"a\+b"),
    (' "q" ', r'\ \"q\"\ '),
    ("#tag", r"\#tag"),
    ("x=y;z<w>", r"x\=y\;z\<w\>"),
    ("back\\slash", r"back\\slash"),
    ("nul\x00", r"nul\00"),
    ("plain", "plain"),
])
def test_dn_values_are_escaped_per_rfc4514(value: str, escaped: str) -> None:
    assert lf.escape_dn_value(value) == escaped
    assert lf.unescape_dn_value(escaped) == value


def test_rdn_value_unescapes_hex_pairs_and_specials() -> None:
    assert lf.rdn_value(r"cn=Smith\2C John\+x,ou=groups,dc=example,dc=org") == "Smith, John+x"
    assert lf.rdn_value(r"cn=caf\C3\A9,dc=x") == "café"


def test_ad_preset_filters() -> None:
    r = resolve_settings(LdapSettings(urls=("ldaps://dc1.corp.example",), base_dn="dc=corp,dc=example",
                                      preset="activedirectory"))
    assert lf.fill_filter(r.user_filter, username="jdoe@corp.example") == (
        "(&(objectCategory=person)(objectClass=user)"
        "(|(sAMAccountName=jdoe@corp.example)(userPrincipalName=jdoe@corp.example)))")
    assert lf.fill_filter(r.group_filter, dn="CN=J\\, Doe,OU=Users,DC=corp,DC=example") == (
        r"(&(objectClass=group)(member:1.2.840.113556.1.4.1941:=CN=J\5c, Doe,OU=Users,DC=corp,DC=example))")
    assert r.group_filter_nested_server_side
    assert r.disabled_filter == "(userAccountControl:1.2.840.113556.1.4.803:=2)"
    assert r.username_attribute == "sAMAccountName"
    assert "userAccountControl" in r.attributes and "displayName" in r.attributes


def test_ad_preset_without_nesting_uses_plain_member() -> None:
    r = resolve_settings(LdapSettings(urls=("ldaps://dc1",), base_dn="dc=c", preset="activedirectory",
                                      nested_groups=False))
    assert r.group_filter == "(&(objectClass=group)(member={dn}))"
    assert not r.group_filter_nested_server_side


def test_ad_injection_in_upn_is_escaped() -> None:
    r = resolve_settings(LdapSettings(urls=("ldaps://dc1",), base_dn="dc=c", preset="activedirectory"))
    out = lf.fill_filter(r.user_filter, username="*)(sAMAccountName=admin")
    assert "(sAMAccountName=admin" not in out and r"\2a\29\28sAMAccountName=admin" in out


def test_overrides_win_over_the_preset() -> None:
    r = resolve_settings(LdapSettings(urls=("ldaps://dc1",), base_dn="dc=c", preset="activedirectory",
                                      user_filter="(&(objectClass=user)(mail={username}))",
                                      disabled_filter="", users_base_dn="ou=staff,dc=c"))
    assert r.user_filter == "(&(objectClass=user)(mail={username}))"
    assert r.disabled_filter == "" and r.users_base_dn == "ou=staff,dc=c"
    assert r.groups_base_dn == "dc=c"


@pytest.mark.parametrize("uac, disabled", [
    (512, False), (514, True), ("66050", True), ("66048", False), ([2], True), ([], False), ("x", False),
])
def test_user_account_control_disable_bit(uac: object, disabled: bool) -> None:
    assert lf.uac_disabled(uac) is disabled


@pytest.mark.parametrize("message, reason", [
    ("80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext error, data 52e, v3839",
     "bad_password"),
    ("80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext error, data 533, v4563",
     "disabled"),
    ("... data 775, v4563", "locked"),
    ("... data 532, v4563", "password_expired"),
    ("", "bad_password"),
])
def test_ad_bind_error_reasons(message: str, reason: str) -> None:
    assert lf.ad_bind_reason(message) == reason
