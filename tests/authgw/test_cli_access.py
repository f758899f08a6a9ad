"""`portico access check` explains which rule decides, on a real configuration file."""

from __future__ import annotations

import argparse
import json

import pytest

from proxy import cli_access
from proxy.cli_common import CliError

CONFIG = """
access_control:
  default_policy: deny
  rules:
    - {id: public, path_prefixes: [/public/], policy: bypass}
    - {id: office, networks: [10.0.0.0/8], methods: [GET], policy: bypass}
    - {id: members, path_prefixes: [/members/], groups: [members], policy: authenticated}
    - {id: members-others, path_prefixes: [/members/], policy: deny}
    - {id: tracking-private, paths: ['^/_portico/beacon'], policy: deny}
"""


def run(tmp_path, capsys, *args: str):
    path = tmp_path / "portico.yaml"
    path.write_text(CONFIG)
    parser = argparse.ArgumentParser()
    cli_access.register(parser.add_subparsers())
    ns = parser.parse_args(["access", "check", "--config", str(path), *args, "--json"])
    assert ns.func(ns) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("args", "outcome", "rule"), [
    (["--url", "https://a.example.org/public/x"], "allow", "public"),
    (["--url", "https://a.example.org/members/x"], "login", "members"),
    (["--url", "https://a.example.org/members/x", "--user", "al", "--groups", "members"], "allow", "members"),
    (["--url", "https://a.example.org/members/x", "--user", "bo"], "deny", "members-others"),
    (["--url", "https://a.example.org/x", "--ip", "10.2.3.4"], "allow", "office"),
    (["--url", "https://a.example.org/x", "--ip", "10.2.3.4", "--method", "post"], "deny", "default"),
    (["--url", "https://a.example.org/_portico/health"], "allow", "reserved"),
    (["--url", "https://a.example.org/_portico/pixel/abc"], "allow", "reserved"),
    (["--url", "https://a.example.org/_portico/beacon"], "deny", "tracking-private"),
    (["--url", "https://a.example.org/_portico/dashboard/"], "deny", "default"),
    (["--url", "https://a.example.org/public/a%5Cb"], "refused", "none"),  # as the gateway answers: 400
    (["--url", "https://a.example.org/public/..;/members/x"], "login", "members"),  # Tomcat's reading
])
def test_check_names_the_deciding_rule(tmp_path, capsys, args, outcome, rule):
    result = run(tmp_path, capsys, *args)
    assert (result["outcome"], result["rule"]) == (outcome, rule)


def test_check_explains_rules_that_did_not_match(tmp_path, capsys):
    path = tmp_path / "portico.yaml"
    path.write_text(CONFIG)
    parser = argparse.ArgumentParser()
    cli_access.register(parser.add_subparsers())
    ns = parser.parse_args(["access", "check", "-c", str(path), "--url", "https://a.example.org/members/",
                            "--user", "bo", "--groups", "staff", "--ip", "192.168.1.2"])
    ns.func(ns)
    out = capsys.readouterr().out
    assert "DENY (403)" in out and "rule members-others" in out
    assert "office: client 192.168.1.2 not in networks" in out
    assert "members: 'bo' is not in users [] / groups ['members']" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--url", "/relative"], "--url: expected a full URL"),
    (["--url", "https://a.org/", "--ip", "10.0.0.300"], "--ip: expected an IP address"),
    (["--url", "https://a.org/", "--groups", "x"], "--groups: give --user too"),
])
def test_bad_arguments_are_usage_errors(tmp_path, capsys, args, message):
    with pytest.raises(CliError) as e:
        run(tmp_path, capsys, *args)
    assert message in str(e.value) and e.value.exit_code == 2


def test_bad_config_file_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("access_control: {default_policy: maybe}")
    parser = argparse.ArgumentParser()
    cli_access.register(parser.add_subparsers())
    ns = parser.parse_args(["access", "check", "-c", str(path), "--url", "https://a.org/"])
    with pytest.raises(CliError) as e:
        ns.func(ns)
    assert "access_control.default_policy" in str(e.value) and e.value.exit_code == 2
