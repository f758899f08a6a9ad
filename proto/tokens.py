"""Bearer tokens for the analytics API: the tokens file, roles, and constant-time lookup.

The tokens file is named by `grpc.tokens_file`. Two formats are accepted:

YAML (recommended; `name` is what logs and error messages show instead of the token)::

    tokens:
      - {name: dashboard, role: read,  token: "1f0c...e9"}
      - {name: ingest,    role: write, token: "b71d...02"}

or one token per line, `ROLE TOKEN [NAME]`, `#` starts a comment::

    read  1f0c...e9  dashboard

Roles are ordered: `read` may call the read RPCs, `write` may also Record, `admin` may call
everything. Tokens are compared with `hmac.compare_digest` against every entry (no early
exit), and are never logged or echoed: messages name the entry by `name` or line number.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

import yaml

ROLES = ("read", "write", "admin")
MIN_TOKEN_LENGTH = 16


class TokensFileError(RuntimeError):
    """The tokens file is missing, unreadable or malformed; the message names file and entry."""


@dataclass(frozen=True)
class Token:
    """One accepted token; `name` is the safe label used in logs."""

    name: str
    role: str
    secret: bytes

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a log
        return f"Token(name={self.name!r}, role={self.role!r})"


def role_allows(role: str, required: str) -> bool:
    """True when `role` is at least `required` in the order read < write < admin."""
    return ROLES.index(role) >= ROLES.index(required)


class TokenTable:
    """The tokens of one file; `lookup` finds the entry for a presented token."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tuple(tokens)

    def lookup(self, presented: str) -> Token | None:
        """The entry whose secret equals `presented`, comparing in constant time with each."""
        candidate = presented.encode("utf-8", "surrogateescape")
        found: Token | None = None
        for token in self.tokens:
            # compare with every entry so the time taken does not reveal which one matched
            if hmac.compare_digest(candidate, token.secret) and found is None:
                found = token
        return found

    def __len__(self) -> int:
        return len(self.tokens)


def load_tokens(path: Path) -> TokenTable:
    """Read and validate a tokens file.

    Raises:
        TokensFileError: unreadable file, unknown role, short or duplicate token, no tokens.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TokensFileError(f"grpc.tokens_file: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise TokensFileError(f"grpc.tokens_file: {path} is not UTF-8 text") from None
    entries = _parse_yaml(path, text)
    if entries is None:
        entries = _parse_lines(path, text)
    tokens: list[Token] = []
    seen: dict[bytes, str] = {}
    for where, name, role, secret in entries:
        if role not in ROLES:
            raise TokensFileError(f"{path}: {where}: role {role!r} is not one of {', '.join(ROLES)}")
        if len(secret) < MIN_TOKEN_LENGTH:
            raise TokensFileError(
                f"{path}: {where}: token is {len(secret)} characters; use at least {MIN_TOKEN_LENGTH} "
                "(e.g. `python -c 'import secrets; print(secrets.token_hex(24))'`)"
            )
        if any(c.isspace() for c in secret):
            raise TokensFileError(f"{path}: {where}: token contains whitespace")
        raw = secret.encode("utf-8")
        if raw in seen:
            raise TokensFileError(f"{path}: {where}: same token as {seen[raw]}")
        seen[raw] = where
        tokens.append(Token(name=name, role=role, secret=raw))
    if not tokens:
        raise TokensFileError(f"{path}: no tokens; add lines like 'read <token> <name>'")
    return TokenTable(tokens)


def _parse_yaml(path: Path, text: str) -> list[tuple[str, str, str, str]] | None:
    """Entries of the YAML format, or None when the file is in the line format."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict):
        return None
    if set(data) != {"tokens"} or not isinstance(data["tokens"], list):
        raise TokensFileError(f"{path}: expected a mapping with one key 'tokens' holding a list")
    entries = []
    for i, item in enumerate(data["tokens"]):
        where = f"tokens[{i}]"
        if not isinstance(item, dict):
            raise TokensFileError(f"{path}: {where}: expected a mapping with keys name, role, token")
        unknown = set(item) - {"name", "role", "token"}
        if unknown:
            raise TokensFileError(f"{path}: {where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                                  "allowed: name, role, token")
        secret = item.get("token")
        if not isinstance(secret, str):
            raise TokensFileError(f"{path}: {where}.token: expected a string")
        name = str(item.get("name") or where)
        entries.append((f"{where} ({name})" if item.get("name") else where, name, str(item.get("role")), secret))
    return entries


def _parse_lines(path: Path, text: str) -> list[tuple[str, str, str, str]]:
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise TokensFileError(f"{path}: line {lineno}: expected 'ROLE TOKEN [NAME]'")
        role, secret = parts[0], parts[1]
        name = parts[2] if len(parts) == 3 else f"line {lineno}"
        entries.append((f"line {lineno}", name, role, secret))
    return entries
