"""The `dashboard:` configuration section."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError, parse_config


def test_defaults():
    d = parse_config("{}\n").dashboard
    assert (d.enabled, d.admin_groups, d.default_tz, d.default_range, d.max_csv_rows) == \
        (True, ("admins",), "UTC", "-7d", 100_000)


def test_values():
    d = parse_config("dashboard: {admin_groups: [ops, analysts], default_tz: Asia/Kathmandu, "
                     "default_range: -24h, max_csv_rows: 5000}\n").dashboard
    assert d.admin_groups == ("ops", "analysts") and d.default_tz == "Asia/Kathmandu"
    assert d.default_range == "-24h" and d.max_csv_rows == 5000


@pytest.mark.parametrize(("text", "message"), [
    ("dashboard: {default_tz: Mars/Base}", "dashboard.default_tz: expected an IANA time zone"),
    ("dashboard: {admin_groups: []}", "dashboard.admin_groups: expected one or more group names"),
    ("dashboard: {admin_groups: ['  ']}", "dashboard.admin_groups"),
    ("dashboard: {default_range: 7d}", "dashboard.default_range: expected a relative start like '-24h'"),
    ("dashboard: {max_csv_rows: 0}", "dashboard.max_csv_rows: expected 1..10000000"),
    ("dashboard: {admins: [x]}", "dashboard.admins: unknown key"),
])
def test_bad_values_name_the_key(text, message):
    with pytest.raises(ConfigError) as e:
        parse_config(text + "\n")
    assert message in str(e.value)


def test_pipeline_puts_the_dashboard_after_auth_and_acl_and_before_endpoints(tmp_path):
    from addons.acl import Acl
    from addons.auth import Auth
    from addons.dashboard import Dashboard
    from addons.endpoints import Endpoints
    from addons.lifecycle import Lifecycle
    from auth.users import UsersFile
    from proxy.pipeline import Services, portico_addons

    UsersFile(tmp_path / "users.yaml", must_exist=False).add("ada", "pw-pw-pw", groups=("admins",), n=2**10)
    config = parse_config(f"telemetry: {{enabled: false, path: {tmp_path}}}\n"
                          f"auth: {{backend: file, users_file: {tmp_path / 'users.yaml'}}}\n")
    kinds = [type(a) for a in portico_addons(config, Services(lifecycle=Lifecycle()))]
    assert kinds.index(Auth) < kinds.index(Acl) < kinds.index(Dashboard) < kinds.index(Endpoints)
    config = parse_config(f"telemetry: {{enabled: false, path: {tmp_path}}}\ndashboard: {{enabled: false}}\n")
    assert Dashboard not in [type(a) for a in portico_addons(config, Services(lifecycle=Lifecycle()))]
