"""The Outreach gRPC service: bulk signed URLs that really work on a gateway's pixel and click
endpoints, per-item errors, the batch cap, request validation, tracking off, and the write role."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from addons.outreachlinks import make_tracked_urls
from proto.outreach_service import DISABLED_MESSAGE, MAX_ITEMS
from proto.portico.v1 import outreach_pb2 as pb
from proto.portico.v1 import outreach_pb2_grpc as pb_grpc
from proto.server import GrpcSettings, create_server
from proxy.config import parse_config
from proxy.server import Gateway
from tests.integration.harness import EchoUpstream, GatewayThread, request
from tests.proto.harness import ServerThread
from tests.tracking.gateway import events, requires_store

CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")
SECRET = b"s" * 32
READ, WRITE = "read-token-0123456789", "write-token-0123456789"


class OutreachServer(ServerThread):
    """A gRPC server with only the Outreach signer (no store), on 127.0.0.1:0."""

    def __init__(self, maker: Callable[..., Any] | None, settings: GrpcSettings | None = None) -> None:
        super().__init__(settings, outreach_maker=maker)

    def call(self, request: pb.MakeTrackedUrlsRequest, token: str | None = None) -> pb.MakeTrackedUrlsResponse:
        metadata = [("authorization", f"Bearer {token}")] if token else None
        with grpc.insecure_channel(self.address) as channel:
            return pb_grpc.OutreachStub(channel).MakeTrackedUrls(request, timeout=10, metadata=metadata)


def maker(recipient_tracking: bool = True) -> Callable[..., Any]:
    return partial(make_tracked_urls, SECRET, "https://www.example.org", reserved_prefix="/_portico/",
                   recipient_tracking=recipient_tracking)


@pytest.fixture
def server() -> Iterator[OutreachServer]:
    srv = OutreachServer(maker())
    yield srv
    srv.stop()


def rpc_error(srv: OutreachServer, request: pb.MakeTrackedUrlsRequest, token: str | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        srv.call(request, token)
    return err.value


# --- through a real gateway ---------------------------------------------------------------

@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[GatewayThread]:
    data = tmp_path_factory.mktemp("outreach-gw")
    upstream = EchoUpstream("site")
    gw = GatewayThread(f"""
listen: 127.0.0.1:0
grpc: {{listen: 127.0.0.1:0}}
cache: {{enabled: false}}
telemetry: {{path: {str(data / "events")!r}, sync: false}}
routes: [{{name: site, upstream: {upstream.url}}}]
tracking: {{recipients: true}}
""")
    yield gw
    gw.stop()
    upstream.close()


@requires_store
def test_bulk_urls_from_grpc_work_on_the_gateway_pixel_and_click_endpoints(gateway):
    gw = gateway
    target = gw.url + "/landing?from=mail"
    with grpc.insecure_channel(f"127.0.0.1:{gw.gateway.grpc_port}") as channel:
        reply = pb_grpc.OutreachStub(channel).MakeTrackedUrls(pb.MakeTrackedUrlsRequest(sent_at=1_000_000, items=[
            pb.TrackedUrlItem(campaign="grpc-spring", recipient="ada@example.org"),
            pb.TrackedUrlItem(campaign="grpc-spring", recipient="ada@example.org", url=target),
            pb.TrackedUrlItem(campaign="bad campaign"),
        ]), timeout=10)
    pixel, click, bad = reply.results
    assert not pixel.error and not click.error
    assert pixel.url.startswith(gw.url + "/_portico/px.gif?") and click.url.startswith(gw.url + "/_portico/c?")
    assert not re.search(r"ada(@|%40)", pixel.url + click.url, re.I)  # only the pseudonym travels (hex may hold "ada")
    assert bad.url == "" and bad.error.startswith("items[2].campaign: expected 1-64 characters")

    status, headers, body = request(gw.url, pixel.url[len(gw.url):], headers={"User-Agent": CHROME})
    assert status == 200 and headers["content-type"] == "image/gif" and headers["cache-control"] == "no-store"
    assert body.startswith(b"GIF89a") and body[6:10] == b"\x01\x00\x01\x00"  # 1x1
    status, headers, _ = request(gw.url, click.url[len(gw.url):], headers={"User-Agent": CHROME})
    assert status == 302 and headers["location"] == target

    store = gw.gateway.store
    opens = [e for e in events(store, "email_open", wait_for=1) if e.attrs["campaign"] == "grpc-spring"]
    clicks = [e for e in events(store, "link_click", wait_for=1) if e.attrs["campaign"] == "grpc-spring"]
    assert len(opens) == 1 and len(clicks) == 1
    assert opens[0].attrs["recipient"] == clicks[0].attrs["recipient"] == parse_qs(urlsplit(pixel.url).query)["r"][0]
    assert opens[0].attrs["first"] is True and opens[0].attrs["machine"] is False

    # the signature covers the target: a tampered link is refused, never an open redirect
    status, headers, _ = request(gw.url, click.url[len(gw.url):].replace("landing", "elsewhere"))
    assert status == 400 and "location" not in headers


def test_gateway_with_tracking_off_answers_failed_precondition():
    with GatewayThread("""
