"""Logged-out sessions: the ids of session tokens that must no longer be accepted.

Session tokens are signed and stateless (auth/sessions.py), so clearing the cookie at logout
leaves a copied token valid until it expires. This store closes that gap the way Authelia
and most session stores do: logout records the session id until the token's own absolute
expiry, and every cookie check asks here first. Entries delete themselves in effect when
they expire (`prune` removes them), so the set stays as small as the sessions logged out
within one absolute lifetime.

LMDB (one small environment under the data directory) because the answer must survive a
restart and be shared by gateway processes on one host; a read is one B-tree lookup in a
read transaction (~1-2 us). Writes happen only at logout and are durable before the
logout page is answered.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

from auth.errors import AuthError
from auth.lmdbdir import open_env_dir

REVOKED_DIRNAME = "revoked-sessions"
_MAP_SIZE = 64 << 20
_EXP = struct.Struct(">d")
PRUNE_EVERY = 100        # logouts between two sweeps of expired entries


class RevocationStoreError(AuthError):
    """The revocation store can't be opened or written (names the path and the cause)."""


class RevokedSessions:
    """Session ids revoked until their expiry time (epoch seconds). Thread- and process-safe."""

    def __init__(self, env: lmdb.Environment, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._env = env
        self._db = env.open_db(b"revoked")
        self._clock = clock
        self._since_prune = 0

    @classmethod
    def open(cls, path: str | Path, *, clock: Callable[[], float] = time.time) -> RevokedSessions:
        """Open (creating) the store at directory `path`.

        Raises:
            RevocationStoreError: the directory cannot be created or opened.
        """
        path = Path(path)
        return cls(open_env_dir(path, _MAP_SIZE, 1, "the logged-out sessions store", RevocationStoreError),
                   path, clock)

    def close(self) -> None:
        self._env.close()

    def revoke(self, session_id: str, expires_at: float) -> None:
        """Refuse `session_id` from now until `expires_at` (durable when this returns).

        Raises:
            RevocationStoreError: the write failed (disk full...): the logout must say so.
        """
        try:
            with self._env.begin(write=True, db=self._db) as txn:
                txn.put(session_id.encode(), _EXP.pack(expires_at))
        except lmdb.Error as e:
            raise RevocationStoreError(f"cannot record the logout in {self.path}: {e}") from None
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self.prune()

    def is_revoked(self, session_id: str) -> bool:
        """True while `session_id` is revoked (until the token would have expired anyway)."""
        with self._env.begin(db=self._db) as txn:
            raw = txn.get(session_id.encode())
        return raw is not None and _EXP.unpack(raw)[0] > self._clock()

    def prune(self) -> int:
        """Forget entries whose tokens have expired anyway; returns how many."""
        self._since_prune = 0
        now = self._clock()
        try:
            with self._env.begin(write=True, db=self._db) as txn:
                gone = [k for k, v in txn.cursor() if _EXP.unpack(v)[0] <= now]
                for k in gone:
                    txn.delete(k)
        except lmdb.Error as e:
            raise RevocationStoreError(f"cannot prune {self.path}: {e}") from None
        return len(gone)

    def __len__(self) -> int:
        with self._env.begin(db=self._db) as txn:
            return txn.stat(self._db)["entries"]
