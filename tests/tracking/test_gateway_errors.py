"""A flow that errors (upstream down) still yields one request event (own gateway: mitmproxy
keeps process-global state, so gateways in one process must not overlap)."""

from __future__ import annotations

from tests.integration.harness import GatewayThread, request
from tests.tracking.gateway import events, gateway_config, requires_store

pytestmark = requires_store


def test_upstream_down_is_recorded(tmp_path, refused_port):
    dead = refused_port
    with GatewayThread(gateway_config(f"http://127.0.0.1:{dead}", str(tmp_path / "ev"))) as gw:
        assert request(gw.url, "/x", headers={"User-Agent": "curl/8"})[0] == 502
        reqs = events(gw.gateway.store, "request", wait_for=1)
        assert len(reqs) == 1 and reqs[0].attrs["status"] == 502 and reqs[0].attrs.get("error")
