"""The follower: folds committed rows into segments, rollups and key-only indexes.

It reads what the writer committed through each partition's `log` DB (seq -> row key), so
it needs nothing from the writer but the files: it runs in a child process by default
(CPython's GIL would otherwise make every rollup computation delay acknowledgements), or
in a thread (`StoreSettings.follower = "thread"`). Its watermark per partition (the last
seq folded in) is committed in the same transaction as the derived data, so a kill at any
point loses nothing: the next run continues from the watermark.
"""

from __future__ import annotations

import gc
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from telemetry import columns, rollups
from telemetry.dictionary import Dictionary
from telemetry.events import KEY_LEN, decode_row_batch
from telemetry.partitions import Partition, lmdb_error, parse_name

CHUNK = columns.SEG_ROWS                 # events folded per transaction (at most)
IDLE_SLEEP = 0.02                        # seconds between polls when idle ...
IDLE_SLEEP_MAX = 0.2                     # ... doubling up to this while nothing comes (see idle_wait)
# After folding a small backlog, wait this long for the next one to grow: a fold has a fixed
# cost of ~10 ms (Arrow's reader, rollup blobs, the tail segment and its index rewritten),
# so at 1,400 ev/s folding every 0.1 s cost 80 us per event, 11% of a core taken from the
# gateway. `Store.flush` sends "now" to skip the wait; rollups are at most this stale.
# (The default of StoreSettings.fold_gather.)
GATHER = 0.5
TAIL_MERGE = columns.SEG_ROWS // 4       # a tail segment smaller than this absorbs the next chunk
TAILS_KEPT = 4                           # partitions whose tail segment the follower keeps in memory
GC_EVERY = 5.0                           # seconds between explicit collections while busy
GC_IDLE = 1.0                            # ... and after this long with nothing to fold
# The follower yields the CPU to the writer and to whatever serves requests in the parent
# (the gateway): acknowledgements never wait for rollups; rollups use what is left over.
FOLLOWER_NICE = 5
DERIVED_MAP = 1 << 36                    # map size of derived files (64 GiB of address space, sparse)
WM = b"wm"
TAIL = b"tail"
NEXTSEG = b"nextseg"
SEQ = b"seq"


def _stored_int(txn: Any, db: Any, key: bytes) -> int:
    """A big-endian counter kept under `key` (0 when absent)."""
    raw = txn.get(key, db=db)
    return int.from_bytes(raw, "big") if raw else 0


def watermark(part: Partition) -> int:
    """Last sequence number folded into the partition's derived file (0: none)."""
    if part.derived is None:
        return 0
    with part.derived.begin() as txn:
        return _stored_int(txn, part.dinfo, WM)


def top_seq(part: Partition) -> int:
    """Last sequence number committed to the partition's rows."""
    with part.events.begin() as txn:
        return _stored_int(txn, part.info, SEQ)


def behind(part: Partition) -> int:
    """Events committed but not folded yet (exact: counts row keys in the log past the watermark)."""
    wm = watermark(part)
    if top_seq(part) <= wm:
        return 0
    n = 0
    with part.events.begin() as txn:
        cur = txn.cursor(part.log)
        if cur.set_range((wm + 1).to_bytes(8, "big")):
            for v in cur.iternext(keys=False):
                n += len(v) // KEY_LEN
    return n


# Key-only indexes, by user and by session: one sorted blob per column segment and tag,
#     b"~" + segment(4) + tag (b"u" user, b"s" session)
#         -> n little-endian uint64 value hashes, ascending, then the n row keys (16 bytes each)
#            in the same order (ties by row key)
# A lookup binary-searches each segment's blob in place (a zero-copy read touches a few pages
# of it). An LMDB key per entry cost ~1 us per event at 250k ev/s: each fold inserted its
# entries all over the B-tree and copied most of the partition's index pages into the commit.
# A blob per fold is written once, in sequence. Partitions folded by earlier builds hold
# one key per entry, tag + hash + row key (no b"~"), and are read too.
IDX_SEG = b"~"
_IDX_ENTRY = 8 + KEY_LEN


