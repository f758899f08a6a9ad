"""A file user backend (`users.yaml`) for small deployments and the demo.

    users:
      alice:
        display_name: Alice Liddell
        email: alice@example.org
        groups: [admins, developers]
        disabled: false
        password: $scrypt$n=32768,r=8,p=1$<salt, base64>$<hash, base64>

Passwords are hashed with `hashlib.scrypt` (memory-hard, stdlib); the parameters live in
each hash so the cost can be raised later without breaking old entries. Verification is
constant-time, and an unknown user costs the same scrypt work as a known one, so timing
does not tell which names exist. The file is re-read when it changes (checked by `stat`
on each call, microseconds); a broken edit keeps the previous users and logs the error.
Writes (`portico users add|passwd|remove`) take a lock, re-read, and replace the file
atomically (temp file, fsync, rename), mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from auth.errors import AccountDisabled, InvalidCredentials, UsersFileError
from auth.identity import Identity, check_login_input

log = logging.getLogger("portico.auth.users")

DEFAULT_N = 2**15  # 32 MiB with r=8: ~0.1 s per hash on one core
DEFAULT_R = 8
DEFAULT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_HASH_RE = re.compile(r"^\$scrypt\$n=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})$")
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_USER_KEYS = ("display_name", "email", "groups", "disabled", "password")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclass(frozen=True)
class ScryptHash:
    """A parsed `$scrypt$n=..,r=..,p=..$salt$hash` string."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> ScryptHash:
        """Raises ValueError naming what is wrong (never echoing the hash)."""
        m = _HASH_RE.match(text or "")
        if not m:
            raise ValueError("expected '$scrypt$n=N,r=R,p=P$salt$hash' "
                             "(make one with `portico users passwd`)")
        n, r, p = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if n < 2 or n & (n - 1) or n > 2**20:
            raise ValueError(f"scrypt n={n}: expected a power of two from 2 to 2**20")
        if not 1 <= r <= 32 or not 1 <= p <= 16:
            raise ValueError(f"scrypt r={r}, p={p}: expected r in 1..32 and p in 1..16")
        try:
            salt, digest = _unb64(m.group(4)), _unb64(m.group(5))
        except (binascii.Error, ValueError):
            raise ValueError("salt or hash is not valid base64") from None
        if len(salt) < 8 or not 16 <= len(digest) <= 64:
            raise ValueError("salt shorter than 8 bytes or hash not 16..64 bytes")
        return cls(n, r, p, salt, digest)

    def format(self) -> str:
        return f"$scrypt$n={self.n},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.digest)}"

    def compute(self, password: str) -> bytes:
        return _scrypt(password, self.salt, self.n, self.r, self.p, len(self.digest))

    def verify(self, password: str) -> bool:
        return hmac.compare_digest(self.compute(password), self.digest)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """A new `$scrypt$...` hash of `password` with a random salt.

    Raises:
        ValueError: empty password or bad parameters.
    """
    if not password:
        raise ValueError("password: must not be empty")
    salt = secrets.token_bytes(_SALT_BYTES)
    h = ScryptHash(n, r, p, salt, _scrypt(password, salt, n, r, p, _HASH_BYTES))
    return ScryptHash.parse(h.format()).format()  # validates the parameters


@dataclass(frozen=True)
class FileUser:
    """One entry of users.yaml."""

    username: str
    password: str
    display_name: str | None = None
    email: str | None = None
    groups: tuple[str, ...] = ()
    disabled: bool = False

    def identity(self) -> Identity:
        return Identity(self.username, self.groups, self.display_name, self.email, None, "file")

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.display_name:
            out["display_name"] = self.display_name
        if self.email:
            out["email"] = self.email
        out["groups"] = list(self.groups)
        out["disabled"] = self.disabled
        out["password"] = self.password
        return out


