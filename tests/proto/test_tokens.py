"""Tokens file parsing, roles and lookup (proto/tokens.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proto.tokens import TokensFileError, load_tokens, role_allows

READ = "r" * 20
WRITE = "w" * 24
ADMIN = "a" * 32


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    return path


def test_yaml_format_with_names(tmp_path):
    table = load_tokens(write(tmp_path, f"""
tokens:
  - {{name: dashboard, role: read, token: "{READ}"}}
  - {{name: ingest, role: write, token: "{WRITE}"}}
"""))
    assert len(table) == 2
    assert table.lookup(READ).name == "dashboard"
    assert table.lookup(WRITE).role == "write"
    assert table.lookup("x" * 20) is None
    assert table.lookup(READ[:-1]) is None


def test_line_format_with_comments(tmp_path):
    table = load_tokens(write(tmp_path, f"# role token name\nread {READ} dash\n\nadmin {ADMIN}  # ops\n"))
    assert table.lookup(READ).name == "dash"
    assert table.lookup(ADMIN).role == "admin"
    assert table.lookup(ADMIN).name == "line 4"


@pytest.mark.parametrize("text, message", [
    (f"owner {READ}\n", "role 'owner' is not one of read, write, admin"),
    ("read short\n", "at least 16"),
    (f"read {READ}\nwrite {READ}\n", "line 2: same token as line 1"),
    ("# nothing\n", "no tokens"),
    ("read\n", "line 1: expected 'ROLE TOKEN [NAME]'"),
    ("tokens: {a: b}\n", "one key 'tokens' holding a list"),
    (f"tokens:\n  - {{role: read, token: '{READ}', secret: x}}\n", "unknown key(s) secret"),
    ("tokens:\n  - {role: read, token: 12345678901234567890}\n", "tokens[0].token: expected a string"),
])
def test_bad_tokens_files_are_refused_with_the_entry_named(tmp_path, text, message):
    with pytest.raises(TokensFileError, match=None) as err:
        load_tokens(write(tmp_path, text))
    assert message in str(err.value)


def test_errors_never_echo_the_token(tmp_path):
    secret = "s3cr3t-but-short"[:15]
    with pytest.raises(TokensFileError) as err:
        load_tokens(write(tmp_path, f"read {secret}\n"))
    assert secret not in str(err.value)
    table = load_tokens(write(tmp_path, f"read {READ} dash\n"))
    assert READ not in repr(table.lookup(READ))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(TokensFileError, match="cannot read .*nope"):
        load_tokens(tmp_path / "nope")


@pytest.mark.parametrize("role, required, allowed", [
    ("read", "read", True), ("read", "write", False), ("write", "read", True),
    ("write", "write", True), ("write", "admin", False), ("admin", "write", True),
])
def test_roles_are_ordered(role, required, allowed):
    assert role_allows(role, required) is allowed
