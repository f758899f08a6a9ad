"""The store-wide value dictionary: attribute values <-> dense uint32 codes.

Column segments and rollups hold codes, not strings, so group-bys and distinct counts are
numpy work. Code 0 means "missing". Only the follower thread adds codes; it commits the
dictionary before anything that refers to the new codes, so a crash never leaves a code
without its value. Readers in other processes reload on an unknown code.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from pathlib import Path
from typing import Any

import lmdb

from telemetry.events import decode_value, encode_value
from telemetry.partitions import lmdb_error, open_env

_CODE = struct.Struct(">I")
MAX_KEY = 400


def _vkey(v: Any) -> Any:
    # True == 1 in a dict: keep booleans apart from integers.
    return ("\x00b", v) if type(v) is bool else v


def _dbkey(b: bytes) -> bytes:
    return b if len(b) <= MAX_KEY else b"\xff" + hashlib.blake2b(b, digest_size=20).digest()


class Dictionary:
    def __init__(self, path: Path, *, sync: bool, readonly: bool = False, map_size: int = 1 << 32) -> None:
        self.path = path
        self.env = open_env(path, map_size, sync=sync, readonly=readonly and path.exists())
        self.v2c_db = self.env.open_db(b"v2c", create=not readonly)
        self.c2v_db = self.env.open_db(b"c2v", create=not readonly)
        self.values: list[Any] = [None]          # code -> value
        self.codes: dict[Any, int] = {}          # value -> code
        self.pending: list[tuple[bytes, bytes, bytes]] = []
        self.lock = threading.Lock()
        self.reload()

    def reload(self) -> None:
        with self.lock, self.env.begin(db=self.c2v_db) as txn:
            start = len(self.values)
            cur = txn.cursor()
            if not cur.set_range(_CODE.pack(start)):
                return
            for k, v in cur:
                code = _CODE.unpack(k)[0]
                val = decode_value(v)
                while len(self.values) < code:
                    self.values.append(None)
                self.values.append(val)
                self.codes[_vkey(val)] = code

    def code(self, v: Any) -> int:
        """The code of `v`, assigning a new one (follower thread only; commit with `commit`)."""
        k = _vkey(v)
        c = self.codes.get(k)
        if c is None:
            c = len(self.values)
            self.values.append(v)
            self.codes[k] = c
            b = encode_value(v)
            self.pending.append((_dbkey(b), _CODE.pack(c), b))
        return c

    def codes_of(self, values: list[Any]) -> list[int]:
        """`code` of each value; the known ones looked up in one C-level pass (a fold codes
        tens of thousands of distinct values)."""
        if bool in set(map(type, values)):      # True == 1 as a dict key: keep them apart
            return [self.code(v) for v in values]
        out = list(map(self.codes.get, values))
        if None in out:
            code = self.code
            out = [c if c is not None else code(v) for c, v in zip(out, values)]
        return out

    def lookup(self, v: Any) -> int:
        """The code of `v`, or 0 when the value never occurred (re-reading codes another
        process, the follower, may have added since)."""
        c = self.codes.get(_vkey(v), 0)
        if not c and not self.pending:
            self.reload()
            c = self.codes.get(_vkey(v), 0)
        return c

    def value(self, code: int) -> Any:
        if code >= len(self.values):
            self.reload()
        return self.values[code] if code < len(self.values) else None

    def commit(self) -> None:
        """Write new codes (before anything that refers to them)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    txn.cursor(self.v2c_db).putmulti([(k, c) for k, c, _ in pending])
                    txn.cursor(self.c2v_db).putmulti([(c, b) for _, c, b in pending], append=True)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.Error as e:
                self.pending = pending + self.pending
                raise lmdb_error(e, self.path, self.env, "cannot write the value dictionary") from e

    def close(self) -> None:
        self.env.close()
