"""Read a secret from a file or an environment variable named in the settings.

Settings never hold secrets themselves: they name where to find one (`*_file` / `*_env`),
as STYLE.md asks. Messages name the file or variable, never the value.
"""

from __future__ import annotations

import os
from pathlib import Path

from auth.errors import AuthConfigError


def read_secret(what: str, file: str | os.PathLike[str] | None, env: str | None) -> str:
    """The secret from `file` (trailing newline removed) or environment variable `env`.

    Args:
        what: the settings field being resolved, for messages (`ldap.password_file`).

    Raises:
        AuthConfigError: neither source is given, the file is unreadable, or the value is empty.
    """
    if file:
        try:
            value = Path(file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise AuthConfigError(f"{what}: cannot read secret file {str(file)!r}: "
                                  f"{e.strerror or e}") from None
        if not value:
            raise AuthConfigError(f"{what}: secret file {str(file)!r} is empty")
        return value
    if env:
        value = os.environ.get(env, "")
        if not value:
            raise AuthConfigError(f"{what}: environment variable {env!r} is unset or empty")
        return value
    raise AuthConfigError(f"{what}: give a file or an environment variable holding the secret")