def parse_users(text: str, source: str) -> dict[str, FileUser]:
    """Parse users.yaml text; `source` names the file in messages.

    Raises:
        UsersFileError: naming the file, the dotted key and what was expected.
    """
    try:
        data = yaml.safe_load(text) if text.strip() else {"users": {}}
    except yaml.YAMLError as e:
        raise UsersFileError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict) or set(data) - {"users"}:
        raise UsersFileError(f"{source}: expected a mapping with one key 'users'")
    raw_users = data.get("users")
    if raw_users is None:
        raw_users = {}
    if not isinstance(raw_users, dict):
        raise UsersFileError(f"{source}: users: expected a mapping of username -> settings")
    users: dict[str, FileUser] = {}
    folded: set[str] = set()
    for name, raw in raw_users.items():
        key = f"{source}: users.{name}"
        if not isinstance(name, str) or not USERNAME_RE.match(name):
            raise UsersFileError(f"{key}: bad username; expected letters, digits and . _ @ + - "
                                 "(at most 64)")
        if name.casefold() in folded:
            raise UsersFileError(f"{key}: another user differs only by letter case")
        folded.add(name.casefold())
        if not isinstance(raw, dict):
            raise UsersFileError(f"{key}: expected a mapping with keys {', '.join(_USER_KEYS)}")
        for k in raw:
            if k not in _USER_KEYS:
                raise UsersFileError(f"{key}.{k}: unknown key; allowed keys: {', '.join(_USER_KEYS)}")
        password = raw.get("password")
        try:
            ScryptHash.parse(password if isinstance(password, str) else "")
        except ValueError as e:
            raise UsersFileError(f"{key}.password: {e}") from None
        groups = raw.get("groups") or []
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise UsersFileError(f"{key}.groups: expected a list of group names")
        for field_name in ("display_name", "email"):
            if raw.get(field_name) is not None and not isinstance(raw[field_name], str):
                raise UsersFileError(f"{key}.{field_name}: expected a string")
        if not isinstance(raw.get("disabled", False), bool):
            raise UsersFileError(f"{key}.disabled: expected true or false")
        users[name] = FileUser(name, password, raw.get("display_name"), raw.get("email"),
                               tuple(groups), raw.get("disabled", False))
    return users


def format_users(users: dict[str, FileUser]) -> str:
    body = yaml.safe_dump({"users": {n: users[n].to_yaml() for n in sorted(users)}},
                          sort_keys=False, allow_unicode=True, default_flow_style=False)
    return "# Portico users: manage with `portico users add|passwd|list|remove`\n" + body


