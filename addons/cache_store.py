"""The HTTP cache's storage: one LMDB environment, size-capped, bodies stored once by SHA-256.

Not an addon: `addons/cache.py` (the `Cache` addon) and `proto/cache_service.py` (purge and
stats over gRPC) share one `CacheStore`.

Layout (named databases in one environment at `path`):

    urls     url key -> msgpack [variant id, ...]    (newest first; prefix purge scans these keys)
    entries  variant id (32 bytes) -> msgpack record (status, headers, times, vary, body hash)
    blobs    sha256(body) -> body                    (two URLs with the same body share one blob)
    refs     sha256(body) -> refcount (8 bytes BE)   (a blob goes when its last entry goes)
    lru      atime (8 bytes BE, µs) + variant id -> b""   (oldest first: eviction order)
    atime    variant id -> atime (8 bytes BE)
    meta     b"stats" -> msgpack counters

Writes: every write transaction runs on the caller's thread under one lock; the gateway
calls them from its event loop, where each is short (one record, one body copy). They
commit with `sync=False`: a cache holds only copies that can be fetched again, so losing
the last second of stores in a power cut costs a few misses, while an fsync per stored
response would cap stores at a few thousand per second and stall the event loop for
milliseconds. `flush()` (every few seconds, and on close) syncs explicitly, and an
environment that fails to open as corrupt is moved aside and rebuilt empty, because a
cache may always start cold.

Hits do not write: access times are kept in memory and written in batches by `flush()`
(and before eviction), so LRU order is exact to within one flush interval.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import msgpack

log = logging.getLogger("portico.cache.store")

_U64 = struct.Struct(">Q")
_URL_KEY_MAX = 440


class CacheStoreError(Exception):
    """The cache storage failed (cannot open, closed); the message names the path."""


@dataclass(frozen=True)
class CacheStoreSettings:
    path: Path
    max_size: int = 1 << 30
    max_object_size: int = 8 << 20
    max_variants: int = 32


@dataclass
class Entry:
    """One stored response (a variant of a URL). `body` is loaded separately (`read_body`)."""

    url: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    vary: tuple[str, ...]
    vary_values: tuple[str, ...]
    request_time: float
    response_time: float
    age: int
    body_hash: bytes = b""
    body_len: int = 0
    variant: bytes = b""
    body: bytes | None = field(default=None, repr=False)

    def encode(self) -> bytes:
        return msgpack.packb([self.url, self.status, self.reason, [list(p) for p in self.headers], list(self.vary),
                              list(self.vary_values), self.request_time, self.response_time, self.age,
                              self.body_hash, self.body_len], use_bin_type=True)

    @classmethod
    def decode(cls, variant: bytes, raw: bytes) -> "Entry":
        u, st, rs, h, v, vv, rq, rp, age, bh, bl = msgpack.unpackb(raw, raw=False)
        return cls(u, st, rs, [(a, b) for a, b in h], tuple(v), tuple(vv), rq, rp, age, bh, bl, variant)


def variant_id(url: str, vary: Iterable[str], values: Iterable[str]) -> bytes:
    """A fixed-width id for (url, Vary names, request values): length-prefixed parts, hashed."""
    h = hashlib.sha256()
    for part in (url, *vary, "\x01", *values):
        data = part.encode("utf-8", "surrogateescape")
        h.update(_U64.pack(len(data)))
        h.update(data)
    return h.digest()


def url_key(url: str) -> bytes:
    """LMDB key for a URL: the URL itself (prefix scans work), hashed tail beyond 440 bytes."""
    data = url.encode("utf-8", "surrogateescape")
    if len(data) <= _URL_KEY_MAX:
        return data
    return data[:_URL_KEY_MAX] + b"\x00" + hashlib.sha256(data).hexdigest().encode()


COUNTERS = ("hit", "miss", "stale", "revalidated", "bypass", "expired", "updating", "bytes_served",
            "stores", "evictions", "purged")


class CacheStore:
    """Size-capped LMDB cache storage; see the module docstring for the layout."""

    def __init__(self, settings: CacheStoreSettings, *, clock: Any = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._lock = threading.RLock()
        self._touches: dict[bytes, int] = {}
        self._counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.orphans_removed = 0
        self._closed = False
        self.url_normalizer: Any = None  # set by the Cache addon: purge URLs are keyed like requests
        try:
            self._open()
        except lmdb.Error as e:
            if isinstance(e, (lmdb.CorruptedError, lmdb.InvalidError, lmdb.VersionMismatchError)):
                aside = settings.path.with_name(settings.path.name + f".corrupt-{int(time.time())}")
                log.error("cache at %s is unreadable (%s): moved to %s, starting empty", settings.path, e, aside)
                shutil.move(str(settings.path), str(aside))
                self._open()
            else:
                raise CacheStoreError(f"cache.path: cannot open the cache at {str(settings.path)!r}: {e}") from None

    def _open(self) -> None:
        s = self.settings
        try:
            s.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheStoreError(f"cache.path: cannot create {str(s.path)!r}: {e.strerror or e}") from None
        # Room for the capped content plus B-tree pages and pages freed by recent writes.
        map_size = max(64 << 20, int(s.max_size * 1.5) + 4 * s.max_object_size)
        self.env = lmdb.open(str(s.path), map_size=map_size, max_dbs=8, sync=False, metasync=False,
                             readahead=False, lock=True)
        with self.env.begin(write=True) as txn:
            self.db = {name: self.env.open_db(name.encode(), txn=txn)
                       for name in ("urls", "entries", "blobs", "refs", "lru", "atime", "meta")}
            raw = txn.get(b"stats", db=self.db["meta"])
            stats = msgpack.unpackb(raw) if raw else {}
        for k in COUNTERS:
            self._counts[k] = int(stats.get(k, 0))
        self._bytes = int(stats.get("bytes", 0))
        self._logical = int(stats.get("logical", 0))
        self._physical = int(stats.get("physical", 0))
        self._persisted_counts = dict(self._counts)
        self.orphans_removed = self.collect_orphans()

    # --- reading ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CacheStoreError(f"the cache at {str(self.settings.path)!r} is closed")

    def variants(self, url: str) -> list[Entry]:
        """Stored responses for `url`, newest first (metadata only)."""
        self._check_open()
        with self.env.begin(buffers=False) as txn:
            raw = txn.get(url_key(url), db=self.db["urls"])
            if raw is None:
                return []
            out = []
            for vid in msgpack.unpackb(raw):
                rec = txn.get(vid, db=self.db["entries"])
                if rec is not None:
                    out.append(Entry.decode(vid, rec))
            return out

    def read_body(self, entry: Entry) -> bytes | None:
        """The entry's body, or None if it was purged meanwhile."""
        self._check_open()
        with self.env.begin() as txn:
            return txn.get(entry.body_hash, db=self.db["blobs"])

    def touch(self, entry: Entry) -> None:
        """Record an access for LRU (in memory; written by `flush`)."""
        self._touches[entry.variant] = int(self.clock() * 1e6)

    def count(self, outcome: str, bytes_served: int = 0) -> None:
        """Count a cache outcome (hit, miss, ...) and body bytes served from the cache."""
        if outcome in self._counts:
            self._counts[outcome] += 1
        self._counts["bytes_served"] += bytes_served

    # --- writing ------------------------------------------------------------------------------

    def put(self, entry: Entry, body: bytes, body_hash: bytes | None = None) -> bool:
        """Store `entry` with `body` (replacing the same variant); evict LRU entries to `max_size`.

        Returns False when the object is over `max_object_size` or can't fit at all.
        """
        self._check_open()
        if len(body) > self.settings.max_object_size:
            return False
        entry.body_hash = body_hash or hashlib.sha256(body).digest()
        entry.body_len = len(body)
        entry.variant = variant_id(entry.url, entry.vary, entry.vary_values)
        for attempt in range(2):
            try:
                with self._lock, self.env.begin(write=True) as txn:
                    self._put(txn, entry, body)
                    self._flush_touches(txn)
                    self._evict(txn, self.settings.max_size)
                    self._save_stats(txn)
                self._counts["stores"] += 1
                return True
            except lmdb.MapFullError:
                self._reload_stats()
                if attempt == 0:
                    with self._lock, self.env.begin(write=True) as txn:
                        self._evict(txn, int(self._bytes * 0.75))
                        self._save_stats(txn)
            except BaseException:
                self._reload_stats()  # the transaction was aborted: counters must follow
                raise
        log.warning("cache: no room for %s (%d bytes) even after eviction", entry.url, len(body))
        return False

    def _put(self, txn: lmdb.Transaction, entry: Entry, body: bytes) -> None:
        db = self.db
        ukey = url_key(entry.url)
        raw = txn.get(ukey, db=db["urls"])
        ids = [v for v in (msgpack.unpackb(raw) if raw else []) if v != entry.variant]
        if txn.get(entry.variant, db=db["entries"]) is not None:
            self._delete_variant(txn, entry.variant, unlink=False)
        for old in ids[self.settings.max_variants - 1:]:
            self._delete_variant(txn, old, unlink=False)
        ids = [entry.variant] + ids[: self.settings.max_variants - 1]
        refs = txn.get(entry.body_hash, db=db["refs"])
        count = _U64.unpack(refs)[0] if refs else 0
        if count == 0:
            txn.put(entry.body_hash, body, db=db["blobs"])
            self._bytes += len(body)
            self._physical += len(body)
        txn.put(entry.body_hash, _U64.pack(count + 1), db=db["refs"])
        record = entry.encode()
        txn.put(entry.variant, record, db=db["entries"])
        txn.put(ukey, msgpack.packb(ids), db=db["urls"])
        now = int(self.clock() * 1e6)
        txn.put(entry.variant, _U64.pack(now), db=db["atime"])
        txn.put(_U64.pack(now) + entry.variant, b"", db=db["lru"])
        self._touches.pop(entry.variant, None)
        self._bytes += len(record)
        self._logical += len(body)

    def _delete_variant(self, txn: lmdb.Transaction, vid: bytes, *, unlink: bool = True) -> bool:
        db = self.db
        raw = txn.get(vid, db=db["entries"])
        if raw is None:
            return False
        entry = Entry.decode(vid, raw)
        txn.delete(vid, db=db["entries"])
        self._bytes -= len(raw)
        self._logical -= entry.body_len
        at = txn.get(vid, db=db["atime"])
        if at is not None:
            txn.delete(at + vid, db=db["lru"])
            txn.delete(vid, db=db["atime"])
        refs = txn.get(entry.body_hash, db=db["refs"])
        count = (_U64.unpack(refs)[0] if refs else 1) - 1
        if count <= 0:
            txn.delete(entry.body_hash, db=db["refs"])
            if txn.delete(entry.body_hash, db=db["blobs"]):
                self._bytes -= entry.body_len
                self._physical -= entry.body_len
        else:
            txn.put(entry.body_hash, _U64.pack(count), db=db["refs"])
        if unlink:
            ukey = url_key(entry.url)
            ids_raw = txn.get(ukey, db=db["urls"])
            ids = [v for v in (msgpack.unpackb(ids_raw) if ids_raw else []) if v != vid]
            if ids:
                txn.put(ukey, msgpack.packb(ids), db=db["urls"])
            else:
                txn.delete(ukey, db=db["urls"])
        self._touches.pop(vid, None)
        return True

    def _evict(self, txn: lmdb.Transaction, target: int) -> int:
        evicted = 0
        if self._bytes <= target:
            return 0
        cursor = txn.cursor(db=self.db["lru"])
        victims = []
        projected = self._bytes
        for key in cursor.iternext(values=False):
            if projected <= target:
                break
            vid = bytes(key[8:])
            raw = txn.get(vid, db=self.db["entries"])
            projected -= (len(raw) + Entry.decode(vid, raw).body_len) if raw else 0
            victims.append(vid)
        for vid in victims:
            if self._delete_variant(txn, vid):
                evicted += 1
        self._counts["evictions"] += evicted
        return evicted

    def _flush_touches(self, txn: lmdb.Transaction) -> None:
        touches, self._touches = self._touches, {}
        for vid, ts in touches.items():
            old = txn.get(vid, db=self.db["atime"])
            if old is None:
                continue  # deleted meanwhile
            txn.delete(old + vid, db=self.db["lru"])
            txn.put(vid, _U64.pack(ts), db=self.db["atime"])
            txn.put(_U64.pack(ts) + vid, b"", db=self.db["lru"])

    def _save_stats(self, txn: lmdb.Transaction) -> None:
        stats = dict(self._counts, bytes=self._bytes, logical=self._logical, physical=self._physical)
        txn.put(b"stats", msgpack.packb(stats), db=self.db["meta"])
        self._persisted_counts = dict(self._counts)

    def _reload_stats(self) -> None:
        with self.env.begin() as txn:
            raw = txn.get(b"stats", db=self.db["meta"])
        stats = msgpack.unpackb(raw) if raw else {}
        self._bytes = int(stats.get("bytes", 0))
        self._logical = int(stats.get("logical", 0))
        self._physical = int(stats.get("physical", 0))

    def flush(self, sync: bool = True) -> None:
        """Write pending access times and counters; with `sync`, also fsync (slow: not on the loop)."""
        if self._closed:
            return
        if self._touches or self._counts != self._persisted_counts:
            with self._lock, self.env.begin(write=True) as txn:
                self._flush_touches(txn)
                self._save_stats(txn)
        if sync:
            self.sync()

    def sync(self) -> None:
        """Force written transactions to disk (the environment commits without fsync)."""
        if not self._closed:
            self.env.sync(True)

    # --- invalidation ---------------------------------------------------------------------------

    def invalidate(self, url: str) -> int:
        """Remove every variant stored for `url` (already normalised); how many went."""
        self._check_open()
        with self._lock, self.env.begin(write=True) as txn:
            raw = txn.get(url_key(url), db=self.db["urls"])
            if raw is None:
                return 0
            n = sum(self._delete_variant(txn, vid, unlink=False) for vid in msgpack.unpackb(raw))
            txn.delete(url_key(url), db=self.db["urls"])
            self._counts["purged"] += n
            self._save_stats(txn)
        return n

    def purge_url(self, url: str) -> int:
        """Purge one absolute URL as a user types it (normalised like request keys)."""
        normalized = self.url_normalizer(url) if self.url_normalizer else url
        return self.invalidate(normalized)

    def purge_prefix(self, prefix: str, batch: int = 1000) -> int:
        """Purge every URL starting with `prefix` (e.g. 'https://app.example.org/docs/')."""
        self._check_open()
        pkey = prefix.encode("utf-8", "surrogateescape")[:_URL_KEY_MAX]
        total = 0
        while True:
            with self._lock, self.env.begin(write=True) as txn:
                cursor = txn.cursor(db=self.db["urls"])
                keys = []
                if cursor.set_range(pkey):
                    for key in cursor.iternext(values=False):
                        if not bytes(key).startswith(pkey) or len(keys) >= batch:
                            break
                        keys.append(bytes(key))
                for key in keys:
                    raw = txn.get(key, db=self.db["urls"])
                    total += sum(self._delete_variant(txn, vid, unlink=False) for vid in msgpack.unpackb(raw))
                    txn.delete(key, db=self.db["urls"])
                self._save_stats(txn)
            if len(keys) < batch:
                break
        self._counts["purged"] += total
        return total

    def purge_all(self) -> int:
        """Empty the cache (counters other than sizes are kept)."""
        self._check_open()
        with self._lock, self.env.begin(write=True) as txn:
            n = txn.stat(self.db["entries"])["entries"]
            for name in ("urls", "entries", "blobs", "refs", "lru", "atime"):
                txn.drop(self.db[name], delete=False)
            self._touches.clear()
            self._bytes = self._logical = self._physical = 0
            self._counts["purged"] += n
            self._save_stats(txn)
        return n

    def collect_orphans(self) -> int:
        """Recount blob references from the entries; drop blobs nobody references."""
        with self._lock, self.env.begin(write=True) as txn:
            counts: dict[bytes, int] = {}
            for _, raw in txn.cursor(db=self.db["entries"]):
                bh = Entry.decode(b"", raw).body_hash
                counts[bh] = counts.get(bh, 0) + 1
            removed = 0
            for key, value in list(txn.cursor(db=self.db["blobs"])):
                key = bytes(key)
                if key not in counts:
                    txn.delete(key, db=self.db["blobs"])
                    txn.delete(key, db=self.db["refs"])
                    self._bytes -= len(value)
                    self._physical -= len(value)
                    removed += 1
                else:
                    txn.put(key, _U64.pack(counts[key]), db=self.db["refs"])
            if removed:
                self._save_stats(txn)
        return removed

    # --- introspection ------------------------------------------------------------------------

    def stats(self) -> dict[str, float | int]:
        """objects, bytes, blobs, hit ratio, bytes saved, dedup ratio and the outcome counters."""
        self._check_open()
        with self.env.begin() as txn:
            objects = txn.stat(self.db["entries"])["entries"]
            blobs = txn.stat(self.db["blobs"])["entries"]
        c = self._counts
        served = c["hit"] + c["stale"] + c["revalidated"] + c["updating"]
        lookups = served + c["miss"] + c["expired"]
        return {
            "objects": objects,
            "bytes": self._bytes,
            "blobs": blobs,
            "logical_bytes": self._logical,
            "physical_bytes": self._physical,
            "dedup_ratio": (self._logical / self._physical) if self._physical else 1.0,
            "hit_ratio": (served / lookups) if lookups else 0.0,
            "bytes_saved": c["bytes_served"],
            "max_size": self.settings.max_size,
            **{k: c[k] for k in COUNTERS if k != "bytes_served"},
        }

    def close(self) -> None:
        """Flush and close; later calls raise CacheStoreError."""
        if self._closed:
            return
        with self._lock:
            self.flush()
            self._closed = True
            self.env.close()
