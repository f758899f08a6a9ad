"""The gRPC server: health checking, reflection and `portico.v1.Analytics`.

`create_server` builds and binds a `grpc.aio` server without starting it, so the caller
(`proxy/server.py`) runs it on the gateway's own asyncio loop, and tests bind port 0.

Access policy (`check_listen_policy`): a listener reachable from other machines needs a
tokens file; every Analytics call then carries a bearer token whose role allows the method
(`proto/interceptor.py`). TLS uses a server certificate; with `tls_client_ca_file` clients
must also present a certificate signed by that CA.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from proto.interceptor import TokenAuthInterceptor
from proto.portico.v1 import analytics_pb2, analytics_pb2_grpc
from proto.service import AnalyticsServicer
from proto.tokens import TokensFileError, load_tokens

log = logging.getLogger("portico.grpc")

ANALYTICS_SERVICE = analytics_pb2.DESCRIPTOR.services_by_name["Analytics"].full_name
# Record batches of 10,000 events with attributes fit; larger messages are refused by gRPC
# itself with RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 16 * 2**20


@dataclass(frozen=True)
class GrpcSettings:
    """Where and how the gRPC API listens (built by proxy/config.py from `grpc:`)."""

    listen: str = "127.0.0.1:50051"
    tokens_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None


class ListenPolicyError(RuntimeError):
    """The listener would be reachable from other machines without bearer tokens."""


class TlsFileError(RuntimeError):
    """A TLS certificate/key file is missing or unreadable; the message names the key and path."""


def is_loopback_address(listen: str) -> bool:
    """True when `host:port` (`[v6]:port`, `localhost:port`) only accepts local connections."""
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere: treat as reachable from outside


def check_listen_policy(settings: GrpcSettings) -> None:
    """Refuse a non-loopback listener without a tokens file.

    Raises:
        ListenPolicyError: `settings.listen` is not loopback and `settings.tokens_file` is unset.
    """
    if settings.tokens_file is None and not is_loopback_address(settings.listen):
        raise ListenPolicyError(
            f"grpc.listen: {settings.listen!r} is reachable from other machines but grpc.tokens_file "
            "is not set; set grpc.tokens_file (and grpc.tls) or listen on 127.0.0.1"
        )


def create_server(settings: GrpcSettings, store: Any = None, cache_store: Any = None,
                  outreach_maker: Any = None) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build the server and bind its port; returns (server, bound port, health servicer).

    `store` is an open `telemetry.store.Store`; None serves UNAVAILABLE ("telemetry is
    disabled") from every Analytics method. `outreach_maker` signs tracked URLs for the
    Outreach service (proto/outreach_service.py); None (tracking off) serves FAILED_PRECONDITION.
    The server is not started.

    Raises:
        ListenPolicyError: non-loopback listener without tokens (see `check_listen_policy`).
        TokensFileError, TlsFileError: a named file is missing or malformed.
        RuntimeError: the address could not be bound.
    """
    check_listen_policy(settings)
    interceptors = []
    if settings.tokens_file is not None:
        tokens = load_tokens(Path(settings.tokens_file))
        interceptors.append(TokenAuthInterceptor(tokens))
        log.info("gRPC bearer tokens: %d loaded from %s", len(tokens), settings.tokens_file)
    credentials = server_credentials(settings)
    if credentials is None and not is_loopback_address(settings.listen):
        log.warning("gRPC listens on %s without TLS: bearer tokens travel in clear text; set grpc.tls",
                    settings.listen)
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)],
    )
    analytics_pb2_grpc.add_AnalyticsServicer_to_server(AnalyticsServicer(store), server)
    from proto.cache_service import add_cache_service

    add_cache_service(server, cache_store)  # CacheAdmin: purge/stats (admin token when tokens are on)
    from proto.outreach_service import SERVICE_NAME as OUTREACH_SERVICE, add_outreach_service

    add_outreach_service(server, outreach_maker)  # Outreach: bulk tracked URLs (write token)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    from proto.cache_service import SERVICE_NAME as CACHE_SERVICE

    service_names = [ANALYTICS_SERVICE, CACHE_SERVICE, OUTREACH_SERVICE,
                     health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(service_names, server)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError as e:
        raise RuntimeError(f"grpc.listen: cannot listen on {settings.listen}: {e}") from None
    if port == 0:
        raise RuntimeError(f"grpc.listen: cannot listen on {settings.listen}")
    return server, port, health_servicer


def server_credentials(settings: GrpcSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings, or None for plaintext.

    Raises:
        TlsFileError: only one of cert/key is set, or a file can't be read.
    """
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        if settings.tls_client_ca_file is not None:
            raise TlsFileError("grpc.tls.client_ca_file is set but grpc.tls.cert_file/key_file are not")
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise TlsFileError("grpc.tls: set both cert_file and key_file")
    cert = _read("grpc.tls.cert_file", settings.tls_cert_file)
    key = _read("grpc.tls.key_file", settings.tls_key_file)
    client_ca = (_read("grpc.tls.client_ca_file", settings.tls_client_ca_file)
                 if settings.tls_client_ca_file is not None else None)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def _read(key: str, path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TlsFileError(f"{key}: cannot read {path}: {e.strerror or e}") from None
    if b"-----BEGIN" not in data:
        raise TlsFileError(f"{key}: {path} is not a PEM file")
    return data


__all__ = ["GrpcSettings", "ListenPolicyError", "TlsFileError", "TokensFileError", "check_listen_policy",
           "create_server", "is_loopback_address", "server_credentials"]
