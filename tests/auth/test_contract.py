"""auth stays a plain library, and its settings build from YAML through proxy.schema."""

from __future__ import annotations

import subprocess
import sys

import pytest

from auth.access import AccessControl
from auth.ldap import LdapSettings
from auth.sessions import SessionSettings
from auth.throttle import RegulationSettings
from proxy.schema import ConfigError, build


def test_auth_imports_no_proxy_addons_mitmproxy_or_grpc() -> None:
    code = ("import sys, auth.access, auth.cache, auth.errors, auth.identity, auth.ldap, "
            "auth.ldapfilters, auth.secretfile, auth.sessions, auth.throttle, auth.users\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('proxy', 'addons', 'mitmproxy', 'grpc', 'telemetry', 'proto'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_settings_build_from_yaml_mappings() -> None:
    ldap = build(LdapSettings, {"urls": ["ldaps://dc1.corp.example"], "base_dn": "dc=corp",
                                "preset": "activedirectory", "response_timeout": 3}, "auth.ldap")
    assert ldap.urls == ("ldaps://dc1.corp.example",) and ldap.response_timeout == 3.0
    control = build(AccessControl, {"rules": [{"domains": ["*.example.org"], "networks": ["10.0.0.0/8"],
                                               "policy": "bypass"}]}, "access_control")
    assert control.default_policy == "deny" and len(control.rules) == 1
    build(SessionSettings, {"key_file": "/etc/portico/session.keys"}, "auth.sessions")
    build(RegulationSettings, {"max_retries": 5}, "auth.regulation")


@pytest.mark.parametrize("cls, data, message", [
    (LdapSettings, {"urls": ["ldap://remote"], "base_dn": "dc=x"}, "auth.x.urls[0]: 'ldap://remote' would send"),
    (AccessControl, {"rules": [{"policy": "one_factor"}]}, "auth.x.rules[0].policy"),
    (AccessControl, {"rules": [{"policy": "deny", "paths": ["(["]}]}, "auth.x.rules[0].paths[0]"),
    (SessionSettings, {"key_env": "K", "inactivity_timeout": 0}, "auth.x.inactivity_timeout"),
    (RegulationSettings, {"find_time": -1}, "auth.x.find_time"),
])
def test_bad_values_become_config_errors_with_dotted_keys(cls: type, data: dict[str, object],
                                                          message: str) -> None:
    with pytest.raises(ConfigError) as e:
        build(cls, data, "auth.x")
    assert str(e.value).startswith(message)
