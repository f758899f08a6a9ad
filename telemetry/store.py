"""The LMDB event store: partition files, the one writer thread, record/submit.

(skeleton: signatures of the public contract; the implementation follows)
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from telemetry.events import Event
from telemetry.query import EventPage, FunnelQuery, FunnelResult, ListQuery, Query, QueryResult

DEFAULT_DIMENSIONS = ("org", "project", "path", "referrer_host", "status", "cache", "group", "country",
                      "campaign")


@dataclass(frozen=True)
class StoreSettings:
    path: Path
    partition: str = "day"
    map_size: int = 1 << 30
    max_map_size: int = 1 << 40
    retention: Mapping[str, timedelta] = field(default_factory=dict)
    dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS
    batch_max: int = 1000
    batch_interval: float = 0.010
    sync: bool = True


@dataclass(frozen=True)
class RecordResult:
    accepted: int
    duplicates: int
    errors: list[tuple[int, str]]


@dataclass(frozen=True)
class StoreStats:
    events: int
    bytes: int
    partitions: int
    oldest: datetime | None
    newest: datetime | None


class Store:
    @classmethod
    def open(cls, settings: StoreSettings) -> "Store": raise NotImplementedError
    def record(self, events: Sequence[Event | Mapping], *, wait: bool = True,
               timeout: float | None = None) -> RecordResult: raise NotImplementedError
    def submit(self, events: Sequence[Event | Mapping]) -> concurrent.futures.Future: raise NotImplementedError
    def query(self, q: Query) -> QueryResult: raise NotImplementedError
    def list_events(self, q: ListQuery) -> EventPage: raise NotImplementedError
    def funnel(self, q: FunnelQuery) -> FunnelResult: raise NotImplementedError
    def stats(self) -> StoreStats: raise NotImplementedError
    def flush(self, timeout: float | None = None) -> None: raise NotImplementedError
    def backup(self, dest: Path) -> None: raise NotImplementedError
    @staticmethod
    def restore(src: Path, dest: Path) -> None: raise NotImplementedError
    def close(self) -> None: raise NotImplementedError
