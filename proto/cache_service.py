"""The CacheAdmin gRPC service: purge and stats for the gateway's HTTP cache.

Thin: validate -> call the `CacheStore` -> convert. `add_cache_service(server, cache_store)`
registers it on the gateway's `grpc.aio` server; with `cache_store=None` (cache disabled)
every call answers FAILED_PRECONDITION saying how to enable it. The store is duck-typed
(`purge_url`, `purge_prefix`, `purge_all`, `stats`), so `proto` does not import `addons`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from proto.portico.v1 import cache_pb2 as pb
from proto.portico.v1 import cache_pb2_grpc as pb_grpc

log = logging.getLogger("portico.grpc.cache")

SERVICE_NAME = "portico.v1.CacheAdmin"


class CacheAdminServicer(pb_grpc.CacheAdminServicer):
    def __init__(self, cache_store: Any) -> None:
        self.store = cache_store

    async def _require_store(self, context: grpc.aio.ServicerContext) -> Any:
        if self.store is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "the HTTP cache is not enabled on this gateway (set cache.enabled: true)")
        return self.store

    async def Purge(self, request: pb.PurgeRequest, context: grpc.aio.ServicerContext) -> pb.PurgeResponse:  # noqa: N802
        store = await self._require_store(context)
        which = request.WhichOneof("target")
        try:
            if which == "url":
                n = store.purge_url(request.url)
            elif which == "prefix":
                if not request.prefix.startswith(("http://", "https://")):
                    raise ValueError(f"prefix: expected an absolute URL prefix like 'https://app.example.org/docs/', "
                                     f"got {request.prefix!r}")
                n = await asyncio.to_thread(store.purge_prefix, request.prefix)
            elif which == "all" and request.all:
                n = store.purge_all()
            else:
                raise ValueError("target: set one of url, prefix or all=true")
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception as e:  # noqa: BLE001 - the store is closed or failing
            log.warning("cache purge failed: %s", e)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cache purge failed: {e}")
        log.info("cache purge %s=%r: %d stored responses removed", which,
                 getattr(request, which) if which else None, n)
        return pb.PurgeResponse(purged=n)

    async def Stats(self, request: pb.CacheStatsRequest, context: grpc.aio.ServicerContext) -> pb.CacheStatsResponse:  # noqa: N802
        store = await self._require_store(context)
        try:
            s = store.stats()
        except Exception as e:  # noqa: BLE001
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cache stats failed: {e}")
        main = {"objects", "bytes", "max_size", "blobs", "logical_bytes", "physical_bytes", "dedup_ratio",
                "hit_ratio", "bytes_saved"}
        return pb.CacheStatsResponse(
            objects=s["objects"], bytes=max(0, s["bytes"]), max_size=s["max_size"], blobs=s["blobs"],
            logical_bytes=max(0, s["logical_bytes"]), physical_bytes=max(0, s["physical_bytes"]),
            dedup_ratio=s["dedup_ratio"], hit_ratio=s["hit_ratio"], bytes_saved=s["bytes_saved"],
            counters={k: int(v) for k, v in s.items() if k not in main})


def add_cache_service(server: grpc.aio.Server, cache_store: Any) -> CacheAdminServicer:
    """Register CacheAdmin on `server` (before it starts); returns the servicer."""
    servicer = CacheAdminServicer(cache_store)
    pb_grpc.add_CacheAdminServicer_to_server(servicer, server)
    return servicer
