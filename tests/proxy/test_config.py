"""Configuration loading: valid files build frozen dataclasses; bad ones name key, value, allowed."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from proxy.config import load_config, parse_config
from proxy.schema import ConfigError

ISSUE_EXAMPLE = """
listen: 127.0.0.1:8080
routes:
  - match: {host: "*", path_prefix: /api/}
    upstream: http://127.0.0.1:9001
    strip_prefix: false
  - match: {host: "*", path_prefix: /}
    upstream: http://127.0.0.1:9000
telemetry: {path: ./portico-data}
grpc: {listen: 127.0.0.1:50051}
"""


def test_issue_example_config_loads():
    config = parse_config(ISSUE_EXAMPLE)
    assert config.listen == ("127.0.0.1", 8080)
    assert [r.upstream for r in config.routes] == ["http://127.0.0.1:9001", "http://127.0.0.1:9000"]
    assert config.routes[0].match.path_prefix == "/api/"
    assert str(config.telemetry.path) == "portico-data"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen = ("0.0.0.0", 1)  # type: ignore[misc]


def test_empty_file_gives_defaults():
    config = parse_config("")
    assert config.routes == () and config.forward is None
    assert config.shutdown_grace == timedelta(seconds=10)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lisen: 1", "lisen: unknown key; did you mean 'listen'?"),
        ("listen: foo", "listen: expected an address like '127.0.0.1:8080'"),
        ("listen: 127.0.0.1:99999", "listen: expected an address like '127.0.0.1:8080' with a port from 0 to 65535"),
        ("routes: [{upstream: 'ftp://x'}]", "routes[0].upstream: expected a URL like 'http://127.0.0.1:9000'"),
        ("routes: [{match: {}}]", "routes[0].upstream: required key is missing"),
        ("routes: [{upstream: 'http://a', match: {path_prefix: api}}]",
         "routes[0].match.path_prefix: expected a path prefix starting with '/'"),
        ("routes: [{upstream: 'http://a', match: {host: 'a*b.org'}}]", "routes[0].match.host: expected '*'"),
        ("routes: [{upstream: 'http://a', strip_prefix: 'yes'}]", "routes[0].strip_prefix: expected true or false, got 'yes'"),
        ("routes: [{upstream: 'http://a', mach: {}}]", "routes[0].mach: unknown key; did you mean 'match'?"),
        ("routes: [{upstream: 'http://a'}, {upstream: 'http://b'}]", "routes[1].match: same host and path_prefix"),
        ("routes: [{upstream: 'http://a', match: {path_prefix: /_portico/x}}]", "inside the reserved prefix"),
        ("routes: {upstream: 'http://a'}", "routes: expected a list"),
        ("telemetry: {partition: month}", "telemetry.partition: expected one of 'day', 'week', got 'month'"),
        ("telemetry: {retention: {request: 1x}}", "telemetry.retention.request: expected a duration like '30s'"),
        ("forward: {listen: '127.0.0.1:3128', connect_ports: [0]}", "forward.connect_ports: expected ports from 1 to 65535"),
        ("forward: {listen: '127.0.0.1:3128', allowed_clients: [nope]}", "forward.allowed_clients[0]: expected a network"),
        ("forward: {}", "forward.listen: required key is missing"),
        ("trusted_proxies: 10.0.0.0/8", "trusted_proxies: expected a list"),
        ("shutdown_grace: soon", "shutdown_grace: expected a duration like '30s', '15m', '90d', got 'soon'"),
        ("max_request_body: big", "max_request_body: expected a size like '512MB'"),
        # too big for a timedelta or an int: once a traceback, exit 1
        ("shutdown_grace: 99999999999d", "shutdown_grace: expected a value within range (a duration shorter"),
        ("shutdown_grace: .inf", "shutdown_grace: expected a value within range"),
        ("telemetry: {retention: {request: 999999999999d}}", "telemetry.retention.request: expected a value within"),
        ("max_request_body: " + "9" * 330 + "TB", "max_request_body: expected a value within range (a size"),
        ("grpc: {listen: nowhere}", "grpc.listen: expected an address"),
        ("logging: {format: xml}", "logging.format: expected one of 'text', 'json', got 'xml'"),
        ("- a list", "(top level): expected a mapping"),
        ("a: [", "not valid YAML"),
        ("reserved_prefix: /_portico", "reserved_prefix: expected a prefix ending in '/'"),
    ],
)
def test_bad_config_names_key_value_and_allowed(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert message in str(err.value)


def test_error_message_starts_with_file_name(tmp_path):
    path = tmp_path / "portico.yaml"
    path.write_text("cashe: {}\n")
    with pytest.raises(ConfigError, match=r"portico\.yaml: cashe: unknown key"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "absent.yaml")


def test_secret_values_are_not_echoed():
    from proxy.schema import show

    assert show("ldap.bind_password", "hunter2") == "'***'"
    assert show("grpc.tokens_file", "/etc/tokens") == "'/etc/tokens'"
