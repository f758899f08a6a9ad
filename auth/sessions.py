"""Signed session tokens for the gateway's cookie, and same-origin redirect checking.

A token is `v1.<kid>.<payload>.<mac>`: `payload` is base64url compact JSON
(`u` user, `g` groups, `n` name, `e` email, `s` source, `sid` random session id, `iat`
issued-at, `lst` last-seen, `exp` absolute expiry; epoch seconds) and `mac` is
HMAC-SHA256 over `v1.<kid>.<payload>` under the key named by `kid`. Tokens are not
encrypted: they hold nothing secret (no password, ever), only what `Remote-*` headers show.

Keys come from a file (one per line, `#` comments) or an environment variable
(whitespace-separated): the FIRST key signs, every key verifies, so rotation is "add the
new key on top, drop the old one after `absolute_lifetime`". `generate_key()` makes one.

Expiry: `exp` (absolute, fixed at login) and inactivity (`lst + inactivity_timeout`, the
timeout read from the settings at verification time). `SessionManager.touch()` re-signs a
token with a new `lst`, at most every `refresh_after` seconds so the gateway does not send
a `Set-Cookie` on every response.

Logout is the cookie being cleared: a copied token stays valid until it expires; keep
lifetimes short or rotate keys to revoke everything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from auth.errors import AuthConfigError, InvalidSession, SessionError, SessionExpired
from auth.identity import Identity

VERSION = "v1"
MIN_KEY_LENGTH = 32
MAX_TOKEN_LENGTH = 4000  # browsers drop cookies over ~4 KiB: refuse to issue or parse more
_CLOCK_SKEW = 60  # seconds a token's iat may be in the future (several gateway hosts)
_TOKEN_RE = re.compile(r"^v1\.([A-Za-z0-9_-]{8})\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class SessionSettings:
    """Session cookie signing and lifetimes; see docs/auth.md."""

    key_file: str | None = None
    key_env: str | None = None
    absolute_lifetime: float = 12 * 3600.0
    inactivity_timeout: float = 3600.0
    refresh_after: float = 60.0

    def __post_init__(self) -> None:
        if not (self.key_file or self.key_env):
            raise ValueError("key_file: give key_file or key_env holding the session signing "
                             "key(s); make one with `python -c 'import auth.sessions as s; "
                             "print(s.generate_key())'`")
        for name in ("absolute_lifetime", "inactivity_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive duration, got {getattr(self, name)!r}")
        if self.refresh_after < 0 or self.refresh_after >= self.inactivity_timeout:
            raise ValueError(f"refresh_after: expected 0 <= refresh_after < inactivity_timeout "
                             f"({self.inactivity_timeout}), got {self.refresh_after!r}")


@dataclass(frozen=True)
class Session:
    """A verified session."""

    identity: Identity
    session_id: str
    issued_at: float
    last_seen: float
    expires_at: float


def generate_key() -> str:
    """A new random signing key (64 url-safe characters, 384 bits)."""
    return secrets.token_urlsafe(48)


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class _Key:
    kid: str
    mac_key: bytes


def _derive(secret: str) -> _Key:
    raw = secret.encode()
    kid = _b64e(hashlib.sha256(b"portico-session-kid\x00" + raw).digest()[:6])
    mac_key = hmac.new(raw, b"portico-session-mac-v1", hashlib.sha256).digest()
    return _Key(kid, mac_key)


def load_keys(settings: SessionSettings) -> list[str]:
    """The signing keys, newest first, from `key_file` or `key_env`.

    Raises:
        AuthConfigError: missing/unreadable source, no key, or a key shorter than 32 characters.
    """
    if settings.key_file:
        where = f"sessions.key_file {settings.key_file!r}"
        try:
            with open(settings.key_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise AuthConfigError(f"{where}: cannot read: {e.strerror or e}") from None
        keys = [line.strip() for line in text.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    else:
        where = f"sessions.key_env {settings.key_env!r}"
        keys = os.environ.get(settings.key_env or "", "").split()
    if not keys:
        raise AuthConfigError(f"{where}: no key found; put one generated key per line")
    for i, key in enumerate(keys):
        if len(key) < MIN_KEY_LENGTH:
            raise AuthConfigError(f"{where}: key #{i + 1} is {len(key)} characters; at least "
                                  f"{MIN_KEY_LENGTH} random characters are required")
    return keys


class SessionManager:
    """Issue, verify and refresh session tokens.

    Args:
        settings: lifetimes and where the keys are.
        keys: the keys themselves (newest first) instead of reading settings' file/env.
        clock: wall-clock seconds (tokens carry epoch times; several hosts may verify).
    """

    def __init__(self, settings: SessionSettings, *, keys: Sequence[str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        secrets_ = list(keys) if keys is not None else load_keys(settings)
        if not secrets_ or any(len(k) < MIN_KEY_LENGTH for k in secrets_):
            raise AuthConfigError(f"sessions: keys must be at least {MIN_KEY_LENGTH} characters")
        derived = [_derive(k) for k in secrets_]
        self._signing = derived[0]
        self._by_kid = {k.kid: k for k in reversed(derived)}  # newest wins a (2^-48) clash
        self._clock = clock

    def issue(self, identity: Identity, *, now: float | None = None) -> str:
        """A new token for `identity` (a fresh session id; call it at login).

        Raises:
            SessionError: the token would be too large for a cookie (too many groups):
                pass only the groups the access rules use.
        """
        now = self._clock() if now is None else now
        payload = {"u": identity.username, "g": list(identity.groups), "n": identity.display_name,
                   "e": identity.email, "s": identity.source, "sid": secrets.token_urlsafe(12),
                   "iat": int(now), "lst": last_seen_stamp(now),
                   "exp": int(now + self.settings.absolute_lifetime)}
        return self._sign(payload)

    def _sign(self, payload: dict[str, object]) -> str:
        body = _b64e(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
        signed = f"{VERSION}.{self._signing.kid}.{body}"
        mac = hmac.new(self._signing.mac_key, signed.encode(), hashlib.sha256).digest()
        token = f"{signed}.{_b64e(mac)}"
        if len(token) > MAX_TOKEN_LENGTH:
            raise SessionError(f"session token for {payload['u']!r} would be {len(token)} bytes "
                               f"(limit {MAX_TOKEN_LENGTH}); too many groups "
                               f"({len(payload['g'])})")  # type: ignore[arg-type]
        return token

    def verify(self, token: str, *, now: float | None = None) -> Session:
        """The session in `token`.

        Raises:
            InvalidSession: malformed, bad signature, unknown key (e.g. rotated out).
            SessionExpired: `reason` is `absolute` or `inactive`.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidSession("session token missing or too long")
        m = _TOKEN_RE.match(token)
        if not m:
            raise InvalidSession("session token is malformed")
        kid, body, mac = m.groups()
        key = self._by_kid.get(kid)
        if key is None:
            raise InvalidSession(f"session token signed with unknown key id {kid!r} "
                                 "(rotated out, or forged)")
        expected = hmac.new(key.mac_key, f"{VERSION}.{kid}.{body}".encode(), hashlib.sha256).digest()
        try:
            given = _b64d(mac)
        except (binascii.Error, ValueError):
            raise InvalidSession("session token signature is not base64url") from None
        if not hmac.compare_digest(expected, given):
            raise InvalidSession("session token signature does not match")
        try:
            p = json.loads(_b64d(body))
            identity = Identity(username=_str(p["u"]), groups=tuple(_str(g) for g in p["g"]),
                                display_name=_opt(p.get("n")), email=_opt(p.get("e")),
                                source=_str(p.get("s", "ldap")))
            iat, lst, exp, sid = _num(p["iat"]), _num(p["lst"]), _num(p["exp"]), _str(p["sid"])
        except (ValueError, KeyError, TypeError) as e:
            # only reachable with a valid signature: a bug or a key leak; say so
            raise InvalidSession(f"signed session payload is malformed: {e}") from None
        now = self._clock() if now is None else now
        if iat > now + _CLOCK_SKEW:
            raise InvalidSession(f"session issued in the future (iat={iat:.0f}, now={now:.0f})")
        if now >= exp:
            raise SessionExpired("absolute", f"session of {identity.username!r} expired "
                                             f"(absolute lifetime) at {exp:.0f}")
        if now >= lst + self.settings.inactivity_timeout:
            raise SessionExpired("inactive", f"session of {identity.username!r} expired after "
                                             f"{self.settings.inactivity_timeout:.0f} s of inactivity")
        return Session(identity, sid, iat, lst, exp)

    def touch(self, session: Session, *, now: float | None = None) -> str | None:
        """A re-signed token with `last_seen = now`, or None if the current one is recent
        enough (`refresh_after`). Keeps the session id, issue time and absolute expiry."""
        now = self._clock() if now is None else now
        if now - session.last_seen < self.settings.refresh_after:
            return None
        i = session.identity
        payload = {"u": i.username, "g": list(i.groups), "n": i.display_name, "e": i.email,
                   "s": i.source, "sid": session.session_id, "iat": int(session.issued_at),
                   "lst": last_seen_stamp(now), "exp": int(session.expires_at)}
        return self._sign(payload)


