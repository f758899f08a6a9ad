"""The gRPC server: health checking and reflection, plus Portico's services.

`create_server` builds and binds a `grpc.aio` server without starting it, so the caller
(`proxy/server.py`) runs it on the gateway's own asyncio loop, and tests bind port 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection


@dataclass(frozen=True)
class GrpcSettings:
    """Where and how the gRPC API listens (built by proxy/config.py from `grpc:`)."""

    listen: str = "127.0.0.1:50051"
    tokens_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None


def create_server(settings: GrpcSettings, store: Any = None) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build the server and bind its port; returns (server, bound port, health servicer).

    Raises:
        RuntimeError: the address could not be bound.
    """
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(service_names, server)
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise RuntimeError(f"gRPC: cannot listen on {settings.listen}")
    return server, port, health_servicer
