"""Pure functions that build LDAP filters and handle DNs: escaping, presets, AD flags.

Kept free of I/O so the Active Directory preset, which cannot run in the tests, is still
tested: the filters it sends are built here. Templates use `{username}` (the login name,
RFC 4515-escaped) and `{dn}` (a directory DN, RFC 4515-escaped too, since DNs may contain
`*`, `(`, `)` and `\\`). Substitution is a single pass, so a value containing the text
`{dn}` is never expanded a second time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

# LDAP_MATCHING_RULE_IN_CHAIN: AD walks nested group membership server-side.
AD_IN_CHAIN = "1.2.840.113556.1.4.1941"
# LDAP_MATCHING_RULE_BIT_AND, and the ACCOUNTDISABLE bit of userAccountControl.
AD_BIT_AND = "1.2.840.113556.1.4.803"
AD_ACCOUNTDISABLE = 0x2


@dataclass(frozen=True)
class Preset:
    """Defaults of one directory implementation; every field is overridable in LdapSettings."""

    user_filter: str
    username_attribute: str
    display_name_attribute: str
    mail_attribute: str
    group_filter: str
    nested_group_filter: str | None  # None: nesting is resolved client-side, level by level
    group_name_attribute: str
    group_search_mode: str  # "filter" or "memberof"
    disabled_filter: str  # "" = no check


PRESETS: Mapping[str, Preset] = {
    "openldap": Preset(
        user_filter="(&(objectClass=person)(uid={username}))",
        username_attribute="uid",
        display_name_attribute="cn",
        mail_attribute="mail",
        group_filter="(&(objectClass=groupOfNames)(member={dn}))",
        nested_group_filter=None,
        group_name_attribute="cn",
        group_search_mode="filter",
        disabled_filter="",
    ),
    "activedirectory": Preset(
        user_filter=("(&(objectCategory=person)(objectClass=user)"
                     "(|(sAMAccountName={username})(userPrincipalName={username})))"),
        username_attribute="sAMAccountName",
        display_name_attribute="displayName",
        mail_attribute="mail",
        group_filter="(&(objectClass=group)(member={dn}))",
        nested_group_filter=f"(&(objectClass=group)(member:{AD_IN_CHAIN}:={{dn}}))",
        group_name_attribute="cn",
        group_search_mode="filter",
        disabled_filter=f"(userAccountControl:{AD_BIT_AND}:={AD_ACCOUNTDISABLE})",
    ),
}

_PLACEHOLDER = re.compile(r"\{(username|dn)\}")


def escape_filter_value(value: str) -> str:
    """RFC 4515 escaping of an assertion value: `*`, `(`, `)`, `\\` and NUL become `\\XX`."""
    return escape_filter_chars(value)


def fill_filter(template: str, *, username: str | None = None, dn: str | None = None) -> str:
    """Substitute `{username}` / `{dn}` in `template` with escaped values, in one pass.

    Raises:
        ValueError: the template names a placeholder that was not given.
    """
    values = {"username": username, "dn": dn}

    def sub(match: re.Match[str]) -> str:
        value = values[match.group(1)]
        if value is None:
            raise ValueError(f"filter {template!r} uses {{{match.group(1)}}} which is not "
                             "available here")
        return escape_filter_value(value)

    return _PLACEHOLDER.sub(sub, template)


def any_of(filters: list[str]) -> str:
    """`(|f1 f2 ...)`, or the single filter itself."""
    return filters[0] if len(filters) == 1 else "(|" + "".join(filters) + ")"


def check_filter_template(template: str, required: tuple[str, ...]) -> None:
    """Raise ValueError unless `template` is a parenthesised filter using one of `required`."""
    if not template.startswith("(") or not template.endswith(")"):
        raise ValueError(f"expected an LDAP filter in parentheses, got {template!r}")
    depth = 0
    escaped = False
    for ch in template:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                break
    if depth != 0:
        raise ValueError(f"unbalanced parentheses in filter {template!r}")
    if required and not any("{" + r + "}" in template for r in required):
        names = " or ".join("{" + r + "}" for r in required)
        raise ValueError(f"filter {template!r} must contain {names}")


_DN_SPECIAL = set(',+"\\<>;=')


def escape_dn_value(value: str) -> str:
    """RFC 4514 escaping of an attribute value for use inside a DN (`cn=<value>,...`).

    Escapes `, + " \\ < > ; =`, a leading space or `#`, a trailing space, and NUL.
    """
    out: list[str] = []
    for i, ch in enumerate(value):
        if ch == "\x00":
            out.append("\\00")
        elif ch in _DN_SPECIAL or (i == 0 and ch in " #") or (i == len(value) - 1 and ch == " "):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def unescape_dn_value(value: str) -> str:
    """Inverse of RFC 4514 escaping: `\\,` -> `,`, `\\2C` -> `,` (hex pairs are UTF-8 bytes)."""
    raw = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            pair = value[i + 1:i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                raw.append(int(pair, 16))
                i += 3
                continue
            raw += value[i + 1].encode()
            i += 2
            continue
        raw += ch.encode()
        i += 1
    return raw.decode("utf-8", errors="replace")


def rdn_value(dn: str) -> str:
    """The value of the first RDN of `dn`, unescaped: `cn=a\\,b,ou=g` -> `a,b`."""
    return unescape_dn_value(parse_dn(dn)[0][1])


def uac_disabled(value: object) -> bool:
    """True if an AD `userAccountControl` value has the ACCOUNTDISABLE bit set."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else 0
    try:
        return bool(int(str(value)) & AD_ACCOUNTDISABLE)
    except ValueError:
        return False


# AD puts a reason code in the diagnostic message of a failed bind (`... data 52e, v4563`).
_AD_BIND_DATA = re.compile(r"\bdata ([0-9a-f]{3}),", re.IGNORECASE)
_AD_BIND_REASONS = {
    "525": "unknown_user",
    "52e": "bad_password",
    "530": "logon_time_restricted",
    "531": "workstation_restricted",
    "532": "password_expired",
    "533": "disabled",
    "701": "account_expired",
    "773": "password_must_change",
    "775": "locked",
}


def ad_bind_reason(message: str) -> str:
    """The failure reason hidden in an AD bind error message; `bad_password` if none."""
    match = _AD_BIND_DATA.search(message or "")
    if not match:
        return "bad_password"
    return _AD_BIND_REASONS.get(match.group(1).lower(), "bad_password")