def _idx_key(segno: int, tag: bytes) -> bytes:
    return IDX_SEG + segno.to_bytes(4, "big") + tag


def _in_key_order(key_words: np.ndarray) -> bool:
    t, q = key_words[::2], key_words[1::2]
    return len(t) < 2 or bool(np.all((t[1:] > t[:-1]) | ((t[1:] == t[:-1]) & (q[1:] > q[:-1]))))


def _index_blob(hashes: np.ndarray, keys: np.ndarray, key_words: np.ndarray) -> bytes:
    """Entries (hash, row key) sorted by hash then row key, as one blob; `keys` the row keys
    (V16), `key_words` the same as big-endian uint64 pairs. An integer sort either way."""
    if _in_key_order(key_words):
        order = np.argsort(hashes, kind="stable")
    else:
        order = np.lexsort((key_words[1::2], key_words[::2], hashes))
    return hashes[order].astype("<u8").tobytes() + keys[order].tobytes()


def index_blobs(seg: columns.Segment, key_blob: bytes) -> dict[bytes, bytes]:
    """Per tag, the index blob of a segment's rows (their keys `key_blob`, concatenated in
    row order)."""
    keys = np.frombuffer(key_blob, f"V{KEY_LEN}")
    words = np.frombuffer(key_blob, ">u8")
    out = {}
    for tag, name in ((b"s", "session"), (b"u", "user")):
        c = seg.cols.get("c:" + name)
        if c is None:
            continue
        rows = np.flatnonzero(c)
        if not len(rows):
            continue
        hashes = rollups.column_hashes(seg, name)[c[rows]]
        sel_words = words.reshape(-1, 2)[rows].ravel()
        out[tag] = _index_blob(hashes, keys[rows], sel_words)
    return out


def _split_blob(blob: Any) -> tuple[np.ndarray, np.ndarray]:
    n = len(blob) // _IDX_ENTRY
    return np.frombuffer(blob, "<u8", count=n), np.frombuffer(blob, f"V{KEY_LEN}", count=n, offset=8 * n)


def put_index(txn: Any, part: Partition, segno: int, blobs: dict[bytes, bytes]) -> None:
    """Store a fold's index blobs under segment `segno`, merged with what that segment already
    holds (a small tail segment absorbing the next fold)."""
    for tag, blob in blobs.items():
        key = _idx_key(segno, tag)
        old = txn.get(key, db=part.idx)
        if old is not None:
            oh, ok = _split_blob(old)
            nh, nk = _split_blob(blob)
            keys = np.concatenate([ok, nk])
            blob = _index_blob(np.concatenate([oh, nh]), keys, np.frombuffer(keys.tobytes(), ">u8"))
        txn.put(key, blob, db=part.idx)


def index_lookup(txn: Any, part: Partition, tag: bytes, value_hash: int, lo: bytes, hi: bytes,
                 committed: int) -> list[bytes] | None:
    """Row keys in [lo, hi) of the rows whose `tag` attribute (b"u" user, b"s" session) hashes
    to `value_hash`, ascending; None when the index (as of `txn`, a read of the derived file,
    best opened with buffers=True) has not folded every row up to seq `committed` yet."""
    if _stored_int(txn, part.dinfo, WM) < committed:
        return None
    keys: list[bytes] = []
    for s in range(_stored_int(txn, part.dinfo, NEXTSEG)):
        blob = txn.get(_idx_key(s, tag), db=part.idx)
        if blob is None:
            continue
        hashes, rowkeys = _split_blob(blob)
        h = np.uint64(value_hash)
        a, b = int(np.searchsorted(hashes, h, "left")), int(np.searchsorted(hashes, h, "right"))
        keys.extend(k for k in rowkeys[a:b].tolist() if lo <= k < hi)
    prefix = tag + value_hash.to_bytes(8, "big")          # the earlier key-per-entry layout
    cur = txn.cursor(part.idx)
    if cur.set_range(prefix + lo):
        for k in cur.iternext(values=False):
            k = bytes(k)
            if not k.startswith(prefix) or k[9:] >= hi:
                break
            keys.append(k[9:])
    keys.sort()          # segments hold rows of overlapping times when events come late
    return keys


