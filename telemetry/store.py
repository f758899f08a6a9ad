"""The LMDB event store: partition files, the one writer thread, record/submit, listing.

Threads:
- callers validate events (`record`/`submit`) and enqueue them;
- the writer thread owns every write to the events files: it drains the queue (group
  commit: a batch closes at `batch_max` events or after `batch_interval` of waiting, and
  takes whatever else is already queued, up to BACKLOG_BATCHES x batch_max), writes rows with
  `putmulti(append=True)` plus the id index, commits (fsync with sync=True) and only then
  resolves the callers' futures;
- the follower thread turns committed batches into column segments, rollups and key-only
  indexes (the derived files), off the acknowledgement path. On open it catches up from the
  rows (its watermark is the last sequence number it folded in, per partition).
Queries read with short read transactions from any thread.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import hashlib
import itertools
import json
import operator
import os
import shutil
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import lmdb

from telemetry import follower, rollups
from telemetry.dictionary import Dictionary
from telemetry.errors import (EventError, QueryError, StoreClosedError, StoreError, StoreFullError,
                              StoreIOError, TelemetryError)
from telemetry.events import (KEY_LEN, Event, coerce_event, decode_row, encode_rows, generated_id_ms, row_has_id,
                              row_key, split_key)
from telemetry.partitions import (Partition, PartitionName, class_rule, lmdb_error, parse_name, period_of,
                                  retention_class, start_datetime)
from telemetry.predicate import compile_all
from telemetry.query import (EventPage, Filter, FunnelQuery, FunnelResult, ListQuery, Query, QueryResult,
                             validate_list_query)
from telemetry.timebuckets import to_us

DEFAULT_DIMENSIONS = ("org", "project", "path", "referrer_host", "status", "cache", "group", "country",
                      "geo_cell", "campaign")
INDEXED = ("user", "session")          # key-only secondary indexes
MAX_PENDING = 1_000_000                # events queued for the writer before submit refuses
BACKLOG_BATCHES = 4                    # a batch takes up to this many batch_max of queued events
# (16 measured no faster and doubled the writer's private memory: 229 MiB against 95 at 1, 119 at 4)
RETENTION_EVERY = 3600.0
FOLLOWER_START_TIMEOUT = 60.0
_SEQ = b"seq"


@dataclass(frozen=True)
class StoreSettings:
    """How the store keeps events (built by proxy/config.py from the `telemetry:` section)."""

    path: Path
    partition: str = "day"                       # "day" | "week"
    map_size: int = 1 << 30                      # initial map per file; grows by doubling
    max_map_size: int = 1 << 40                  # growth stops here: StoreFullError
    retention: Mapping[str, timedelta] = field(default_factory=dict)   # type, "prefix.*" or "*" -> keep
    dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS
    batch_max: int = 1000
    batch_interval: float = 0.010
    sync: bool = True
    follower: str = "process"                    # "process" (own core, no GIL sharing) | "thread"
    # The writer thread needs the GIL back after every fsync to acknowledge; with CPython's
    # default 5 ms switch interval it waits up to 5 ms behind whichever thread is building
    # events (measured: 243-247k ev/s fed instead of 250k). The store lowers the process's
    # interval to this (never raises it); None leaves it alone.
    switch_interval: float | None = 0.001
    # The follower process waits up to this long for a small backlog to grow before folding
    # it (follower.GATHER explains why); `flush()` never waits for it.
    fold_gather: float = 0.5

    def validate(self) -> StoreSettings:
        if self.partition not in ("day", "week"):
            raise StoreError(f"telemetry.partition: {self.partition!r} is not one of day, week")
        if self.map_size < 1 << 16 or self.max_map_size < self.map_size:
            raise StoreError(f"telemetry.map_size: {self.map_size} must be >= 64 KiB and <= max_map_size "
                             f"({self.max_map_size})")
        for k, v in self.retention.items():
            if not isinstance(v, timedelta) or v <= timedelta(0):
                raise StoreError(f"telemetry.retention.{k}: expected a positive duration, got {v!r}")
        if self.follower not in ("process", "thread"):
            raise StoreError(f"telemetry.follower: {self.follower!r} is not one of process, thread")
        if self.batch_max < 1 or self.batch_interval < 0:
            raise StoreError("telemetry.batch_max must be >= 1 and batch_interval >= 0")
        if not 0 <= self.fold_gather <= 60:
            raise StoreError(f"telemetry.fold_gather: {self.fold_gather!r} must be between 0 and 60 (seconds)")
        if self.switch_interval is not None and not 0 < self.switch_interval <= 1:
            raise StoreError(f"telemetry.switch_interval: {self.switch_interval!r} must be > 0 and <= 1 (seconds)")
        return self


@dataclass(frozen=True)
class RecordResult:
    accepted: int
    duplicates: int
    errors: list[tuple[int, str]]                # (index in the batch, message naming the field)


@dataclass(frozen=True)
class StoreStats:
    events: int
    bytes: int
    partitions: int
    oldest: datetime | None
    newest: datetime | None
    pending: int = 0                             # events committed but not yet in rollups/segments
    files: list[dict[str, Any]] = field(default_factory=list)


class _Pending:
    __slots__ = ("events", "errors", "future", "accepted", "duplicates")

    def __init__(self, events: list[Event], errors: list[tuple[int, str]]) -> None:
        self.events = events
        self.errors = errors
        self.future: concurrent.futures.Future[RecordResult] = concurrent.futures.Future()
        self.accepted = 0
        self.duplicates = 0


class _Owners:
    """Whose events a partition write holds: whole pendings (the common case, accounted per
    pending), or one pending per event (a batch split across partitions)."""

    __slots__ = ("whole", "per_event")

    def __init__(self, whole: list[_Pending] | None, per_event: list[_Pending] | None) -> None:
        self.whole, self.per_event = whole, per_event

    def each(self) -> list[_Pending]:
        """The owner of each event, in order."""
        if self.per_event is None:
            self.per_event = [p for p in self.whole or () for _ in p.events]
        return self.per_event

    def accept_all(self) -> None:
        if self.whole is not None:
            for p in self.whole:
                p.accepted += len(p.events)
            return
        accepted: dict[_Pending, int] = {}
        for o in self.per_event or ():
            accepted[o] = accepted.get(o, 0) + 1
        for o, n in accepted.items():
            o.accepted += n


_ALL_EVENTS = frozenset({Event})
_PACKED = operator.attrgetter("packed_attrs")
_UNFRESH = Event.fresh.__set__          # type: ignore[attr-defined]  # the slot's C setter
_FALSE = itertools.repeat(False)
_consume = collections.deque(maxlen=0).extend


class _RWLock:
    """Many readers or one exclusive holder (map growth, retention close files under it)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._writer = True
            while self._readers:
                self._cond.wait()

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Reading:
    def __init__(self, lock: _RWLock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.acquire_read()

    def __exit__(self, *exc: object) -> None:
        self.lock.release_read()


class Store:
    """An open event store. Thread-safe; one per directory per process."""

    def __init__(self, settings: StoreSettings, readonly: bool = False) -> None:
        self.settings = settings
        self.readonly = readonly
        self.root = Path(settings.path)
        self.pdir = self.root / "p"
        self._kind = "w" if settings.partition == "week" else "d"
        self._parts: dict[str, Partition] = {}
        self._parts_lock = threading.Lock()
        self._rw = _RWLock()
        self._closed = False
        self._seq = 0
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._writing = False
        self._follow_error: BaseException | None = None
        self._nudge = threading.Event()           # "new rows committed" (thread follower)
        self._stop_follower = threading.Event()
        self._child: Any = None                   # the follower process
        self._conn: Any = None
        self._conn_lock = threading.Lock()         # sends to the follower process (flush, close)
        self._class_of: dict[str, str] = {}
        self._last_retention = 0.0
        self.dictionary: Dictionary
        self._writer: threading.Thread | None = None
        self._follower: threading.Thread | None = None

    # ---- open / close ------------------------------------------------------------------

    @classmethod
    def open(cls, settings: StoreSettings, *, readonly: bool = False) -> Store:
        """Open (creating when missing) the store at settings.path and start its threads.

        With readonly=True nothing is written and no thread starts (for `portico store stats`
        while a gateway runs).

        Raises:
            StoreIOError: a file cannot be opened (names it).
        """
        settings.validate()
        self = cls(settings, readonly)
        root = self.root
        try:
            if readonly:
                if not (root / "dict.lmdb").exists():
                    raise StoreIOError(f"{root}: no telemetry store here (dict.lmdb missing)")
            else:
                self.pdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreIOError(f"cannot create the store directory {root}: {e.strerror or e}") from e
        self.dictionary = Dictionary(root / "dict.lmdb", sync=settings.sync, readonly=readonly)
        for f in sorted(self.pdir.glob("*.events.lmdb")) if self.pdir.exists() else []:
            parsed = parse_name(f.name)
            if parsed is None:
                continue
            part = Partition(self.pdir, parsed[0], settings.map_size, settings.sync, readonly=readonly,
                             derived_map=self._derived_map)
            self._parts[parsed[0].stem] = part
            with part.events.begin() as txn:
                raw = txn.get(_SEQ, db=part.info)
                if raw is not None:
                    self._seq = max(self._seq, int.from_bytes(raw, "big"))
        if not readonly:
            self.apply_retention()
            self._start_follower()
            if settings.switch_interval is not None and sys.getswitchinterval() > settings.switch_interval:
                sys.setswitchinterval(settings.switch_interval)
            self._writer = threading.Thread(target=self._writer_loop, name="telemetry-writer", daemon=True)
            self._writer.start()
        return self

    def _start_follower(self) -> None:
        s = self.settings
        if s.follower == "thread":
            self._follower = threading.Thread(target=self._follower_thread, name="telemetry-follower", daemon=True)
            self._follower.start()
            return
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")   # never fork a process that has threads
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=follower.child_main, name="portico-telemetry-follower", daemon=True,
                           args=(str(self.root), tuple(s.dimensions), s.sync, self._derived_map, child, os.getpid(),
                                 s.fold_gather))
        proc.start()
        child.close()
        self._child, self._conn = proc, parent
        if not parent.poll(FOLLOWER_START_TIMEOUT):
            proc.kill()
            raise StoreIOError(f"the follower process for {self.root} did not start within "
                               f"{FOLLOWER_START_TIMEOUT:.0f} s")
        kind, text = parent.recv()
        if kind != "ready":
            proc.join(5)
            raise StoreIOError(f"the follower process for {self.root} failed: {text}")

    @property
    def _derived_map(self) -> int:
        return min(self.settings.max_map_size, follower.DERIVED_MAP)

    def close(self) -> None:
        """Commit what is queued, let the follower catch up, and close every file."""
        if self._closed:
            return
        if not self.readonly:
            try:
                self.flush(timeout=60)
            except (TelemetryError, TimeoutError):
                pass
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join(timeout=30)
        self._stop_follower.set()
        self._nudge.set()
        if self._follower is not None:
            self._follower.join(timeout=30)
        if self._child is not None:
            try:
                with self._conn_lock:
                    self._conn.send("stop")
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and self._conn.poll(deadline - time.monotonic()):
                    if self._conn.recv()[0] == "stopped":
                        break
            except (EOFError, OSError):
                pass
            self._child.join(timeout=10)
            if self._child.is_alive():
                self._child.kill()
            self._conn.close()
        self._rw.acquire_write()
        try:
            for p in self._parts.values():
                p.close()
            self.dictionary.close()
        finally:
            self._rw.release_write()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the telemetry store at {self.root} is closed")

    # ---- partitions --------------------------------------------------------------------

    def _class(self, etype: str) -> str:
        c = self._class_of.get(etype)
        if c is None:
            c = self._class_of[etype] = retention_class(etype, self.settings.retention)
        return c

    def _partition(self, cls: str, time_us: int) -> Partition:
        period, s, e = period_of(time_us, self._kind)
        stem = f"{cls}@{period}"
        p = self._parts.get(stem)
        if p is None:
            with self._parts_lock:
                p = self._parts.get(stem)
                if p is None:
                    p = Partition(self.pdir, PartitionName(cls, period, s, e), self.settings.map_size,
                                  self.settings.sync, derived_map=self._derived_map)
                    self._parts[stem] = p
        return p

    def partitions(self, start_us: int = 0, end_us: int = 1 << 62, types: tuple[str, ...] = ()) -> list[Partition]:
        """Partitions overlapping [start_us, end_us) that can hold `types` (all when empty), oldest first."""
        classes = {self._class(t) for t in types} if types else None
        out = [p for p in list(self._parts.values())
               if not p.closed and p.name.start_us < end_us and p.name.end_us > start_us
               and (classes is None or p.name.cls in classes)]
        return sorted(out, key=lambda p: (p.name.start_us, p.name.cls))

    def reading(self) -> _Reading:
        """Context manager held by readers so map growth / retention wait for them."""
        return _Reading(self._rw)

    # ---- record ------------------------------------------------------------------------

    def _prepare(self, events: Sequence[Event | Mapping[str, Any]]) -> _Pending:
        self._check_open()
        if self.readonly:
            raise StoreError(f"the store at {self.root} is open read-only")
        if type(events) is list and _ALL_EVENTS >= set(map(type, events)) \
                and None not in map(_PACKED, events):      # made by make_event: checked in C
            return _Pending(list(events), [])
        good: list[Event] = []
        errors: list[tuple[int, str]] = []
        for i, item in enumerate(events):
            try:
                good.append(item if type(item) is Event and item.packed_attrs is not None else coerce_event(item))
            except EventError as e:
                errors.append((i, str(e)))
        return _Pending(good, errors)

    def submit(self, events: Sequence[Event | Mapping[str, Any]]) -> concurrent.futures.Future[RecordResult]:
        """Validate and enqueue; the future resolves once the events are committed (durable).

        Never blocks on I/O: for asyncio callers, `await asyncio.wrap_future(store.submit(...))`.

        Raises:
            StoreClosedError: the store is closed.
            StoreFullError: more than MAX_PENDING events are waiting for the writer.
        """
        return self._enqueue(self._prepare(events)).future

    def _enqueue(self, pending: _Pending) -> _Pending:
        if not pending.events:
            pending.future.set_result(RecordResult(0, 0, pending.errors))
            return pending
        with self._cond:
            if self._closed:
                raise StoreClosedError(f"the telemetry store at {self.root} is closed")
            if self._queued + len(pending.events) > MAX_PENDING:
                raise StoreFullError(f"the writer of {self.root} has {self._queued} events queued "
                                     f"(limit {MAX_PENDING}); the disk is too slow or the store is stuck")
            self._queue.append(pending)
            self._queued += len(pending.events)
            self._cond.notify()
        return pending

    def record(self, events: Sequence[Event | Mapping[str, Any]], *, wait: bool = True,
               timeout: float | None = None) -> RecordResult:
        """Validate and record events; bad ones are listed in `errors`, good ones still accepted.

        With wait=True, returns only after the batch holding them is committed (fsync'd when
        settings.sync): an accepted event survives a crash right after. With wait=False,
        returns at once with `accepted` = the number queued (duplicates not yet known).

        Raises:
            StoreClosedError, StoreFullError, StoreIOError: the batch could not be committed.
            TimeoutError: not committed within `timeout` seconds (it may still be).
        """
        pending = self._enqueue(self._prepare(events))
        if not wait:
            return RecordResult(len(pending.events), 0, pending.errors)
        try:
            return pending.future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"events not committed within {timeout} s (they may still be)") from None

    # ---- the writer --------------------------------------------------------------------

    def _writer_loop(self) -> None:
        s = self.settings
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait(timeout=60)
                    if not self._queue and time.monotonic() - self._last_retention > RETENTION_EVERY:
                        break
                if self._closed and not self._queue:
                    return
                batch: list[_Pending] = []
                n = 0
                deadline = time.monotonic() + s.batch_interval
                # A batch closes at batch_max events, but whatever is already waiting joins it
                # (up to BACKLOG_BATCHES x batch_max): after a slow fsync the writer catches up
                # in a few larger commits instead of one batch_max per fsync.
                limit = s.batch_max * BACKLOG_BATCHES
                while True:
                    while self._queue and n < limit:
                        p = self._queue.popleft()
                        batch.append(p)
                        n += len(p.events)
                    if n >= s.batch_max or self._closed or not batch:
                        break
                    # Group commit: wait a little for more events while the batch is small.
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait(timeout=left):
                        while self._queue and n < limit:
                            p = self._queue.popleft()
                            batch.append(p)
                            n += len(p.events)
                        break
                self._queued -= n
                self._writing = bool(batch)
            if batch:
                try:
                    self._write(batch)
                except BaseException as e:  # noqa: BLE001 - a writer bug must not hang every caller
                    err = StoreIOError(f"the writer of {self.root} failed: {e!r}")
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(err)
                finally:
                    self._writing = False
            if time.monotonic() - self._last_retention > RETENTION_EVERY:
                try:
                    self.apply_retention()
                except TelemetryError:
                    pass

    def _write(self, batch: list[_Pending]) -> None:
        events = batch[0].events if len(batch) == 1 else [e for p in batch for e in p.events]
        groups = self._group_by_partition(events, batch)
        handed = False
        try:
            for part, evs, own in groups:
                self._write_partition(part, evs, own)
                handed = True
        except BaseException as e:  # noqa: BLE001 - reported to every waiting caller
            err = e if isinstance(e, TelemetryError) else StoreIOError(f"writing to {self.root}: {e!r}")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            # rows of partitions already committed still go to the follower
        for p in batch:
            if not p.future.done():
                p.future.set_result(RecordResult(p.accepted, p.duplicates, p.errors))
        if handed:
            self._nudge.set()

    def _group_by_partition(self, events: list[Event], batch: list[_Pending]
                            ) -> list[tuple[Partition, list[Event], _Owners]]:
        """(partition, its events, their pendings), in first-seen order.

        The common batch (a few seconds of one retention class) is one partition: that is
        checked with a type set and the time range, not event by event, and its owners are
        the batch's pendings, whole (no per-event owner list).
        """
        types = {e.type for e in events}
        classes = {self._class_of.get(t) or self._class(t) for t in types}
        times = [e.time_us for e in events]
        if len(classes) == 1:
            part = self._partition(next(iter(classes)), min(times))
            if max(times) < part.name.end_us:
                return [(part, events, _Owners(batch, None))]
        owners = [p for p in batch for _ in p.events]
        groups: dict[str, tuple[Partition, list[Event], list[_Pending]]] = {}
        class_of = self._class_of
        cur: tuple[Partition, list[Event], list[_Pending]] | None = None
        lo = hi = 0
        cls = ""
        for e, o in zip(events, owners):
            c = class_of[e.type]
            t = e.time_us
            if cur is None or c != cls or not lo <= t < hi:
                part = self._partition(c, t)
                cur = groups.get(part.name.stem)
                if cur is None:
                    cur = groups[part.name.stem] = (part, [], [])
                cls, lo, hi = c, part.name.start_us, part.name.end_us
            cur[1].append(e)
            cur[2].append(o)
        return [(part, evs, _Owners(None, own)) for part, evs, own in groups.values()]

    def _write_partition(self, part: Partition, events: list[Event], who: _Owners) -> None:
        """Commit one partition's share of a batch, counting accepted and duplicate events
        on their owners.

        Hot path (about 2 us an event): list comprehensions, no per-event method calls, the
        row bytes concatenated from parts packed earlier; rows go in with putmulti(append=True)
        whenever the batch sorts after what is stored.
        """
        while True:
            seq = self._seq
            try:
                with part.events.begin(write=True) as txn:
                    ids_cur = txn.cursor(part.ids)
                    idkeys = [e.id.encode() for e in events]
                    # ids this process just generated cannot be stored yet: look up the others
                    stale = [ik for e, ik in zip(events, idkeys) if not e.fresh]
                    found = self._stored_ids(txn, part, ids_cur, stale) if stale else set()
                    if not found and len(set(idkeys)) == len(idkeys):
                        keep, dups, owners = events, [], None
                    else:
                        seen = set(found)
                        keep, kept_ids, kept_owners, dups = [], [], [], []
                        for e, o, ik in zip(events, who.each(), idkeys):
                            if ik in seen:
                                dups.append(o)
                            else:
                                seen.add(ik)
                                keep.append(e)
                                kept_ids.append(ik)
                                kept_owners.append(o)
                        idkeys, owners = kept_ids, kept_owners
                    if keep:
                        keys = list(map(row_key, [e.time_us for e in keep], range(seq + 1, seq + 1 + len(keep))))
                        seq += len(keep)
                        rows = list(zip(keys, encode_rows(keep, idkeys)))
                        if sorted(keys) != keys:
                            rows.sort()
                        cur = txn.cursor(part.rows)
                        last = cur.key() if cur.last() else b""
                        cur.putmulti(rows, append=rows[0][0] > last)
                        if stale:    # supplied ids get an index entry; generated ones are found by time
                            ids = sorted((ik, k) for e, ik, k in zip(keep, idkeys, keys) if not e.fresh)
                            if ids:
                                last_id = ids_cur.key() if ids_cur.last() else b""
                                ids_cur.putmulti(ids, append=ids[0][0] > last_id)
                        # the follower's feed, one entry per commit: first seq -> the row keys
                        # of seqs first.. in commit order (16 bytes each)
                        first = seq - len(keep) + 1
                        txn.put(first.to_bytes(8, "big"), b"".join(keys), db=part.log, append=True)
                        txn.put(_SEQ, seq.to_bytes(8, "big"), db=part.info)
            except lmdb.MapFullError as e:
                self._grow(part, e)
                continue
            except lmdb.Error as e:
                raise lmdb_error(e, part.events_path, part.events, "cannot write events to") from e
            self._seq = seq
            # every event kept: the write's owners; else the owners of the kept ones
            (who if owners is None else _Owners(None, owners)).accept_all()
            for o in dups:
                o.duplicates += 1
            # committed: a retry of the same Event must be looked up (a C loop over the slot)
            _consume(map(_UNFRESH, keep, _FALSE))
            return

    @staticmethod
    def _stored_ids(txn: Any, part: Partition, ids_cur: Any, idkeys: list[bytes]) -> set[bytes]:
        """Which of `idkeys` the partition already holds: supplied ids through the id index,
        generated ones (`new_id` shape) by scanning the rows of the millisecond they name."""
        uniq = sorted(set(idkeys))
        found = {k for k, _ in ids_cur.getmulti(uniq)}
        rows = None
        for ik in uniq:
            ms = None if ik in found else generated_id_ms(ik)
            if ms is None:
                continue
            rows = rows or txn.cursor(part.rows)
            end = row_key(ms * 1000 + 1000, 0)
            if rows.set_range(row_key(ms * 1000, 0)):
                for k, v in rows:
                    if k >= end:
                        break
                    if row_has_id(v, ik):
                        found.add(ik)
                        break
        return found

    def _grow(self, part: Partition, cause: BaseException, env: lmdb.Environment | None = None) -> None:
        """Double a full map (up to max_map_size) with every reader paused."""
        env = env or part.events
        size = env.info()["map_size"]
        if size >= self.settings.max_map_size:
            raise lmdb_error(cause, part.events_path if env is part.events else part.derived_path, env,
                             "map full (max_map_size reached) for") from cause
        self._rw.acquire_write()
        try:
            env.set_mapsize(min(size * 2, self.settings.max_map_size))
        finally:
            self._rw.release_write()

    # ---- the follower ------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything recorded so far is committed and folded into rollups/segments.

        Raises:
            TimeoutError: not caught up within `timeout` seconds.
            StoreError: the follower failed (the error it hit) or its process died.
        """
        if self.readonly or self._writer is None:
            return
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else deadline - time.monotonic()

        while self._writer_busy() and not self._closed:
            if (x := left()) is not None and x <= 0:
                raise TimeoutError(f"writer did not drain within {timeout} s")
            time.sleep(0.002)
        self._nudge.set()
        while True:
            self._check_follower()
            lagging = [p for p in self.partitions() if follower.watermark(p) < follower.top_seq(p)]
            if not lagging:
                return
            if (x := left()) is not None and x <= 0:
                raise TimeoutError(f"rollups not caught up within {timeout} s "
                                   f"({sum(follower.behind(p) for p in lagging)} events behind)")
            self._nudge.set()
            # again and again: the process may take a "now" before it has even seen a new
            # partition's file, then wait fold_gather after folding it
            self._hurry_child()
            time.sleep(0.005)

    def _hurry_child(self) -> None:
        """Tell the follower process to fold now instead of letting a small backlog grow."""
        if self._child is None or self._conn is None:
            return
        try:
            with self._conn_lock:
                self._conn.send("now")
        except (OSError, ValueError):       # gone or closed: _check_follower says so
            pass

    def _check_follower(self) -> None:
        """Raise what the follower reported; StoreIOError if its process died."""
        if self._conn is not None:
            try:
                while self._conn.poll():
                    kind, text = self._conn.recv()
                    if kind == "error":
                        self._follow_error = StoreIOError(f"follower of {self.root}: {text}")
            except (EOFError, OSError):
                pass
            if self._child is not None and not self._child.is_alive() and not self._closed:
                raise StoreIOError(f"the follower process of {self.root} exited (code {self._child.exitcode}); "
                                   "reopen the store to restart it")
        if self._follow_error is not None:
            e, self._follow_error = self._follow_error, None
            raise e if isinstance(e, TelemetryError) else StoreIOError(f"follower failed: {e!r}")

    def _writer_busy(self) -> bool:
        with self._cond:
            return bool(self._queue) or self._queued > 0 or self._writing

    def _follower_thread(self) -> None:
        f = follower.Follower(self.dictionary, self.settings.dimensions, self.partitions)
        while not self._stop_follower.is_set():
            try:
                n = f.run_once()
            except BaseException as e:  # noqa: BLE001 - reported by flush()
                self._follow_error = e
                n = 0
                self._stop_follower.wait(0.5)
            if n == 0:
                self._nudge.wait(follower.IDLE_SLEEP * 5)
                self._nudge.clear()
        try:
            while f.run_once():
                pass
        except BaseException:  # noqa: BLE001 - the next open catches up
            pass

    # ---- reading -----------------------------------------------------------------------

    def query(self, q: Query) -> QueryResult:
        """Aggregate (see telemetry.query.Query). Raises QueryError naming the bad field."""
        from telemetry.engine import run_query
        self._check_open()
        with self.reading():
            return run_query(self, q)

    def funnel(self, q: FunnelQuery) -> FunnelResult:
        """Ordered-step conversion per actor (see telemetry.query.FunnelQuery)."""
        from telemetry.engine import run_funnel
        self._check_open()
        with self.reading():
            return run_funnel(self, q)

    def list_events(self, q: ListQuery) -> EventPage:
        """Raw events in time order over [start, end) with filters; keyset-paginated.

        The page token holds the last row key returned, so it stays valid (no repeats, no
        gaps among older rows) while new events arrive.
        """
        self._check_open()
        validate_list_query(q)
        s_us, e_us = to_us(q.start), to_us(q.end)
        fp = _fingerprint(q)
        after: bytes | None = None
        if q.page_token:
            after = _decode_token(q.page_token, fp)
        match = compile_all(tuple(q.types), tuple(q.filters), q.geo)
        out: list[tuple[bytes, Event]] = []
        lo, hi = row_key(s_us, 0), row_key(e_us, 0)
        with self.reading():
            parts = self.partitions(s_us, e_us, tuple(q.types))
            if q.descending:
                parts.reverse()
            idx = _index_filter(q.filters)
            for part in parts:
                keys = self._index_keys(part, idx, lo, hi, after, q.descending) if idx is not None else None
                if keys is not None:
                    with part.events.begin(buffers=False) as txn:
                        for k in keys:
                            v = txn.get(k, db=part.rows)
                            if v is None:
                                continue
                            e = decode_row(k, v)
                            if match(e):
                                out.append((k, e))
                                if len(out) > q.limit:
                                    break
                else:
                    self._scan(part, lo, hi, after, q.descending, match, out, q.limit + 1)
                if len(out) > q.limit:
                    break
        token = None
        if len(out) > q.limit:
            out = out[:q.limit]
            token = _encode_token(out[-1][0], fp)
        return EventPage([e for _, e in out], token)

    def _scan(self, part: Partition, lo: bytes, hi: bytes, after: bytes | None, desc: bool,
              match: Any, out: list[tuple[bytes, Event]], want: int) -> None:
        with part.events.begin() as txn:
            cur = txn.cursor(part.rows)
            if not desc:
                start = lo if after is None or after < lo else after
                if not cur.set_range(start):
                    return
                if after is not None and cur.key() == after:
                    if not cur.next():
                        return
                for k, v in cur:
                    if k >= hi:
                        return
                    e = decode_row(k, v)
                    if match(e):
                        out.append((k, e))
                        if len(out) >= want:
                            return
            else:
                start = hi if after is None or after > hi else after
                if cur.set_range(start):
                    ok = cur.prev()
                else:
                    ok = cur.last()
                while ok:
                    k = cur.key()
                    if k < lo:
                        return
                    if k < start:
                        e = decode_row(k, cur.value())
                        if match(e):
                            out.append((k, e))
                            if len(out) >= want:
                                return
                    ok = cur.prev()

    def _index_keys(self, part: Partition, idx: tuple[bytes, Any], lo: bytes, hi: bytes,
                    after: bytes | None, desc: bool) -> list[bytes] | None:
        tag, value = idx
        if part.derived is None:
            return None
        committed = follower.top_seq(part)          # before the index: every row acknowledged by now
        with part.derived.begin(buffers=True) as txn:      # blobs read in place
            keys = follower.index_lookup(txn, part, tag, rollups.value_hash(value), lo, hi, committed)
        if keys is None:          # the follower is behind: the caller scans the rows instead
            return None
        if desc:
            keys.reverse()
            if after is not None:
                keys = [k for k in keys if k < after]
        elif after is not None:
            keys = [k for k in keys if k > after]
        return keys

    def stats(self) -> StoreStats:
        """Events, bytes on disk, partitions, oldest/newest event time, follower lag."""
        self._check_open()
        events, size, oldest, newest = 0, 0, None, None
        files = []
        with self.reading():
            parts = self.partitions()
            for part in parts:
                with part.events.begin() as txn:
                    n = txn.stat(part.rows)["entries"]
                    cur = txn.cursor(part.rows)
                    if cur.first():
                        t0 = split_key(cur.key())[0]
                        oldest = t0 if oldest is None else min(oldest, t0)
                    if cur.last():
                        t1 = split_key(cur.key())[0]
                        newest = t1 if newest is None else max(newest, t1)
                events += n
                b = sum(f.stat().st_size for f in part.files())
                size += b
                files.append({"partition": part.name.stem, "events": n, "bytes": b,
                              "map_size": part.events.info()["map_size"]})
        size += (self.root / "dict.lmdb").stat().st_size if (self.root / "dict.lmdb").exists() else 0
        return StoreStats(events, size, len(parts), _dt(oldest), _dt(newest),
                          pending=sum(follower.behind(p) for p in parts), files=files)

    # ---- retention, backup, restore ----------------------------------------------------

    def apply_retention(self, now: datetime | None = None) -> list[str]:
        """Delete whole partition files whose every event is past its type's retention.

        Returns the partition names deleted.
        """
        self._last_retention = time.monotonic()
        ret = self.settings.retention
        if not ret:
            return []
        now_us = to_us(now) if now is not None else time.time_ns() // 1000
        doomed = []
        for part in self.partitions():
            rule = class_rule(part.name.cls)
            keep = ret.get(rule, ret.get("*") if rule != "*" else None)
            if keep is None and rule != "*":
                keep = ret.get("*")
            if keep is None:
                continue
            if part.name.end_us <= now_us - int(keep.total_seconds() * 1_000_000):
                doomed.append(part)
        if not doomed:
            return []
        self._rw.acquire_write()
        try:
            for part in doomed:
                with self._parts_lock:
                    self._parts.pop(part.name.stem, None)
                part.delete_files()
        finally:
            self._rw.release_write()
        return [p.name.stem for p in doomed]

    def backup(self, dest: Path) -> None:
        """Online, consistent copy of the store into `dest` (created; must be empty).

        Order keeps the copy consistent without pausing writes: derived files first, then the
        events files (a superset of what the derived files folded in; the follower catches up
        on open), then the dictionary (a superset of the codes they use).

        Raises:
            StoreIOError: dest is not empty, or a copy failed (names the file).
        """
        self._check_open()
        dest = Path(dest)
        _prepare_dest(dest)
        (dest / "p").mkdir()
        with self.reading():
            parts = self.partitions()
            try:
                for part in parts:
                    if part.derived is not None:
                        part.derived.copy(str(dest / "p" / part.derived_path.name), compact=True)
                for part in parts:
                    part.events.copy(str(dest / "p" / part.events_path.name), compact=True)
                self.dictionary.env.copy(str(dest / "dict.lmdb"), compact=True)
            except lmdb.Error as e:
                raise StoreIOError(f"backup of {self.root} to {dest} failed: {e}") from e
        (dest / "BACKUP.json").write_text(json.dumps({
            "portico_telemetry_backup": 1, "source": str(self.root),
            "time": datetime.now(timezone.utc).isoformat(), "partitions": [p.name.stem for p in parts],
            "partition": self.settings.partition}, indent=2))

    @staticmethod
    def restore(src: Path, dest: Path) -> None:
        """Copy a backup made by `backup` into `dest` (must not exist or be empty).

        Raises:
            StoreIOError: src is not a backup, dest is not empty, or a file is unreadable.
        """
        src, dest = Path(src), Path(dest)
        if not (src / "BACKUP.json").is_file() or not (src / "dict.lmdb").is_file():
            raise StoreIOError(f"{src} is not a telemetry backup (BACKUP.json / dict.lmdb missing); "
                               "make one with `portico backup DIR`")
        for f in [src / "dict.lmdb", *sorted((src / "p").glob("*.lmdb"))]:
            try:
                env = lmdb.open(str(f), subdir=False, readonly=True, lock=False, max_dbs=8)
                env.close()
            except lmdb.Error as e:
                raise StoreIOError(f"backup file {f} is unreadable: {e}") from e
        _prepare_dest(dest)
        try:
            shutil.copytree(src, dest, dirs_exist_ok=True)
            (dest / "BACKUP.json").rename(dest / "RESTORED-FROM.json")
        except OSError as e:
            raise StoreIOError(f"restore of {src} into {dest} failed: {e}") from e


# ---- helpers ------------------------------------------------------------------------------

def _index_filter(filters: tuple[Any, ...]) -> tuple[bytes, Any] | None:
    for f in filters:
        if isinstance(f, Filter) and f.op == "eq" and isinstance(f.value, str) and f.attr in INDEXED:
            return (b"u" if f.attr == "user" else b"s"), f.value
    return None


def _fingerprint(q: Any) -> bytes:
    text = repr((q.start.timestamp(), q.end.timestamp(), tuple(q.types), tuple(q.filters), q.geo,
                 getattr(q, "descending", None)))
    return hashlib.blake2b(text.encode(), digest_size=6).digest()


def _encode_token(key: bytes, fp: bytes) -> str:
    return base64.urlsafe_b64encode(b"\x01" + fp + key).decode().rstrip("=")


def _decode_token(token: str, fp: bytes) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 1 + 6 + KEY_LEN or raw[0] != 1:
        raise QueryError("page_token", "not a page token from this API; start again without it")
    if raw[1:7] != fp:
        raise QueryError("page_token", "belongs to a different query (range, types or filters changed); "
                                       "start again without it")
    return raw[7:]


def _dt(us: int | None) -> datetime | None:
    return None if us is None else start_datetime(us)


def _prepare_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StoreIOError(f"{dest} exists and is not an empty directory; choose a new one")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreIOError(f"cannot create {dest}: {e.strerror or e}") from e


__all__ = ["DEFAULT_DIMENSIONS", "RecordResult", "Store", "StoreSettings", "StoreStats"]
