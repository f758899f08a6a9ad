"""The Outreach gRPC service: signed tracked URLs (open pixels, click links) in bulk.

Thin: validate -> call `maker` per item -> convert. `add_outreach_service(server, maker)`
registers it on the gateway's `grpc.aio` server. `maker` is a plain callable handed in by
proxy/ (`proxy.tracking_setup.tracked_url_maker(config, base_url)`), so `proto` does not import
`addons`; its contract:

    maker(campaign, *, url=None, recipients=(None,), sent_at=None) -> [obj with .pixel, .link]

raising `ValueError` (the message starts with the field name) for a bad campaign, URL or
recipient. With `maker=None` (tracking off) every call answers FAILED_PRECONDITION saying how
to turn it on. Signing a batch is CPU work (~35 ms per 1000 items), so it runs in a thread and
never stalls the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from proto.portico.v1 import outreach_pb2 as pb
from proto.portico.v1 import outreach_pb2_grpc as pb_grpc

log = logging.getLogger("portico.grpc.outreach")

SERVICE_NAME = "portico.v1.Outreach"
# Bounds the response: 1000 click links with 2 KiB targets (percent-encoded, up to 3x) stay
# well under the server's 16 MiB message limit.
MAX_ITEMS = 1000
MAX_URL_CHARS = 2048
MAX_RECIPIENT_CHARS = 320  # the longest valid e-mail address

TrackedUrlMaker = Callable[..., Sequence[Any]]

DISABLED_MESSAGE = ("tracked URLs need tracking on this gateway: set tracking.enabled: true and "
                    "telemetry.enabled: true (or tracking.secret_file / secret_env), then restart")


class OutreachServicer(pb_grpc.OutreachServicer):
    def __init__(self, maker: TrackedUrlMaker | None) -> None:
        self.maker = maker

    async def MakeTrackedUrls(self, request: pb.MakeTrackedUrlsRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> pb.MakeTrackedUrlsResponse:
        if self.maker is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, DISABLED_MESSAGE)
        n = len(request.items)
        if n > MAX_ITEMS:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"items: at most {MAX_ITEMS} per call, got {n}; split the batch")
        if n == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"items: expected 1 to {MAX_ITEMS} items, got none")
        if request.sent_at < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"sent_at: expected unix seconds >= 0 (0 means now), got {request.sent_at}")
        sent_at = float(request.sent_at) if request.sent_at else None
        try:
            results = await asyncio.to_thread(make_results, self.maker, request.items, sent_at)
        except Exception as e:  # noqa: BLE001 - a bug or an unreadable secret, not the caller's input
            log.exception("MakeTrackedUrls failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"signing tracked URLs failed: {type(e).__name__}")
        failed = sum(1 for r in results if r.error)
        log.info("MakeTrackedUrls: %d URLs signed, %d items refused", n - failed, failed)
        return pb.MakeTrackedUrlsResponse(results=results)


def make_results(maker: TrackedUrlMaker, items: Sequence[pb.TrackedUrlItem],
                 sent_at: float | None) -> list[pb.TrackedUrlResult]:
    """One result per item, in order: the signed URL, or the item's error naming its field."""
    return [_one(maker, i, item, sent_at) for i, item in enumerate(items)]


def _one(maker: TrackedUrlMaker, index: int, item: pb.TrackedUrlItem, sent_at: float | None) -> pb.TrackedUrlResult:
    where = f"items[{index}]"
    if len(item.url) > MAX_URL_CHARS:
        return pb.TrackedUrlResult(error=f"{where}.url: at most {MAX_URL_CHARS} characters, got {len(item.url)}")
    recipient = item.recipient if item.HasField("recipient") else None
    if recipient is not None and len(recipient) > MAX_RECIPIENT_CHARS:
        return pb.TrackedUrlResult(
            error=f"{where}.recipient: at most {MAX_RECIPIENT_CHARS} characters, got {len(recipient)}")
    try:
        urls = maker(item.campaign, url=item.url or None, recipients=[recipient], sent_at=sent_at)
    except ValueError as e:  # addons.outreachlinks.OutreachError: "campaign: expected ..., got ..."
        return pb.TrackedUrlResult(error=f"{where}.{e}")
    made = urls[0]
    return pb.TrackedUrlResult(url=made.link if item.url else made.pixel)


def add_outreach_service(server: grpc.aio.Server, maker: TrackedUrlMaker | None) -> OutreachServicer:
    """Register Outreach on `server` (before it starts); returns the servicer.

    Args:
        maker: `make_tracked_urls` bound to the gateway's secret, public URL and recipient
            policy; None when tracking is off (calls then answer FAILED_PRECONDITION).
    """
    servicer = OutreachServicer(maker)
    pb_grpc.add_OutreachServicer_to_server(servicer, server)
    return servicer