listen: 127.0.0.1:0
grpc: {listen: 127.0.0.1:0}
telemetry: {enabled: false}
routes: [{upstream: 'http://127.0.0.1:9'}]
""") as gw:
        with grpc.insecure_channel(f"127.0.0.1:{gw.gateway.grpc_port}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.OutreachStub(channel).MakeTrackedUrls(
                    pb.MakeTrackedUrlsRequest(items=[pb.TrackedUrlItem(campaign="c")]), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "tracking.enabled" in err.value.details() and "telemetry.enabled" in err.value.details()


@pytest.mark.parametrize(("config", "expected"), [
    ("listen: 127.0.0.1:0\npublic_url: https://www.example.org/", "https://www.example.org/"),
    ("listen: 0.0.0.0:8080", "http://127.0.0.1:8080"),  # wildcard: reachable locally (no listener needed)
])
def test_public_url_defaults_to_the_listen_address(config, expected, monkeypatch):
    gw = Gateway(parse_config(config + "\ntelemetry: {enabled: false}\n"))
    monkeypatch.setattr(Gateway, "listen_port", property(lambda self: self.config.listen[1]))
    assert gw.public_url == expected


@pytest.mark.parametrize("bad", ["ftp://www.example.org", "www.example.org", "https://www.example.org/?a=1"])
def test_public_url_config_errors_name_the_key(bad):
    from proxy.schema import ConfigError

    with pytest.raises(ConfigError, match=r"public_url: expected the gateway's public origin.*http or https"):
        parse_config(f"public_url: {bad!r}\n")


# --- the service on its own server ----------------------------------------------------------

def test_urls_are_signed_with_the_handed_in_maker_in_item_order(server):
    items = [pb.TrackedUrlItem(campaign=f"c{i}", url=f"https://example.net/p{i}" if i % 2 else "")
             for i in range(50)]
    reply = server.call(pb.MakeTrackedUrlsRequest(items=items, sent_at=1_700_000_000))
    assert len(reply.results) == 50 and not any(r.error for r in reply.results)
    for i, result in enumerate(reply.results):
        expected = make_tracked_urls(SECRET, "https://www.example.org", f"c{i}", sent_at=1_700_000_000,
                                     url=f"https://example.net/p{i}" if i % 2 else None)[0]
        assert result.url == (expected.link if i % 2 else expected.pixel)


def test_unset_sent_at_means_now(server):
    import time

    before = int(time.time())
    url = server.call(pb.MakeTrackedUrlsRequest(items=[pb.TrackedUrlItem(campaign="now")])).results[0].url
    assert before <= int(parse_qs(urlsplit(url).query)["t"][0]) <= int(time.time())


@pytest.mark.parametrize(("item", "error"), [
    (pb.TrackedUrlItem(campaign=""), "items[1].campaign: expected 1-64 characters of A-Z a-z 0-9 _ . -, got ''"),
    (pb.TrackedUrlItem(campaign="c", url="ftp://example.net/x"),
     "items[1].url: expected an absolute http(s) URL, got 'ftp://example.net/x'"),
    (pb.TrackedUrlItem(campaign="c", url="https://example.net/" + "x" * 2100),
     "items[1].url: at most 2048 characters, got 2120"),
    (pb.TrackedUrlItem(campaign="c", recipient="  "), "items[1].recipient: expected a non-empty string"),
    (pb.TrackedUrlItem(campaign="c", recipient="a" * 400), "items[1].recipient: at most 320 characters, got 400"),
])
def test_a_bad_item_gets_its_own_error_and_the_batch_goes_on(server, item, error):
    ok = pb.TrackedUrlItem(campaign="fine")
    reply = server.call(pb.MakeTrackedUrlsRequest(items=[ok, item, ok]))
    first, bad, last = reply.results
    assert first.url and last.url and not first.error and not last.error
    assert bad.url == "" and bad.error.startswith(error)


def test_recipients_are_refused_per_item_when_recipient_tracking_is_off():
    srv = OutreachServer(maker(recipient_tracking=False))
    try:
        reply = srv.call(pb.MakeTrackedUrlsRequest(items=[
            pb.TrackedUrlItem(campaign="c", recipient="ada@example.org"), pb.TrackedUrlItem(campaign="c")]))
    finally:
        srv.stop()
    assert reply.results[0].error.startswith("items[0].recipient: recipient-level tracking is off")
    assert "tracking.recipients" in reply.results[0].error and reply.results[1].url


def test_batch_over_the_cap_is_resource_exhausted_and_the_cap_itself_is_served(server):
    items = [pb.TrackedUrlItem(campaign="bulk", recipient=f"r{i}@example.org", url="https://example.net/a")
             for i in range(MAX_ITEMS + 1)]
    err = rpc_error(server, pb.MakeTrackedUrlsRequest(items=items))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == f"items: at most {MAX_ITEMS} per call, got {MAX_ITEMS + 1}; split the batch"
    reply = server.call(pb.MakeTrackedUrlsRequest(items=items[:MAX_ITEMS]))
    assert len(reply.results) == MAX_ITEMS and len({r.url for r in reply.results}) == MAX_ITEMS


@pytest.mark.parametrize(("request_", "details"), [
    (pb.MakeTrackedUrlsRequest(), f"items: expected 1 to {MAX_ITEMS} items, got none"),
    (pb.MakeTrackedUrlsRequest(items=[pb.TrackedUrlItem(campaign="c")], sent_at=-5),
     "sent_at: expected unix seconds >= 0 (0 means now), got -5"),
])
def test_bad_requests_are_invalid_argument_naming_the_field(server, request_, details):
    err = rpc_error(server, request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details() == details


def test_without_a_maker_every_call_is_failed_precondition():
    srv = OutreachServer(None)
    try:
        err = rpc_error(srv, pb.MakeTrackedUrlsRequest(items=[pb.TrackedUrlItem(campaign="c")]))
    finally:
        srv.stop()
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and err.details() == DISABLED_MESSAGE


def test_a_failing_maker_is_internal_without_leaking_details():
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("cannot read /secret/path")

    srv = OutreachServer(broken)
    try:
        err = rpc_error(srv, pb.MakeTrackedUrlsRequest(items=[pb.TrackedUrlItem(campaign="c")]))
    finally:
        srv.stop()
    assert err.code() == grpc.StatusCode.INTERNAL and "/secret/path" not in err.details()


def test_tokens_on_make_tracked_urls_needs_a_write_token(tmp_path: Path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{name: dash, role: read, token: {READ}}}\n"
                      f"  - {{name: mailer, role: write, token: {WRITE}}}\n")
    srv = OutreachServer(maker(), GrpcSettings(listen="127.0.0.1:0", tokens_file=tokens))
    request_ = pb.MakeTrackedUrlsRequest(items=[pb.TrackedUrlItem(campaign="c")])
    try:
        assert rpc_error(srv, request_).code() == grpc.StatusCode.UNAUTHENTICATED
        denied = rpc_error(srv, request_, READ)
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "MakeTrackedUrls needs 'write'" in denied.details()
        assert srv.call(request_, WRITE).results[0].url.startswith("https://www.example.org/_portico/px.gif?")
    finally:
        srv.stop()


def test_reflection_lists_the_outreach_service(server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "portico.v1.Outreach" in names