class _Tail:
    """A partition's tail segment as the follower last committed it (see Follower._tails)."""

    __slots__ = ("seg_id", "segment", "positions")

    def __init__(self, seg_id: int, segment: columns.Segment, positions: dict[str, dict[Any, int]]) -> None:
        self.seg_id = seg_id
        self.segment = segment
        self.positions = positions

    def take(self, seg_id: int, header: dict[str, Any]) -> tuple[columns.Segment, dict[str, dict[Any, int]]] | None:
        """(segment, positions) if this is still the stored tail `seg_id` with `header`."""
        seg = self.segment
        if seg_id != self.seg_id or header["n"] != seg.n or sorted(seg.cols) != header["cols"] \
                or header["tmin"] != seg.tmin or header["tmax"] != seg.tmax:
            return None
        return seg, self.positions


class Follower:
    """Folds rows of the partitions returned by `partitions()`."""

    def __init__(self, dictionary: Dictionary, dimensions: tuple[str, ...],
                 partitions: Callable[[], list[Partition]]) -> None:
        self.d = dictionary
        self.dims = tuple((dictionary.code(n), n) for n in dimensions if n != "geo_cell")
        dictionary.commit()
        self.partitions = partitions
        # imported here: only the follower needs Arrow (56 MB and 50 ms that the gateway, the
        # CLI and every reader process would otherwise pay)
        from telemetry.arrowseg import JsonSegmenter
        self.segmenter = JsonSegmenter()
        self.fast_batches = self.slow_batches = 0     # Arrow path vs Python path (for tests and stats)
        # partition file -> the tail segment as last committed, with its dictionaries' value ->
        # code maps: the next small fold merges into it without reading it back and
        # re-indexing its dictionaries (O(tail) Python work per fold: at ~1,000 events/s
        # the larger part of a fold's cost). Checked against the stored header before use.
        self._tails: dict[str, _Tail] = {}
        self.tail_hits = 0                           # folds that used the remembered tail (tests)

    def run_once(self, limit: int = CHUNK) -> int:
        """Fold up to `limit` events of each lagging partition; returns how many were folded."""
        done = 0
        for part in self.partitions():
            if part.closed or part.derived is None:
                continue
            try:
                done += self.fold_next(part, limit)
            except lmdb.Error as e:
                if part.closed:
                    continue
                raise lmdb_error(e, part.derived_path, part.derived, "cannot fold rows into") from e
        return done

    def fold_next(self, part: Partition, limit: int) -> int:
        wm = watermark(part)
        if top_seq(part) <= wm:
            return 0
        entries: list[bytes] = []
        n = 0
        top = wm
        with part.events.begin() as txn:
            cur = txn.cursor(part.log)
            if cur.set_range((wm + 1).to_bytes(8, "big")):
                # each entry: first seq -> the row keys of one commit (whole commits are folded,
                # so the watermark always ends an entry)
                for seq_b, packed in cur:
                    entries.append(packed)
                    n += len(packed) // KEY_LEN
                    top = int.from_bytes(seq_b, "big") + len(packed) // KEY_LEN - 1
                    if n >= limit:
                        break
            key_blob = b"".join(entries)
            keys = np.frombuffer(key_blob, f"V{KEY_LEN}").tolist()    # bytes each, split in C
            found = txn.cursor(part.rows).getmulti(keys)
        if top == wm:
            return 0
        if len(found) != len(keys):          # a row the log names is gone (retention): skip it
            have = dict(found)
            keys = [k for k in keys if k in have]
            key_blob = b"".join(keys)
            found = [(k, have[k]) for k in keys]
        self.fold(part, key_blob, [v for _, v in found], top)
        return len(found)

    def segment(self, key_blob: bytes, values: list[bytes]) -> columns.Segment | None:
        """The column segment of committed rows (their keys concatenated, their values): Arrow's
        reader when it can type the batch, else every row decoded in Python (arrowseg says when)."""
        if not values:
            return None
        times = np.frombuffer(key_blob, ">u8")[::2].astype(np.int64)
        seg = self.segmenter.segment(times, values, self.d)
        if seg is not None:
            self.fast_batches += 1
            return seg
        self.slow_batches += 1
        rows = decode_row_batch(values)
        return columns.build_segment_parts(times, [r[1] for r in rows], [r[2] for r in rows], self.d)

    def fold(self, part: Partition, key_blob: bytes, values: list[bytes], top: int) -> None:
        """Fold committed rows (keys concatenated in seq order, values), up to seq `top`."""
        # taken out while folding: a fold that fails leaves no half-merged tail behind
        remembered = self._tails.pop(str(part.derived_path), None)
        d = self.d
        seg = self.segment(key_blob, values)
        deltas = rollups.compute(seg, self.dims, d) if seg is not None else None
        d.commit()   # codes before anything that refers to them
        with part.derived.begin(write=True) as txn:
            if _stored_int(txn, part.dinfo, WM) >= top:
                return
            if seg is not None:
                tail_raw = txn.get(TAIL, db=part.dinfo)
                nxt = _stored_int(txn, part.dinfo, NEXTSEG)
                target, merged = nxt, seg
                positions: dict[str, dict[Any, int]] = {}
                if tail_raw is not None:
                    tail = int.from_bytes(tail_raw, "big")
                    h = columns.read_header(txn, part.segs, tail)
                    if h is not None and h["n"] < TAIL_MERGE and h["n"] + seg.n <= columns.SEG_ROWS:
                        known = remembered.take(tail, h) if remembered is not None else None
                        if known is not None:
                            self.tail_hits += 1
                            base, positions = known
                        else:
                            base = columns.read_segment(txn, part.segs, tail)
                        merged = columns.concat(base, seg, positions)
                        target = tail
                if target == nxt:
                    txn.put(NEXTSEG, (nxt + 1).to_bytes(8, "big"), db=part.dinfo)
                txn.put(TAIL, target.to_bytes(8, "big"), db=part.dinfo)
                txn.cursor(part.segs).putmulti(columns.encode_segment(target, merged))
                rollups.merge_into(txn, part.roll, deltas)
                put_index(txn, part, target, index_blobs(seg, key_blob))
            txn.put(WM, top.to_bytes(8, "big"), db=part.dinfo)
        if seg is not None and merged.n < TAIL_MERGE:  # committed, and the next fold may merge into it
            self._tails[str(part.derived_path)] = _Tail(target, merged, positions)
            while len(self._tails) > TAILS_KEPT:  # late events reach old partitions: keep the latest few
                del self._tails[next(iter(self._tails))]


