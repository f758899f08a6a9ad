"""The gRPC server runs on the gateway's loop: health and reflection answer; it stops with the gateway."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from proxy.config import parse_config
from proxy.server import Gateway, StartupError
from tests.integration.harness import GatewayThread

CONFIG = """
listen: 127.0.0.1:0
grpc: {listen: 127.0.0.1:0}
telemetry: {enabled: false}
routes: [{upstream: 'http://127.0.0.1:9'}]
"""


def test_health_and_reflection_answer_then_stop_cleanly():
    gw = GatewayThread(CONFIG)
    port = gw.gateway.grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=5)
        services = {s.name for r in responses for s in r.list_services_response.service}
        assert "grpc.health.v1.Health" in services
        assert "grpc.reflection.v1alpha.ServerReflection" in services
    gw.stop()
    assert not gw.thread.is_alive()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_non_loopback_grpc_without_tokens_refuses_to_start():
    config = parse_config(CONFIG.replace("grpc: {listen: 127.0.0.1:0}", "grpc: {listen: 0.0.0.0:0}"))
    with pytest.raises(StartupError, match="tokens_file"):
        import asyncio

        asyncio.run(Gateway(config).start())


def test_port_in_use_is_a_clear_startup_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(StartupError, match=f"127.0.0.1:{port}"):
            GatewayThread(CONFIG.replace("listen: 127.0.0.1:0\ngrpc", f"listen: 127.0.0.1:{port}\ngrpc"))
