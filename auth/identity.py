"""Who a request belongs to, and the interface every user backend offers.

`Identity` is what the gateway keeps after a login (in the session, in `flow.metadata`):
never the password. `Authenticator` is the protocol both `auth.ldap.LdapDirectory` and
`auth.users.UsersFile` implement, so the addon does not care which one it talks to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Identity:
    """An authenticated user.

    Attributes:
        username: the canonical name from the backend (e.g. the directory's `uid`), not
            necessarily what was typed (`ALICE` logs in as `alice`).
        groups: group names, sorted, without duplicates.
        display_name / email: for `Remote-Name` / `Remote-Email`; None when unknown.
        dn: the directory entry (LDAP only).
        source: `ldap` or `file`.
    """

    username: str
    groups: tuple[str, ...] = ()
    display_name: str | None = None
    email: str | None = None
    dn: str | None = None
    source: str = "ldap"

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(sorted(set(self.groups))))


class Authenticator(Protocol):
    """A user backend. Blocking: async callers use `asyncio.to_thread`."""

    def authenticate(self, username: str, password: str) -> Identity:
        """The identity for these credentials.

        Raises:
            InvalidCredentials: wrong password, unknown user, disabled, malformed input.
            DirectoryUnavailable: the backend could not answer (never a pass).
        """
        ...

    def lookup(self, username: str) -> Identity | None:
        """The current identity of `username` without a password, None if it no longer exists
        or is disabled (used for group refresh and `user.left`)."""
        ...


MAX_USERNAME_LENGTH = 256
MAX_PASSWORD_LENGTH = 4096


def check_login_input(username: str, password: str) -> None:
    """Refuse input no backend should see: empty or oversized values, control characters.

    An empty password must never reach an LDAP bind: RFC 4513 makes it an
    "unauthenticated bind" that many servers report as a success.

    Raises:
        InvalidCredentials: with reason `empty_password`, `malformed_username` or
            `malformed_password`.
    """
    from auth.errors import InvalidCredentials

    if not isinstance(username, str) or not username or len(username) > MAX_USERNAME_LENGTH:
        raise InvalidCredentials(str(username)[:64], "malformed_username", "empty or too long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in username):
        raise InvalidCredentials(username.encode("unicode_escape").decode(), "malformed_username",
                                 "control characters")
    if not isinstance(password, str) or password == "":
        raise InvalidCredentials(username, "empty_password")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidCredentials(username, "malformed_password", "too long")
