"""Export: run a telemetry CSV writer over every page in a thread, yield CSV chunks to asyncio.

`telemetry.export` writes to a text stream and pulls rows from an iterator; here the iterator
walks every page of the store (constant memory) and the stream cuts the text into ~64 KiB
chunks handed to the event loop. A small number of chunks may be in flight (backpressure):
a slow client slows the reader thread instead of filling memory. When the client goes away
the reader thread stops at its next chunk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from proto import convert
from proto.portico.v1 import analytics_pb2 as pb

CHUNK_BYTES = 64 * 1024
IN_FLIGHT = 4
_DONE = object()


class _Cancelled(Exception):
    """The consumer went away; the reader thread unwinds quietly."""


class _ChunkWriter:
    """A write-only text stream that hands ~CHUNK_BYTES pieces to `emit`."""

    def __init__(self, emit: Callable[[bytes], None], chunk_bytes: int) -> None:
        self.emit, self.chunk_bytes = emit, chunk_bytes
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> int:
        self.parts.append(text)
        self.size += len(text)
        if self.size >= self.chunk_bytes:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self.parts:
            data = "".join(self.parts).encode("utf-8")
            self.parts, self.size = [], 0
            self.emit(data)


@dataclasses.dataclass
class _Progress:
    rows: int = 0
    total: int = -1


def _counted(items: Iterator[Any], progress: _Progress) -> Iterator[Any]:
    for item in items:
        progress.rows += 1
        yield item


def _plan(store: Any, request: pb.ExportRequest, progress: _Progress) -> Callable[[Any], int]:
    """Validate the request now (so errors come before any data) and return the writer job."""
    from telemetry import export

    source = request.WhichOneof("source")
    if source == "query":
        q = convert.query_from_pb(request.query)

        def query_rows() -> Iterator[Any]:
            token = q.page_token
            while True:
                result = store.query(dataclasses.replace(q, page_token=token))
                if progress.total < 0:
                    progress.total = result.total_rows
                yield from result.rows
                token = result.next_page_token
                if not token:
                    return

        return lambda out: export.write_query_csv(_counted(query_rows(), progress), out,
                                                  group_by=q.group_by, metric=q.metric)
    if source == "events":
        lq = convert.list_query_from_pb(request.events)

        def events() -> Iterator[Any]:
            token = lq.page_token
            while True:
                page = store.list_events(dataclasses.replace(lq, page_token=token))
                yield from page.events
                token = page.next_page_token
                if not token:
                    return

        return lambda out: export.write_events_csv(_counted(events(), progress), out)
    if source == "funnel":
        fq = convert.funnel_query_from_pb(request.funnel)

        def funnel(out: Any) -> int:
            result = store.funnel(fq)
            progress.total = len(result.steps)
            written = export.write_funnel_csv(result, out)
            progress.rows = len(result.steps)
            return written

        return funnel
    raise convert.InvalidRequest("source", "set one of query, events, funnel")


async def export_chunks(store: Any, request: pb.ExportRequest,
                        chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[tuple[bytes, int, int]]:
    """Yield (csv bytes, rows written so far, total rows or -1) until the export is complete.

    Raises:
        convert.InvalidRequest, telemetry errors: from validation or from the store.
    """
    progress = _Progress()
    job = await asyncio.to_thread(_plan, store, request, progress)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    slots = threading.Semaphore(IN_FLIGHT)
    cancelled = threading.Event()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # loop closed: nobody is listening any more
            raise _Cancelled from None

    def emit(data: bytes) -> None:
        while not slots.acquire(timeout=0.2):
            if cancelled.is_set():
                raise _Cancelled
        if cancelled.is_set():
            raise _Cancelled
        put((data, progress.rows, progress.total))

    def work() -> None:
        try:
            out = _ChunkWriter(emit, chunk_bytes)
            rows = job(out)
            progress.rows = rows
            out.flush()
            put(_DONE)
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            try:
                put(e)
            except _Cancelled:
                pass

    worker = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            slots.release()
            yield item
    finally:
        cancelled.set()
        if worker.done():
            worker.result()
