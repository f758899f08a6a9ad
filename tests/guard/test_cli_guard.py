"""`portico dns check` and `portico policy explain` (registered by proxy/cli_guard.py)."""

from __future__ import annotations

import argparse

import pytest

from proxy import cli_guard
from proxy.cli_common import CliError
from tests.guard.conftest import dns_yaml


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="portico")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_guard.register(sub)
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def test_dns_check_reports_each_resolver(unbound, tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(dns_yaml(unbound) + f"    - {{protocol: doh, address: 127.0.0.1, port: {unbound.doh_port}, "
                   f"server_name: dns.test, ca_file: '{unbound.ca_file}', spki_pins: ['{unbound.spki_pin}']}}\n")
    code, out = run(["dns", "check", "--config", str(cfg), "--name", "upstream.test"], capsys)
    assert code == 0, out
    assert out.count("query upstream.test: ok -> 127.0.0.1") == 2
    assert "certificate: valid for dns.test, until" in out and "SPKI pin ok" in out
    assert " ms" in out


def test_dns_check_fails_on_a_wrong_name(unbound, tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(dns_yaml(unbound, server_name="wrong.test"))
    code, out = run(["dns", "check", "--config", str(cfg), "--name", "upstream.test"], capsys)
    assert code == 1
    assert "certificate: INVALID" in out and "query upstream.test: FAILED" in out


def test_policy_explain_forward_destination(unbound, tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("forward: {listen: 127.0.0.1:0}\n"
                   "moderation: {categories: [{name: gambling, action: warn, domains: ['||casino.example^']}]}\n"
                   "phishing: {protected_domains: [example.org]}\n" + dns_yaml(unbound))
    code, out = run(["policy", "explain", "http://www.casino.example/x", "--config", str(cfg),
                     "--user", "alice", "--groups", "staff,ops"], capsys)
    assert code == 0
    assert "user alice, groups staff, ops" in out
    assert "categories: WARN (gambling): the site casino.example is listed" in out
    assert "phishing: www.casino.example passes" in out
    assert f"dns: www.casino.example -> 127.0.0.1 (dot via tls://dns.test:{unbound.dot_port})" in out
    assert "forward guard: REFUSED: 127.0.0.1 is a loopback address" in out
    code, out = run(["policy", "explain", "http://xn--pple-43d.com/", "--config", str(cfg)], capsys)
    assert "phishing: BLOCK (homograph)" in out and "apple.com" in out


def test_policy_explain_reverse_route_and_bad_url(unbound, tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("routes: [{upstream: 'http://nowhere.test:81', moderate: true}]\n"
                   "moderation: {categories: [{name: g, url_patterns: ['/bet/']}]}\n" + dns_yaml(unbound))
    code, out = run(["policy", "explain", "http://site.example/bet/1", "--config", str(cfg)], capsys)
    assert "route: */ -> http://nowhere.test:81" in out
    assert "categories: BLOCK (g)" in out
    assert "dns: FAILED -> 502: nowhere.test: the name does not exist (NXDOMAIN)" in out
    with pytest.raises(CliError, match="URL: expected an absolute http"):
        run(["policy", "explain", "ftp://x", "--config", str(cfg)], capsys)
