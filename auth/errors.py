"""The exceptions of `auth`; every one carries a message a person can act on.

    AuthError                      base of everything raised here
    ├── AuthConfigError            settings or a key/secret file are wrong (fix the config; exit 2)
    ├── InvalidCredentials         the login failed: 401 / 407, never reveal which `reason`
    │   └── AccountDisabled        the password may be right but the account is disabled
    ├── Banned                     regulation: too many failures; `subject`, `until` (429/401)
    ├── DirectoryUnavailable       the directory could not answer: 503, never a pass
    ├── UsersFileError             users.yaml cannot be read, parsed or written
    ├── SessionError               a session token is not acceptable: treat as logged out
    │   ├── InvalidSession         malformed, forged, unknown key: log it, clear the cookie
    │   └── SessionExpired         absolute or inactivity expiry reached (`reason`)
    └── RegulationStoreError       the ban store (LMDB) cannot be opened or written

`InvalidCredentials.reason` is for logs and `auth.login` events only (`unknown_user`,
`bad_password`, `empty_password`, `malformed_username`, `ambiguous_user`, `disabled`):
responses must look the same whatever the reason, so nobody learns which users exist.
Passwords never appear in any message.
"""

from __future__ import annotations


class AuthError(Exception):
    """Base class of all `auth` errors."""


class AuthConfigError(AuthError):
    """Settings, a secret file or a key file are unusable; the message names the field."""


class InvalidCredentials(AuthError):
    """The user could not be authenticated with these credentials (401/407).

    Attributes:
        username: the name that was tried (may be anything the client sent).
        reason: why, for logs and events only; see the module docstring for values.
    """

    def __init__(self, username: str, reason: str, detail: str = "") -> None:
        self.username = username
        self.reason = reason
        shown = username if len(username) <= 64 else username[:61] + "..."
        super().__init__(f"authentication of {shown!r} failed: {reason}"
                         + (f" ({detail})" if detail else ""))


class AccountDisabled(InvalidCredentials):
    """The account exists but is disabled; answered like any other bad login."""

    def __init__(self, username: str, detail: str = "") -> None:
        super().__init__(username, "disabled", detail)


class Banned(AuthError):
    """Too many failures: `subject` (`user:NAME` or `address:IP`) is banned until `until` (epoch s)."""

    def __init__(self, subject: str, until: float) -> None:
        self.subject = subject
        self.until = until
        super().__init__(f"{subject} is banned until {until:.0f} (epoch seconds) after repeated "
                         "failed logins; `portico auth unban` lifts it")


class DirectoryUnavailable(AuthError):
    """No directory server could answer (down, timeout, TLS failure, service bind refused): 503."""


class UsersFileError(AuthError):
    """users.yaml is missing, malformed or cannot be written; the message names file and key."""


class SessionError(AuthError):
    """A session token is not acceptable; the caller treats the request as not logged in."""


class InvalidSession(SessionError):
    """The token is malformed, its signature is wrong, or its key is unknown."""


class SessionExpired(SessionError):
    """The token was valid but has expired; `reason` is `absolute` or `inactive`."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class RegulationStoreError(AuthError):
    """The regulation (ban) store cannot be opened, read or written."""
