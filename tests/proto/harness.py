"""A real `proto.server` gRPC server on 127.0.0.1 (port 0), run on its own loop in a thread.

Tests talk to it with blocking grpc channels, the way the CLI and other programs do.
Also: self-signed CA / server / client certificates for the TLS tests (cryptography).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc

from proto.portico.v1 import analytics_pb2_grpc
from proto.server import GrpcSettings, create_server


class ServerThread:
    """create_server + start on a private loop; `stop()` stops it gracefully."""

    def __init__(self, settings: GrpcSettings | None = None, store: Any = None,
                 outreach_maker: Any = None) -> None:
        self.settings = settings or GrpcSettings(listen="127.0.0.1:0")
        self.outreach_maker = outreach_maker
        self.loop = asyncio.new_event_loop()
        started: Future[int] = Future()
        self.thread = threading.Thread(target=self._run, args=(store, started), daemon=True)
        self.thread.start()
        self.port = started.result(timeout=10)
        self.address = f"127.0.0.1:{self.port}"

    def _run(self, store: Any, started: Future[int]) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.server, port, _ = create_server(self.settings, store, outreach_maker=self.outreach_maker)
            self.loop.run_until_complete(self.server.start())
        except BaseException as e:  # noqa: BLE001 - surfaced to the test
            started.set_exception(e)
            return
        started.set_result(port)
        self.loop.run_forever()

    def stop(self, grace: float = 1.0) -> None:
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def stub(self, channel: grpc.Channel | None = None) -> analytics_pb2_grpc.AnalyticsStub:
        return analytics_pb2_grpc.AnalyticsStub(channel or grpc.insecure_channel(self.address))


def make_certs(directory: Path) -> dict[str, Path]:
    """A CA, a server cert for 127.0.0.1/localhost and a client cert, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def key() -> Any:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, cert: Any, k: Any) -> None:
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{stem}.key").write_bytes(k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("portico test CA")).issuer_name(name("portico test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    write("ca", ca, ca_key)

    def leaf(stem: str, cn: str, sans: list[Any]) -> None:
        k = key()
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(k.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2)))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        write(stem, builder.sign(ca_key, hashes.SHA256()), k)

    leaf("server", "localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    leaf("client", "portico-client", [])
    return {n: directory / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
