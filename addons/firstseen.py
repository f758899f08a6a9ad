"""Remember which e-mail opens and clicks were already seen, across restarts.

Not an addon: a helper for `outreach.py` (first or repeat open/click).

An LMDB environment of its own (`<telemetry.path>/outreach-seen/`, made by
proxy/tracking_setup.py): gateway processes sharing the directory agree, and a restart or
deploy doesn't turn every repeat open into a "first" one. Keys are keyed BLAKE2b digests of
(purpose, campaign, recipient pseudonym or visitor id), so the file holds no recipient,
campaign or visitor in clear. Bounded: past `max_entries` the oldest keys are forgotten
(a very old campaign's next open then counts as first again), so the file stays small
(~100 bytes a key). Writes don't fsync (`sync=False`): a process restart loses nothing, an
OS crash may forget the last seconds, which only turns a repeat into a first.

Without a path (unit tests, tools) the same bound applies in memory.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections import OrderedDict
from pathlib import Path

import lmdb

_ORDER_KEY = struct.Struct(">Q")  # time in microseconds, big-endian: byte order is age order


class FirstSeenError(Exception):
    """The directory can't be opened as an LMDB environment (the message names it)."""


class FirstSeen:
    """`first(...)` is True the first time a key is offered (see the module docstring)."""

    def __init__(self, path: Path | None, secret: bytes, max_entries: int = 100_000,
                 map_size: int = 64 * 2**20) -> None:
        self.path = path
        self.max_entries = max_entries
        self._secret = hashlib.blake2b(secret, person=b"first-seen").digest()[:32]
        self._memory: OrderedDict[bytes, None] = OrderedDict()
        self._env: lmdb.Environment | None = None
        if path is not None:
            try:
                path.mkdir(parents=True, exist_ok=True)
                self._env = lmdb.open(str(path), max_dbs=2, map_size=map_size, sync=False, metasync=False)
            except (OSError, lmdb.Error) as e:
                raise FirstSeenError(f"cannot open {str(path)!r} (first/repeat opens): {e}") from None
            self._keys = self._env.open_db(b"keys")    # digest -> order key
            self._order = self._env.open_db(b"order")  # time_us + digest -> b""

    def key(self, *parts: str) -> bytes:
        return hashlib.blake2b("\0".join(parts).encode("utf-8", "surrogatepass"), key=self._secret,
                               digest_size=16).digest()

    def first(self, *parts: str, now: float | None = None) -> bool:
        """True when this key was not seen before (and remember it)."""
        digest = self.key(*parts)
        if self._env is None:
            if digest in self._memory:
                self._memory.move_to_end(digest)
                return False
            self._memory[digest] = None
            if len(self._memory) > self.max_entries:
                self._memory.popitem(last=False)
            return True
        order = _ORDER_KEY.pack(int((time.time() if now is None else now) * 1e6)) + digest
        try:
            with self._env.begin(write=True) as txn:
                if not txn.put(digest, order, db=self._keys, overwrite=False):
                    return False
                txn.put(order, b"", db=self._order)
                excess = txn.stat(self._keys)["entries"] - self.max_entries
                if excess > 0:
                    self._forget_oldest(txn, excess)
        except lmdb.MapFullError:  # bounded by max_entries; a full map means a tiny map_size
            self._forget_all()
            return True
        return True

    def _forget_oldest(self, txn: lmdb.Transaction, count: int) -> None:
        cursor = txn.cursor(db=self._order)
        cursor.first()
        for _ in range(count):
            order = cursor.key()
            if not order:
                break
            txn.delete(order[8:], db=self._keys)
            cursor.delete()  # moves to the next item

    def _forget_all(self) -> None:
        assert self._env is not None
        with self._env.begin(write=True) as txn:
            txn.drop(self._keys, delete=False)
            txn.drop(self._order, delete=False)

    def __len__(self) -> int:
        if self._env is None:
            return len(self._memory)
        with self._env.begin() as txn:
            return int(txn.stat(self._keys)["entries"])

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
