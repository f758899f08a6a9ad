"""In-memory caches for the directory: credentials (short TTL) and group memberships.

`CredentialCache` remembers that a (username, password) pair authenticated, keyed by
HMAC-SHA256 under a random key made when the process starts: the password is never
stored, and the keys are useless outside this process (no offline guessing from a dump).
`TtlCache` keeps group memberships per user with their fetch time, so a background
refresher can find entries that are getting old. Both are thread-safe (callers run in
`asyncio.to_thread` workers) and bounded (oldest entries are dropped first).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from auth.identity import Identity

Clock = Callable[[], float]
V = TypeVar("V")


class CredentialCache:
    """Successful logins for `ttl` seconds, keyed by HMAC(process key, username, password)."""

    def __init__(self, ttl: float, max_entries: int = 10_000, clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._lock = threading.Lock()

    def _digest(self, username: str, password: str) -> bytes:
        u, p = username.encode(), password.encode()
        # length prefixes: ("ab", "c") and ("a", "bc") must not collide
        return hmac.new(self._key, len(u).to_bytes(4, "big") + u + len(p).to_bytes(4, "big") + p,
                        hashlib.sha256).digest()

    def get(self, username: str, password: str) -> Identity | None:
        """The cached identity, or None if absent or older than `ttl`."""
        if self.ttl <= 0:
            return None
        key = self._digest(username, password)
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            expires, identity = hit
            if self._clock() >= expires:
                del self._entries[key]
                return None
            return identity

    def put(self, username: str, password: str, identity: Identity) -> None:
        if self.ttl <= 0:
            return
        key = self._digest(username, password)
        with self._lock:
            self._entries[key] = (self._clock() + self.ttl, identity)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget_user(self, username: str) -> int:
        """Drop every entry of the canonical `username` (gone, disabled, password changed)."""
        with self._lock:
            doomed = [k for k, (_, ident) in self._entries.items() if ident.username == username]
            for k in doomed:
                del self._entries[k]
            return len(doomed)

    def update_user(self, identity: Identity) -> None:
        """Replace the cached identity (new groups) of `identity.username`, keeping expiry."""
        with self._lock:
            for k, (expires, ident) in list(self._entries.items()):
                if ident.username == identity.username:
                    self._entries[k] = (expires, identity)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class Cached(Generic[V]):
    value: V
    fetched_at: float


class TtlCache(Generic[V]):
    """A bounded map whose entries are fresh for `ttl` seconds after they were fetched."""

    def __init__(self, ttl: float, max_entries: int = 10_000, clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, Cached[V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The value if fetched less than `ttl` ago, else None (the entry stays for refresh)."""
        with self._lock:
            hit = self._entries.get(key)
        if hit is None or self._clock() - hit.fetched_at >= self.ttl:
            return None
        return hit.value

    def peek(self, key: Hashable) -> V | None:
        """The value whatever its age (None if absent): for comparing before a refresh."""
        with self._lock:
            hit = self._entries.get(key)
        return hit.value if hit else None

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._entries[key] = Cached(value, self._clock())
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def older_than(self, age: float) -> list[Hashable]:
        """Keys fetched at least `age` seconds ago: what a refresher should fetch again."""
        now = self._clock()
        with self._lock:
            return [k for k, c in self._entries.items() if now - c.fetched_at >= age]

    def __len__(self) -> int:
        return len(self._entries)
