"""The `auth:` and `access_control:` sections: bad values name the key, the value and what is allowed."""

from __future__ import annotations

import pytest

from proxy.config import parse_config
from proxy.schema import ConfigError


@pytest.mark.parametrize(("text", "message"), [
    ("auth: {backend: ldap}", "auth.ldap: required with backend 'ldap'"),
    ("auth: {backend: file}", "auth.users_file: required with backend 'file'"),
    ("auth: {backend: kerberos}", "auth.backend: expected one of 'ldap', 'file', got 'kerberos'"),
    ("auth: {backend: ldap, ldap: {urls: ['ldap://dir.example.org'], base_dn: 'dc=x'}}",
     "auth.ldap.urls[0]: 'ldap://dir.example.org' would send passwords in clear text"),
    ("auth: {backend: file, users_file: u.yaml, session: {secret_file: a, secret_env: B}}",
     "auth.session.secret_file, secret_env: set one of them"),
    ("auth: {backend: file, users_file: u.yaml, session: {inactivity_timeout: 1m, refresh_after: 2m}}",
     "auth.session.refresh_after: expected less than inactivity_timeout"),
    ("auth: {backend: file, users_file: u.yaml, headers: {user: 'Remote User'}}",
     "auth.headers.user: expected an HTTP header name"),
    ("auth: {backend: file, users_file: u.yaml, accounts: {group_pattern: '^(?P<x>.*)$'}}",
     "auth.accounts.group_pattern: '^(?P<x>.*)$' needs a named group"),
    ("auth: {backend: file, users_file: u.yaml, regulation: {ban_time: forever}}",
     "auth.regulation.ban_time: expected a duration"),
    ("access_control: {default_policy: allow}", "access_control.default_policy: expected one of"),
    ("access_control: {rules: [{policy: bypass, networks: [10.0.0.0/33]}]}",
     "access_control.rules[0].networks[0]: expected a CIDR"),
    ("access_control: {rules: [{policy: deny, methods: [FETCH]}]}", "access_control.rules[0].methods[0]"),
    ("access_control: {rules: [{policy: bypass, groups: [admins]}]}", "'bypass' cannot have users/groups"),
    ("access_control: {rules: [{policy: deny, paths: ['[']}]}", "access_control.rules[0].paths[0]: invalid regular"),
    ("access_control: {rules: [{policy: deny, domain: [x]}]}", "did you mean 'domains'?"),
    ("access_control: {rules: [{id: a, policy: deny}, {id: a, policy: bypass}]}", "rules[1].id: 'a' is used"),
])
def test_bad_auth_config_is_reported_with_key_and_value(text, message):
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert message in str(e.value)


def test_good_sections_parse():
    config = parse_config("""
auth:
  backend: ldap
  ldap: {urls: ['ldaps://dir.example.org'], base_dn: 'dc=example,dc=org', preset: activedirectory}
  session: {secret_env: PORTICO_SESSION_KEYS, absolute_lifetime: 8h}
  accounts: {group_pattern: '^(?P<org>[a-z]+)-(?P<role>admins|members)$', groups: {web: {org: acme, project: site}}}
access_control:
  rules: [{domains: ['*.example.org'], networks: [10.0.0.0/8], methods: [get], policy: authenticated}]
""")
    assert config.auth.ldap.preset == "activedirectory"
    assert config.auth.session.absolute_lifetime.total_seconds() == 8 * 3600
    assert config.access_control.default_policy == "deny"
    assert config.access_control.rules[0].methods == ("GET",)
    assert parse_config("listen: 127.0.0.1:0").auth is None