def last_seen_stamp(now: float) -> int:
    """`lst` in whole seconds, rounded up: the inactivity timeout then never runs short.
    (Rounded down, a session issued at x.95 s with a 1 s timeout expired 0.05 s later.)"""
    return math.ceil(now)


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _opt(v: object) -> str | None:
    return None if v is None else _str(v)


def _num(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"expected a number, got {type(v).__name__}")
    return float(v)


# --- redirects after login ----------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_REDIRECT_LENGTH = 2048


def _origin_tuple(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int] | None:
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host.lower().rstrip("."), port or _DEFAULT_PORTS[scheme]


def safe_redirect_target(url: str | None, origin: str, default: str = "/") -> str:
    """Where to send the browser after login: `url` if it stays on `origin`, else `default`.

    Accepted: a path-absolute reference (`/app?x=1#f`) or an absolute http(s) URL with the
    same scheme, host and port as `origin` (`https://app.example.org[:443]`); the result is
    always returned as a path-absolute reference, so the host can never change.
    Refused: scheme-relative `//evil`, backslashes anywhere (`/\\evil`, browsers read `\\`
    as `/`), other origins, `javascript:`/`data:` and any other scheme, relative paths,
    control characters or whitespace (`/\\t/evil` is `//evil` to a browser), and values over
    2048 characters.
    """
    if not url or len(url) > _MAX_REDIRECT_LENGTH:
        return default
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url) or "\\" in url:
        return default
    if url.startswith("/"):
        return default if url.startswith("//") else url
    try:
        target = urlsplit(url)
        mine = urlsplit(origin)
        want = _origin_tuple(mine.scheme, mine.hostname, mine.port)
        got = _origin_tuple(target.scheme, target.hostname, target.port)
    except ValueError:  # bad port, bad IPv6 literal
        return default
    if want is None or got is None or got != want or target.username or target.password:
        return default
    path = target.path or "/"
    if path.startswith("//"):
        return default
    return path + (f"?{target.query}" if target.query else "") + (
        f"#{target.fragment}" if target.fragment else "")
