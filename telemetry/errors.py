"""Errors raised by the telemetry store.

    TelemetryError
    ├── EventError(field, message)     an event is invalid (names the attribute)
    ├── QueryError(field, message)     a query is invalid (names the query field)
    └── StoreError                     the store could not do its job
        ├── StoreFullError             the map reached max_map_size, or the disk is full
        ├── StoreClosedError           the store was closed (or never opened)
        └── StoreIOError               an LMDB / OS error (names the file and the map size)

Every message names what failed, the offending value and what is allowed, so a caller
can show it to a person as it is.
"""

from __future__ import annotations


class TelemetryError(Exception):
    """Base of every error raised by `telemetry`."""


class EventError(TelemetryError, ValueError):
    """An event was refused; `field` is the attribute path (e.g. "attrs.supplies.Childcare")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class QueryError(TelemetryError, ValueError):
    """A query was refused; `field` is the query field (e.g. "interval", "filters[0]")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class StoreError(TelemetryError):
    """The store failed (I/O, full, closed)."""


class StoreFullError(StoreError):
    """No room left: the map hit max_map_size or the file system is full."""


class StoreClosedError(StoreError):
    """The store is closed; open it again with `Store.open`."""


class StoreIOError(StoreError):
    """An LMDB or operating-system error while reading or writing a store file."""
