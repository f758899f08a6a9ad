"""Hand events to the telemetry store without ever blocking or failing a request.

Not an addon: a helper for the tracking addons. `submit()` is fire-and-forget (the
store's writer thread commits in batches); a full or closed store costs a log line (rate
limited) and a counter, never an exception in a hook. `record_durable()` is for the
beacon endpoint, which must answer 202 only once its events are committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("portico.tracking")


class Recorder:
    """Wraps `telemetry.store.Store.submit` (or nothing, when telemetry is disabled)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.submitted = 0
        self.failed = 0
        self._last_warning = 0.0

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def submit(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Enqueue events; never raises, never waits."""
        if self.store is None or not events:
            return
        try:
            future = self.store.submit(list(events))
        except Exception as e:  # noqa: BLE001 - the request must not fail because the store did
            self._failed(len(events), e)
            return
        self.submitted += len(events)
        future.add_done_callback(self._check)

    async def record_durable(self, events: Sequence[Mapping[str, Any]]) -> Any:
        """Submit and wait (without blocking the loop) until committed; returns RecordResult.

        Raises:
            Exception: whatever the store raised (the caller answers 503).
        """
        if self.store is None:
            raise RuntimeError("telemetry is disabled")
        result = await asyncio.wrap_future(self.store.submit(list(events)))
        self.submitted += len(events)
        return result

    def _check(self, future: Any) -> None:
        error = future.exception()
        if error is not None:
            self._failed(1, error)
            return
        result = future.result()
        errors = getattr(result, "errors", None)
        if errors:
            self.failed += len(errors)
            self._warn(f"the store refused {len(errors)} event(s), first: {errors[0][1]}")

    def _failed(self, count: int, error: BaseException) -> None:
        self.failed += count
        self._warn(f"could not record {count} event(s): {type(error).__name__}: {error}")

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:  # one line per 10 s, not one per request
            self._last_warning = now
            log.warning("%s (failed so far: %d)", message, self.failed)
