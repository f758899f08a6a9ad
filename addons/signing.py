"""HMAC signing of Portico's tracked URLs (outbound redirects, outreach pixels and clicks).

Not an addon: a helper for `outbound.py`, `outreach.py` and `proxy/cli_outreach.py`.

A signature covers a *purpose* ("outbound", "click", "pixel", "attr") and the exact
parameters, so a token made for one kind of URL can't be replayed as another, and any
change to a parameter (the target URL above all) invalidates it: the redirect endpoints
are never open redirects. Signatures are truncated HMAC-SHA256 (128 bits), URL-safe
base64, compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

SIG_PARAM = "s"


class SecretError(Exception):
    """The tracking secret can't be read or created; the message names the file."""


def sign(secret: bytes, purpose: str, params: Mapping[str, str]) -> str:
    """The signature of `params` for `purpose` (order-independent, 22 URL-safe characters)."""
    msg = purpose.encode() + b"\x00" + b"\x00".join(
        k.encode() + b"=" + str(v).encode() for k, v in sorted(params.items()) if k != SIG_PARAM)
    digest = hmac.new(secret, msg, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify(secret: bytes, purpose: str, params: Mapping[str, str]) -> bool:
    """True when `params[SIG_PARAM]` is the signature of the other params for `purpose`."""
    given = params.get(SIG_PARAM, "")
    if not isinstance(given, str) or len(given) != 22:
        return False
    return hmac.compare_digest(given, sign(secret, purpose, params))


def pseudonym(secret: bytes, kind: str, value: str) -> str:
    """A keyed, stable pseudonym (16 hex chars) for a user or recipient: not reversible
    without the secret, the same for the same value, so counts survive deletion."""
    return hmac.new(secret, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:16]


def load_or_create_secret(path: Path) -> bytes:
    """The secret in `path`, created (32 random bytes, hex, mode 0600) when missing.

    Raises:
        SecretError: the file can't be read or written, or is too short to be a key.
    """
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise SecretError(f"cannot read the tracking secret {str(path)!r}: {e.strerror or e}") from None
    if text:
        if len(text) < 16:
            raise SecretError(f"the tracking secret in {str(path)!r} is shorter than 16 characters; "
                              "delete the file to have a new one made, or put a longer one there")
        return text.encode()
    value = secrets.token_hex(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(value + "\n")
    except FileExistsError:  # another process made it first: use theirs
        return load_or_create_secret(path)
    except OSError as e:
        raise SecretError(f"cannot create the tracking secret {str(path)!r}: {e.strerror or e}") from None
    return value.encode()
