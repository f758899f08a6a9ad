"""Hand fire-and-forget events to the store in batches, not one call per request.

Not an addon: the `Recorder` that proxy/tracking_setup.py gives the tracking addons.

Why: `Store.submit` validates on the caller's thread, takes the store's lock and wakes its
writer thread. Once per request that wake-up and lock hand-off cost more than building
the event (py-spy: `Condition.notify` and the writer competing for the GIL on every
request). Here `submit()` only appends to a list; the list goes to the store in one
`submit` call when it holds `max_events`, or `interval` seconds after its first event
(a timer on the running event loop), or on `flush()` (shutdown).

Why 0.5 s by default: each batch is one commit (an fsync) in the writer thread, whatever
its size. At ~1,000 requests/s, batches every 100 ms cost the writer thread 23-25 us of
CPU per request, every 500 ms 13-15 us (Linux schedstat, same run; the follower process
already folds at most every 0.5 s, `StoreSettings.fold_gather`). Request events are
observations, not acknowledged to anyone: they reach the store about half a second
later (tracking captures flows and builds their events every 0.5 s, then flushes this
batch; when 500 are built early they wait here up to 0.5 s more), and a crash loses at
most that much of them. (The beacon's events are different:
`record_durable` commits them before the 202.) Outside an event loop
(unit tests, the CLI) it submits at once, as `Recorder` does.

A batch that fails is counted and logged (rate limited) like a single event in
`Recorder`; `record_durable` (the beacon, which answers 202 only once committed) is
unchanged and never waits behind a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from addons.recorder import Recorder


class BatchRecorder(Recorder):
    """A `Recorder` whose `submit` batches on the event loop (see the module docstring)."""

    def __init__(self, store: Any, *, max_events: int = 1000, interval: float = 0.5) -> None:
        super().__init__(store)
        self.max_events = max_events
        self.interval = interval
        self._buffer: list[Mapping[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None

    def submit(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Queue events for the next batch; never raises, never waits."""
        if self.store is None or not events:
            return
        self._buffer.extend(events)
        if len(self._buffer) >= self.max_events:
            self.flush()
            return
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (tests, CLI): nothing would fire a timer
                self.flush()
                return
            self._timer = loop.call_later(self.interval, self.flush)

    def flush(self) -> None:
        """Submit what is buffered now (the timer, a full buffer, or shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            future = self.store.submit(batch)
        except Exception as e:  # noqa: BLE001 - a request must not fail because the store did
            self._failed(len(batch), e)
            return
        self.submitted += len(batch)
        size = len(batch)
        future.add_done_callback(lambda f: self._check_batch(f, size))

    def _check_batch(self, future: Any, size: int) -> None:
        error = future.exception()
        if error is not None:  # the whole batch was lost, not one event
            self._failed(size, error)
            return
        self._check(future)

    @property
    def buffered(self) -> int:
        """Events waiting for the next batch."""
        return len(self._buffer)