# ---- the child process -------------------------------------------------------------------

class _Registry:
    """The child's own handles on every partition file (re-scanned while running)."""

    def __init__(self, pdir: Path, sync: bool, derived_map: int) -> None:
        self.pdir = pdir
        self.sync = sync
        self.derived_map = derived_map
        self.parts: dict[str, Partition] = {}
        self.last_scan = 0.0

    def __call__(self) -> list[Partition]:
        now = time.monotonic()
        if now - self.last_scan > 0.2:
            self.last_scan = now
            seen = set()
            for f in self.pdir.glob("*.events.lmdb"):
                parsed = parse_name(f.name)
                if parsed is None:
                    continue
                stem = parsed[0].stem
                seen.add(stem)
                if stem not in self.parts:
                    try:
                        self.parts[stem] = Partition(self.pdir, parsed[0], DERIVED_MAP, self.sync, follower=True,
                                                     derived_map=self.derived_map)
                    except Exception:  # noqa: BLE001 - half-created by the writer: next scan
                        continue
            for stem in list(self.parts):
                if stem not in seen:        # deleted by retention
                    self.parts.pop(stem).close()
        return sorted(self.parts.values(), key=lambda p: (p.name.start_us, p.name.cls))


def child_main(root: str, dimensions: tuple[str, ...], sync: bool, derived_map: int, conn: Any,
               parent_pid: int, gather: float = GATHER) -> None:
    """Entry point of the follower process: fold until the parent says stop or goes away."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the parent decides when we stop
    try:
        os.nice(FOLLOWER_NICE)
    except OSError:
        pass
    try:
        d = Dictionary(Path(root) / "dict.lmdb", sync=sync)
        reg = _Registry(Path(root) / "p", sync, derived_map)
        f = Follower(d, dimensions, reg)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"follower could not start: {e}"))
        return
    conn.send(("ready", None))
    last_error = ""
    # Folding allocates hundreds of thousands of short-lived dicts and lists a second and
    # makes no reference cycles on purpose: the cyclic collector's automatic passes would
    # double the cost of decoding. Collect explicitly, when idle or every GC_EVERY seconds.
    gc.disable()
    collections = GcPolicy(time.monotonic())
    wait = 0.0             # seconds to wait for a message before the next fold
    empty_polls = 0        # polls in a row that found nothing to fold
    while True:
        eager = False
        while conn.poll(wait):
            try:
                msg = conn.recv()
            except EOFError:
                return
            if msg == "stop":
                _drain(f)
                conn.send(("stopped", None))
                return
            eager = eager or msg == "now"   # a flush is waiting: fold at once
            wait = 0.0
        if os.getppid() != parent_pid:
            return
        try:
            n = f.run_once()
            last_error = ""
        except Exception as e:  # noqa: BLE001 - reported once, retried
            n = 0
            text = f"{type(e).__name__}: {e}"
            if text != last_error:
                last_error = text
                try:
                    conn.send(("error", text + "\n" + traceback.format_exc(limit=3)))
                except OSError:
                    return
            time.sleep(0.5)
        if collections.polled(n, time.monotonic()):
            gc.collect()
            collections.collected(time.monotonic())
        empty_polls = 0 if n else empty_polls + 1
        if n == 0:
            wait = idle_wait(empty_polls)
        elif n < CHUNK // 4 and not eager:
            wait = gather        # let a small backlog grow into a bigger segment
        else:
            wait = 0.0


def idle_wait(empty_polls: int) -> float:
    """How long to wait for a message after `empty_polls` polls in a row found nothing to
    fold: IDLE_SLEEP after the first, doubling up to IDLE_SLEEP_MAX while the store stays idle.

    Why: each empty poll opens read transactions on the partitions (~0.2 ms); polling every
    20 ms kept an idle gateway's follower at ~11 ms of CPU a second. A message (`Store.flush`
    sends "now", `close` sends "stop") still wakes it at once, so only rollups seen without
    a flush can be up to IDLE_SLEEP_MAX later after a quiet spell.
    """
    return min(IDLE_SLEEP_MAX, IDLE_SLEEP * 2 ** min(max(empty_polls - 1, 0), 16))


class GcPolicy:
    """When the follower runs the cyclic collector (disabled otherwise): once it has folded
    something since the last collection, and either has been busy for GC_EVERY seconds or
    has found nothing to fold for GC_IDLE seconds in a row.

    Why not at the first empty poll: under steady load the gateway commits a batch every
    0.5-1 s and the follower, having folded one, often polls once before the next arrives.
    A full collection at each such gap cost the follower ~40% more CPU per request
    (py-spy: a third of its samples in gc.collect) for no memory it would not free 5 s later.
    """

    def __init__(self, now: float) -> None:
        self.last_gc = now
        self.folded = 0                      # events folded since the last collection
        self.idle_since: float | None = None  # the first of the empty polls since the last fold

    def polled(self, folded: int, now: float) -> bool:
        """Note a poll that folded `folded` events; True when a collection is due."""
        self.folded += folded
        self.idle_since = None if folded else (self.idle_since if self.idle_since is not None else now)
        if not self.folded:
            return False
        idle = self.idle_since is not None and now - self.idle_since >= GC_IDLE
        return idle or now - self.last_gc > GC_EVERY

    def collected(self, now: float) -> None:
        self.last_gc, self.folded = now, 0


def _drain(f: Follower) -> None:
    for _ in range(10_000):
        try:
            if f.run_once() == 0:
                return
        except Exception:  # noqa: BLE001 - the next open catches up
            return
