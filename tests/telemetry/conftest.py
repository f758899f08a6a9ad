"""Fixtures: a real store in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from telemetry.store import Store, StoreSettings

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(StoreSettings(tmp_path / "data", sync=False))
    yield s
    s.close()


def open_store(path: Path, **kw) -> Store:  # noqa: ANN003
    kw.setdefault("sync", False)
    return Store.open(StoreSettings(path, **kw))
