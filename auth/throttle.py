"""Brute-force regulation (Authelia's `regulation` shape), persisted in a small LMDB env.

`max_retries` failed logins for one username within `find_time` seconds ban that username
for `ban_time` seconds; the same for one client address with `address_max_retries` (higher:
offices share NAT addresses). IPv6 addresses count per /64 (`ipv6_prefix`), since one host
usually owns a whole /64. Unknown usernames are counted exactly like real ones, so a ban
never reveals whether a user exists. A successful login clears that user's failures (not
the address's: knowing one password must not reset an address that is guessing others).

State lives in its own LMDB environment (`<data>/regulation/`), so bans survive restarts
and are shared by several gateway processes on one host. Writes happen only on failures
and unbans; the hot path (`check`) is one read transaction. Times are wall-clock epoch
seconds because they are persisted.

    regulator = Regulator.open(data_dir / REGULATION_DIRNAME, RegulationSettings())
    regulator.check(username, client_ip)        # raises Banned before trying the password
    ...failed login...  regulator.record_failure(username, client_ip)
    ...good login...    regulator.record_success(username)
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from auth.errors import Banned, RegulationStoreError
from auth.lmdbdir import open_env_dir

REGULATION_DIRNAME = "regulation"  # under the gateway's data directory
_MAP_SIZE = 64 * 1024 * 1024
_MAX_TRACKED_FAILURES = 1000  # per subject; more adds nothing and bounds the value size


@dataclass(frozen=True)
class RegulationSettings:
    """Authelia-style regulation; see docs/auth.md. `max_retries: 0` disables it."""

    max_retries: int = 3
    address_max_retries: int = 20
    find_time: float = 120.0
    ban_time: float = 300.0
    ipv6_prefix: int = 64

    def __post_init__(self) -> None:
        for name in ("max_retries", "address_max_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected 0 (off) or more, got {getattr(self, name)!r}")
        for name in ("find_time", "ban_time"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive duration, got {getattr(self, name)!r}")
        if not 1 <= self.ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix: expected 1..128, got {self.ipv6_prefix!r}")


@dataclass(frozen=True)
class Ban:
    """An active ban: `subject` is `user:NAME` or `address:IP-OR-NETWORK`."""

    subject: str
    since: float
    until: float
    failures: int


def user_subject(username: str) -> str:
    """The regulation subject of a username (case-folded: `Alice` and `alice` are one)."""
    return "user:" + username.casefold()


def address_subject(address: str, ipv6_prefix: int = 64) -> str:
    """The regulation subject of a client address (IPv6 widened to its /prefix).

    Raises:
        ValueError: not an IP address.
    """
    ip = ipaddress.ip_address(address.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address) and ipv6_prefix < 128:
        return "address:" + str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
    return "address:" + str(ip)


def _key(subject: str) -> bytes:
    # fixed width, and LMDB keys are limited to 511 bytes: hash the subject
    return hashlib.sha256(subject.encode()).digest()[:20]


class Regulator:
    """Failure counting and bans over an LMDB environment. Thread- and process-safe."""

    def __init__(self, env: lmdb.Environment, settings: RegulationSettings, path: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.path = path
        self._env = env
        self._failures = env.open_db(b"failures")
        self._bans = env.open_db(b"bans")
        self._clock = clock

    @classmethod
    def open(cls, path: str | Path, settings: RegulationSettings | None = None, *,
             clock: Callable[[], float] = time.time) -> Regulator:
        """Open (creating) the regulation store at directory `path`.

        Raises:
            RegulationStoreError: the directory cannot be created or opened.
        """
        path = Path(path)
        env = open_env_dir(path, _MAP_SIZE, 2, "the regulation store", RegulationStoreError)
        return cls(env, settings or RegulationSettings(), path, clock)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Regulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- checks and updates ------------------------------------------------------------

    def _subjects(self, username: str | None, address: str | None) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        if username and self.settings.max_retries:
            out.append((user_subject(username), self.settings.max_retries))
        if address and self.settings.address_max_retries:
            try:
                out.append((address_subject(address, self.settings.ipv6_prefix),
                            self.settings.address_max_retries))
            except ValueError:
                pass  # not an IP (e.g. a unix socket peer): nothing to count
        return out

    def check(self, username: str | None, address: str | None, *, now: float | None = None) -> None:
        """Refuse a login attempt from a banned user or address, before any password check.

        Raises:
            Banned: the first active ban found.
            RegulationStoreError: the store cannot be read (callers fail closed: 503).
        """
        now = self._clock() if now is None else now
        subjects = self._subjects(username, address)
        try:
            with self._env.begin(db=self._bans) as txn:
                for subject, _ in subjects:
                    raw = txn.get(_key(subject))
                    if raw is not None:
                        ban = _decode_ban(raw)
                        if ban.until > now:
                            raise Banned(ban.subject, ban.until)
        except lmdb.Error as e:
            raise RegulationStoreError(f"regulation store {self.path}: read failed: {e}") from None

    def record_failure(self, username: str | None, address: str | None, *,
                       now: float | None = None) -> list[Ban]:
        """Count a failed login; returns the bans this failure started (possibly none)."""
        now = self._clock() if now is None else now
        started: list[Ban] = []
        try:
            with self._env.begin(write=True) as txn:
                for subject, limit in self._subjects(username, address):
                    key = _key(subject)
                    ban_raw = txn.get(key, db=self._bans)
                    if ban_raw is not None and _decode_ban(ban_raw).until > now:
                        continue  # already banned: the ban is not extended by more attempts
                    raw = txn.get(key, db=self._failures)
                    times = json.loads(raw)["t"] if raw else []
                    times = [t for t in times if t > now - self.settings.find_time][-_MAX_TRACKED_FAILURES:]
                    times.append(now)
                    if len(times) >= limit:
                        ban = Ban(subject, now, now + self.settings.ban_time, len(times))
                        txn.put(key, _encode_ban(ban), db=self._bans)
                        txn.delete(key, db=self._failures)
                        started.append(ban)
                    else:
                        txn.put(key, json.dumps({"s": subject, "t": times}).encode(), db=self._failures)
        except lmdb.Error as e:
            raise RegulationStoreError(f"regulation store {self.path}: write failed: {e}") from None
        return started

    def record_success(self, username: str) -> None:
        """Forget the failures of `username` after a successful login."""
        try:
            with self._env.begin(write=True, db=self._failures) as txn:
                txn.delete(_key(user_subject(username)))
        except lmdb.Error as e:
            raise RegulationStoreError(f"regulation store {self.path}: write failed: {e}") from None

    # --- administration ----------------------------------------------------------------

    def bans(self, *, now: float | None = None) -> list[Ban]:
        """Active bans, soonest to end first."""
        now = self._clock() if now is None else now
        return sorted((b for b in self._all_bans() if b.until > now), key=lambda b: b.until)

    def _all_bans(self) -> Iterator[Ban]:
        with self._env.begin(db=self._bans) as txn:
            for _, raw in txn.cursor():
                yield _decode_ban(raw)

    def unban(self, subject: str) -> bool:
        """Lift the ban (and forget the failures) of `subject`: `user:NAME`, `address:IP`,
        a bare IP address, or a bare username. Returns whether a ban was lifted.

        Raises:
            ValueError: `address:` followed by something that is not an IP address.
        """
        subject = self.normalize_subject(subject)
        key = _key(subject)
        with self._env.begin(write=True) as txn:
            lifted = txn.delete(key, db=self._bans)
            txn.delete(key, db=self._failures)
        return bool(lifted)

    def normalize_subject(self, subject: str) -> str:
        """`alice` -> `user:alice`, `10.0.0.1` -> `address:10.0.0.1`, `2001:db8::1` -> its /64."""
        if subject.startswith("user:"):
            return user_subject(subject[5:])
        if subject.startswith("address:"):
            rest = subject[8:]
            if "/" in rest:
                return "address:" + str(ipaddress.ip_network(rest, strict=False))
            return address_subject(rest, self.settings.ipv6_prefix)
        try:
            return address_subject(subject, self.settings.ipv6_prefix)
        except ValueError:
            return user_subject(subject)

    def purge_expired(self, *, now: float | None = None) -> int:
        """Delete ended bans and stale failure lists; returns how many records went."""
        now = self._clock() if now is None else now
        removed = 0
        with self._env.begin(write=True) as txn:
            for db, stale in ((self._bans, lambda raw: _decode_ban(raw).until <= now),
                              (self._failures, lambda raw: max(json.loads(raw)["t"], default=0)
                               <= now - self.settings.find_time)):
                cursor = txn.cursor(db=db)
                doomed = [k for k, v in cursor if stale(v)]
                for k in doomed:
                    txn.delete(k, db=db)
                removed += len(doomed)
        return removed


def _encode_ban(ban: Ban) -> bytes:
    return json.dumps({"s": ban.subject, "since": ban.since, "until": ban.until,
                       "n": ban.failures}).encode()


def _decode_ban(raw: bytes) -> Ban:
    d = json.loads(raw)
    return Ban(d["s"], float(d["since"]), float(d["until"]), int(d["n"]))
