"""Partition files: which LMDB file an event goes to, and opening them.

Events are split by retention class (the retention rule that matches their type) and
by period (UTC day, or ISO week starting Monday), one pair of files per partition:
    p/<class>@<d|w><YYYYMMDD>.events.lmdb    rows, id index (the writer's)
    p/<class>@<d|w><YYYYMMDD>.derived.lmdb   column segments, rollups, key-only indexes (the follower's)
Retention deletes whole files, because LMDB files never shrink.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import lmdb

from telemetry.errors import StoreFullError, StoreIOError

DAY_US = 86_400_000_000
EPOCH = date(1970, 1, 1)
_NAME_RE = re.compile(r"^(?P<cls>[a-z0-9_.\-]+)@(?P<kind>[dw])(?P<ymd>\d{8})\.(?P<role>events|derived)\.lmdb$")


def period_of(time_us: int, kind: str) -> tuple[str, int, int]:
    """(period name, start_us, end_us) of the day or Monday-week holding `time_us`."""
    day = time_us // DAY_US
    if kind == "w":
        day -= (day + 3) % 7            # 1970-01-01 was a Thursday
        length = 7
    else:
        length = 1
    d = EPOCH + timedelta(days=day)
    return f"{kind}{d:%Y%m%d}", day * DAY_US, (day + length) * DAY_US


def retention_class(event_type: str, retention: Mapping[str, timedelta]) -> str:
    """The retention rule key that applies to a type ("user.joined", "user.*", "*"), as a file-safe name."""
    if event_type in retention:
        return event_type
    best = None
    for key in retention:
        if key.endswith(".*") and event_type.startswith(key[:-1]) and (best is None or len(key) > len(best)):
            best = key
    if best is not None:
        return best[:-2] + "._all"
    return "_all"


def class_rule(cls: str) -> str:
    """The retention key a class name came from (inverse of retention_class)."""
    if cls == "_all":
        return "*"
    if cls.endswith("._all"):
        return cls[:-5] + ".*"
    return cls


@dataclass(frozen=True)
class PartitionName:
    cls: str
    period: str
    start_us: int
    end_us: int

    @property
    def stem(self) -> str:
        return f"{self.cls}@{self.period}"


def parse_name(filename: str) -> tuple[PartitionName, str] | None:
    m = _NAME_RE.match(filename)
    if not m:
        return None
    d = datetime.strptime(m["ymd"], "%Y%m%d").date()
    day = (d - EPOCH).days
    length = 7 if m["kind"] == "w" else 1
    return PartitionName(m["cls"], m["kind"] + m["ymd"], day * DAY_US, (day + length) * DAY_US), m["role"]


def lmdb_error(e: BaseException, path: Path | str, env: lmdb.Environment | None, doing: str) -> Exception:
    """A telemetry.errors exception for an LMDB failure, naming the file and map size."""
    size = ""
    try:
        if env is not None:
            size = f", map size {env.info()['map_size'] / 2**20:.0f} MiB"
    except lmdb.Error:
        pass
    text = f"{doing} {path}{size}: {e}"
    if isinstance(e, lmdb.MapFullError) or "No space left" in str(e) or getattr(e, "errno", None) == 28:
        return StoreFullError(text + " (free disk space, raise max_map_size, or shorten retention)")
    return StoreIOError(text)


def open_env(path: Path, map_size: int, *, sync: bool, readonly: bool = False, max_dbs: int = 8) -> lmdb.Environment:
    """Open one LMDB file (subdir=False); errors become StoreIOError naming the file."""
    try:
        return lmdb.open(str(path), subdir=False, map_size=map_size, max_dbs=max_dbs, sync=sync,
                         metasync=sync, readahead=False, max_readers=512, readonly=readonly,
                         lock=True)
    except lmdb.Error as e:
        raise lmdb_error(e, path, None, "cannot open") from e


class Partition:
    """The two environments of one partition; DB handles opened once."""

    def __init__(self, root: Path, name: PartitionName, map_size: int, sync: bool, readonly: bool = False,
                 follower: bool = False, derived_map: int | None = None) -> None:
        """Open (creating unless readonly/follower) the partition's files.

        The writer's process opens the events file with `map_size` (it grows it); the
        follower opens it only to read, with a large sparse map so the writer's growth never
        needs a resize there, and creates nothing.
        """
        self.name = name
        self.events_path = root / f"{name.stem}.events.lmdb"
        self.derived_path = root / f"{name.stem}.derived.lmdb"
        self.readonly = readonly
        create = not readonly and not follower
        if follower and not self.events_path.exists():
            raise StoreIOError(f"{self.events_path} does not exist yet")
        self.events = open_env(self.events_path, map_size, sync=sync, readonly=readonly)
        try:
            # Derived files are rebuilt from the rows when lost (delete them and reopen), so
            # they skip fsync: a killed process loses nothing, an OS crash at worst needs a rebuild.
            self.derived = open_env(self.derived_path, derived_map or map_size, sync=False, readonly=readonly)
        except StoreIOError:
            if not readonly:
                raise
            self.derived = None  # a read-only open of a partition the follower never reached
        try:
            self.rows = self.events.open_db(b"rows", create=create)
            self.ids = self.events.open_db(b"ids", create=create)
            self.info = self.events.open_db(b"info", create=create)
            self.log = self.events.open_db(b"log", create=create)
        except lmdb.Error as e:
            self.close_envs()
            raise lmdb_error(e, self.events_path, self.events, "cannot open the tables of") from e
        self.segs = self.roll = self.idx = self.dinfo = None
        if self.derived is not None:
            try:
                self.segs = self.derived.open_db(b"segs", create=create)
                self.roll = self.derived.open_db(b"roll", create=create)
                self.idx = self.derived.open_db(b"idx", create=create)
                self.dinfo = self.derived.open_db(b"info", create=create)
            except lmdb.Error as e:
                if follower:
                    self.close_envs()
                    raise lmdb_error(e, self.derived_path, self.derived, "not ready:") from e
                self.derived = None
        self.grow_lock = threading.Lock()
        self.closed = False

    def close_envs(self) -> None:
        self.events.close()
        if self.derived is not None:
            self.derived.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.events.close()
            if self.derived is not None:
                self.derived.close()

    def files(self) -> list[Path]:
        return [p for p in (self.events_path, self.derived_path) if p.exists()]

    def delete_files(self) -> None:
        self.close()
        for p in (self.events_path, self.derived_path):
            for q in (p, Path(str(p) + "-lock")):
                try:
                    os.unlink(q)
                except FileNotFoundError:
                    pass


def start_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, timezone.utc)
