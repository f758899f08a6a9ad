"""Access control on a real gRPC server: listen policy, bearer tokens and roles, TLS + client certs.

The store is None here (telemetry disabled): a call that passes authentication reaches the
servicer and answers UNAVAILABLE, one that doesn't is refused before it.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from proto.portico.v1 import analytics_pb2 as pb
from proto.portico.v1 import analytics_pb2_grpc as pb_grpc
from proto.server import (GrpcSettings, ListenPolicyError, TlsFileError, check_listen_policy, create_server,
                          is_loopback_address)
from proto.tokens import TokensFileError
from tests.proto.harness import ServerThread, make_certs

READ, WRITE, ADMIN = "read-token-0123456789", "write-token-0123456789", "admin-token-0123456789"


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  - {{name: dash, role: read, token: {READ}}}\n"
                    f"  - {{name: ingest, role: write, token: {WRITE}}}\n"
                    f"  - {{name: ops, role: admin, token: {ADMIN}}}\n")
    return path


@pytest.fixture
def server(tokens_file: Path):
    srv = ServerThread(GrpcSettings(listen="127.0.0.1:0", tokens_file=tokens_file))
    yield srv
    srv.stop()


def call(srv: ServerThread, method: str, request, token: str | None = None, header: str | None = None):
    metadata = [("authorization", header or f"Bearer {token}")] if (token or header) else None
    with grpc.insecure_channel(srv.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            getattr(pb_grpc.AnalyticsStub(channel), method)(request, timeout=5, metadata=metadata)
    return err.value.code(), err.value.details()


@pytest.mark.parametrize("listen, loopback", [
    ("127.0.0.1:50051", True), ("127.0.0.2:1", True), ("[::1]:50051", True), ("localhost:50051", True),
    ("0.0.0.0:50051", False), ("[::]:50051", False), ("10.1.2.3:50051", False), ("example.org:50051", False),
])
def test_loopback_detection(listen, loopback):
    assert is_loopback_address(listen) is loopback


def test_non_loopback_without_tokens_is_refused(tmp_path):
    with pytest.raises(ListenPolicyError, match=r"grpc.listen: '0.0.0.0:0' .* grpc.tokens_file is not set"):
        check_listen_policy(GrpcSettings(listen="0.0.0.0:0"))
    with pytest.raises(ListenPolicyError):
        create_server(GrpcSettings(listen="0.0.0.0:0"))
    check_listen_policy(GrpcSettings(listen="127.0.0.1:0"))  # fine


def test_non_loopback_with_tokens_starts(tokens_file):
    srv = ServerThread(GrpcSettings(listen="0.0.0.0:0", tokens_file=tokens_file))
    try:
        assert call(srv, "Stats", pb.StatsRequest())[0] == grpc.StatusCode.UNAUTHENTICATED
    finally:
        srv.stop()


def test_bad_tokens_file_stops_create_server(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("superuser 0123456789abcdef0123\n")
    with pytest.raises(TokensFileError, match="role 'superuser'"):
        create_server(GrpcSettings(listen="127.0.0.1:0", tokens_file=path))


def test_missing_token_is_unauthenticated(server):
    code, details = call(server, "Query", pb.QueryRequest())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in details


@pytest.mark.parametrize("header", ["Bearer not-a-known-token-at-all", "Basic " + READ, "Bearer "])
def test_wrong_token_is_unauthenticated_and_not_echoed(server, header):
    code, details = call(server, "Query", pb.QueryRequest(), header=header)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "not-a-known-token" not in details and READ not in details


def test_read_token_cannot_record(server):
    code, details = call(server, "Record", pb.RecordRequest(), token=READ)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == "token 'dash' has role 'read'; Record needs 'write' or 'admin'"


def test_streaming_export_without_token_is_refused(server):
    # a streaming method is refused the same way (the denial handler matches the method's kind)
    with grpc.insecure_channel(server.address) as channel:
        stream = pb_grpc.AnalyticsStub(channel).Export(pb.ExportRequest(), timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("token, method, request_", [
    (WRITE, "Record", pb.RecordRequest()), (ADMIN, "Record", pb.RecordRequest()),
    (READ, "Query", pb.QueryRequest()), (READ, "Stats", pb.StatsRequest()), (WRITE, "Stats", pb.StatsRequest()),
])
def test_allowed_roles_reach_the_servicer(server, token, method, request_):
    code, details = call(server, method, request_, token=token)
    assert code == grpc.StatusCode.UNAVAILABLE  # the servicer answered: telemetry is disabled here
    assert "telemetry is disabled" in details


def test_health_and_reflection_need_no_token(server):
    with grpc.insecure_channel(server.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        services = {s.name for r in responses for s in r.list_services_response.service}
    assert "portico.v1.Analytics" in services


def test_reflection_describes_the_analytics_service():
    srv = ServerThread()
    try:
        with grpc.insecure_channel(srv.address) as channel:
            responses = list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="portico.v1.Analytics")]),
                timeout=5))
        protos = responses[0].file_descriptor_response.file_descriptor_proto
        assert any(b"portico.v1" in p and b"ListEvents" in p for p in protos)
    finally:
        srv.stop()


# ---- TLS ------------------------------------------------------------------------------------

def test_tls_with_required_client_certificates(tmp_path):
    certs = make_certs(tmp_path)
    srv = ServerThread(GrpcSettings(listen="127.0.0.1:0", tls_cert_file=certs["server.pem"],
                                    tls_key_file=certs["server.key"], tls_client_ca_file=certs["ca.pem"]))
    try:
        ca = certs["ca.pem"].read_bytes()
        good = grpc.ssl_channel_credentials(ca, certs["client.key"].read_bytes(), certs["client.pem"].read_bytes())
        with grpc.secure_channel(srv.address, good) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.AnalyticsStub(channel).Stats(pb.StatsRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "telemetry is disabled" in err.value.details()
        # no client certificate: the handshake fails
        with grpc.secure_channel(srv.address, grpc.ssl_channel_credentials(ca)) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.AnalyticsStub(channel).Stats(pb.StatsRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "telemetry is disabled" not in (err.value.details() or "")
        # plaintext client against a TLS server fails too
        with grpc.insecure_channel(srv.address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.AnalyticsStub(channel).Stats(pb.StatsRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "telemetry is disabled" not in (err.value.details() or "")
    finally:
        srv.stop()


def test_tls_settings_errors_name_the_key(tmp_path):
    certs = make_certs(tmp_path)
    with pytest.raises(TlsFileError, match="set both cert_file and key_file"):
        create_server(GrpcSettings(listen="127.0.0.1:0", tls_cert_file=certs["server.pem"]))
    with pytest.raises(TlsFileError, match="grpc.tls.key_file: cannot read .*missing.key"):
        create_server(GrpcSettings(listen="127.0.0.1:0", tls_cert_file=certs["server.pem"],
                                   tls_key_file=tmp_path / "missing.key"))
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(TlsFileError, match="grpc.tls.cert_file: .*junk is not a PEM file"):
        create_server(GrpcSettings(listen="127.0.0.1:0", tls_cert_file=tmp_path / "junk",
                                   tls_key_file=certs["server.key"]))