class UsersFile:
    """The users.yaml backend (implements `auth.identity.Authenticator`).

    Args:
        path: the file; it need not exist until the first `add`.
        must_exist: raise if the file is missing (for the gateway; the CLI creates it).

    Raises:
        UsersFileError: the file cannot be read or parsed.
    """

    def __init__(self, path: str | os.PathLike[str], *, must_exist: bool = True) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._users: dict[str, FileUser] = {}
        self._folded: dict[str, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._dummy = ScryptHash(DEFAULT_N, DEFAULT_R, DEFAULT_P, secrets.token_bytes(_SALT_BYTES),
                                 secrets.token_bytes(_HASH_BYTES))
        if must_exist and not self.path.exists():
            raise UsersFileError(f"{self.path}: no such file; create it with "
                                 f"`portico users add --file {self.path} USER`")
        self._load(initial=True)

    # --- reading -----------------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self, initial: bool = False) -> None:
        stamp = self._stat()
        if stamp == self._stamp and not initial:
            return
        try:
            text = self.path.read_text(encoding="utf-8") if stamp else ""
            users = parse_users(text, str(self.path))
        except OSError as e:
            error = UsersFileError(f"{self.path}: cannot read: {e.strerror or e}")
            if initial:
                raise error from None
            log.error("%s; keeping the previous users", error)
            return
        except UsersFileError as e:
            if initial:
                raise
            log.error("%s; keeping the previous users", e)
            self._stamp = stamp  # do not re-parse the same broken file on every call
            return
        self._users = users
        self._folded = {n.casefold(): n for n in users}
        self._stamp = stamp
        # unknown users cost what a real user costs: use the parameters found in the file
        if users:
            h = ScryptHash.parse(next(iter(users.values())).password)
            self._dummy = ScryptHash(h.n, h.r, h.p, secrets.token_bytes(_SALT_BYTES),
                                     secrets.token_bytes(len(h.digest)))

    def users(self) -> list[FileUser]:
        """Every user, sorted by name (re-reading the file if it changed)."""
        with self._lock:
            self._load()
            return [self._users[n] for n in sorted(self._users)]

    def _get(self, username: str) -> FileUser | None:
        name = self._folded.get(username.casefold())
        return self._users.get(name) if name else None

    def authenticate(self, username: str, password: str) -> Identity:
        """Check a login against the file.

        Raises:
            InvalidCredentials: unknown user, wrong password, empty or malformed input.
            AccountDisabled: `disabled: true` (only after a correct password).
        """
        check_login_input(username, password)
        with self._lock:
            self._load()
            user = self._get(username)
            dummy = self._dummy
        if user is None:
            dummy.verify(password)  # same work as a real check: timing does not reveal existence
            raise InvalidCredentials(username, "unknown_user")
        if not ScryptHash.parse(user.password).verify(password):
            raise InvalidCredentials(username, "bad_password")
        if user.disabled:
            raise AccountDisabled(username, f"disabled in {self.path}")
        return user.identity()

    def lookup(self, username: str) -> Identity | None:
        """The current identity, or None if unknown or disabled."""
        with self._lock:
            self._load()
            user = self._get(username)
        return None if user is None or user.disabled else user.identity()

    # --- writing (the CLI) -------------------------------------------------------------

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, FileUser]]:
        """Lock, re-read, let the caller change the mapping, write atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
            users = parse_users(text, str(self.path))
            yield users
            atomic_write(self.path, format_users(users))
        with self._lock:
            self._load(initial=True)

    def add(self, username: str, password: str, *, display_name: str | None = None,
            email: str | None = None, groups: tuple[str, ...] = (), n: int = DEFAULT_N) -> FileUser:
        """Add a user. Raises UsersFileError if the name is taken or invalid."""
        if not USERNAME_RE.match(username):
            raise UsersFileError(f"username {username!r}: expected letters, digits and . _ @ + - "
                                 "(at most 64, starting with a letter or digit)")
        try:
            hashed = hash_password(password, n=n)
        except ValueError as e:
            raise UsersFileError(str(e)) from None
        with self._editing() as users:
            if any(u.casefold() == username.casefold() for u in users):
                raise UsersFileError(f"{self.path}: user {username!r} already exists; "
                                     "use `portico users passwd` to change the password")
            user = FileUser(username, hashed, display_name, email, tuple(groups))
            users[username] = user
        return user

    def update(self, username: str, *, password: str | None = None, n: int = DEFAULT_N,
               groups: tuple[str, ...] | None = None, disabled: bool | None = None,
               display_name: str | None = None, email: str | None = None) -> FileUser:
        """Change a user's password and/or other fields. Raises UsersFileError if unknown."""
        hashed = None
        if password is not None:
            try:
                hashed = hash_password(password, n=n)
            except ValueError as e:
                raise UsersFileError(str(e)) from None
        with self._editing() as users:
            name = next((u for u in users if u.casefold() == username.casefold()), None)
            if name is None:
                raise UsersFileError(f"{self.path}: no user {username!r}")
            user = users[name]
            changes: dict[str, Any] = {}
            if hashed is not None:
                changes["password"] = hashed
            if groups is not None:
                changes["groups"] = tuple(groups)
            if disabled is not None:
                changes["disabled"] = disabled
            if display_name is not None:
                changes["display_name"] = display_name
            if email is not None:
                changes["email"] = email
            users[name] = user = replace(user, **changes)
        return user

    def remove(self, username: str) -> None:
        """Remove a user. Raises UsersFileError if unknown."""
        with self._editing() as users:
            name = next((u for u in users if u.casefold() == username.casefold()), None)
            if name is None:
                raise UsersFileError(f"{self.path}: no user {username!r}")
            del users[name]


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace `path` with `text` so readers see the old or the new file, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
