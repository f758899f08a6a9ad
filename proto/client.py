"""A small blocking client for `portico.v1.Analytics` (used by the `portico` CLI and scripts).

It adds the bearer token to every call, sets deadlines, follows pages, and turns gRPC
failures into `ApiError` with a one-line message such as
`server 127.0.0.1:50051 unreachable (connection refused)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from proto import packed
from proto.portico.v1 import analytics_pb2 as pb
from proto.portico.v1 import analytics_pb2_grpc as pb_grpc

DEFAULT_SERVER = "127.0.0.1:50051"


class ApiError(Exception):
    """A failed call; `code` is the gRPC status (None: never reached the server)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ClientSettings:
    server: str = DEFAULT_SERVER
    token: str | None = None
    timeout: float = 30.0
    tls_ca_file: Path | None = None      # set: use TLS, trusting this CA
    tls_cert_file: Path | None = None    # client certificate (with tls_key_file) for mTLS
    tls_key_file: Path | None = None
    tls: bool = False                    # TLS with the system's trusted CAs


_REASONS = (
    (re.compile(r"connection refused", re.I), "connection refused"),
    (re.compile(r"(dns resolution failed|name or service not known|could not resolve|nodename nor servname)", re.I),
     "cannot resolve the host name"),
    (re.compile(r"(handshake|ssl|certificate|tls)", re.I), "TLS handshake failed"),
    (re.compile(r"(timeout|timed out|deadline)", re.I), "connection timed out"),
    (re.compile(r"(no route to host|network is unreachable)", re.I), "no route to host"),
    (re.compile(r"(connection reset|socket closed|end of tcp stream)", re.I), "connection closed by the server"),
)


def unreachable_reason(details: str) -> str | None:
    """The short reason when `details` says the connection itself failed, else None."""
    if not re.search(r"failed to connect|connect|handshake|resolution|socket closed|end of tcp stream",
                     details or "", re.I):
        return None
    for pattern, reason in _REASONS:
        if pattern.search(details):
            return reason
    return "connection failed"


def translate(error: grpc.RpcError, server: str) -> ApiError:
    """An ApiError with a one-line message for a failed call."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else "") or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        reason = unreachable_reason(details)
        if reason is not None:
            return ApiError(f"server {server} unreachable ({reason})", code)
        return ApiError(f"server {server} unavailable: {details}", code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ApiError(f"server {server} did not answer in time (raise --timeout)", code)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ApiError(f"server {server} refused the call: {details}", code)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return ApiError(f"server {server} denied the call: {details}", code)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return ApiError(f"server {server} does not serve the analytics API ({details})", code)
    return ApiError(details or f"server {server}: {code.name if code else 'error'}", code)


class AnalyticsClient:
    """Blocking calls to one server; use as a context manager to close the channel."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.channel = _channel(settings)
        self.stub = pb_grpc.AnalyticsStub(self.channel)
        self.metadata = [("authorization", f"Bearer {settings.token}")] if settings.token else []

    def __enter__(self) -> AnalyticsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, name: str, request: Any) -> Any:
        try:
            return getattr(self.stub, name)(request, timeout=self.settings.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise translate(e, self.settings.server) from None

    def record(self, events: list[pb.Event]) -> pb.RecordResponse:
        """Send typed `pb.Event` messages (slower to decode on the server; see `record_events`)."""
        return self._call("Record", pb.RecordRequest(events=events))

    def record_events(self, events: Sequence[Mapping[str, Any]]) -> pb.RecordResponse:
        """Send wire maps {"type", "attrs", "id", "time_us"} (`packed.wire_event`) in one
        `events_msgpack` blob: the fast form. Errors in the answer index into `events`.

        Raises:
            packed.PackError: an event can't be encoded (names its index and field).
            ApiError: the call failed.
        """
        return self.record_packed(packed.pack_events(events))

    def record_packed(self, events_msgpack: bytes) -> pb.RecordResponse:
        """Send an already packed batch (`packed.pack_events` / `packed.join_packed`)."""
        return self._call("Record", pb.RecordRequest(events_msgpack=events_msgpack))

    def record_packed_async(self, events_msgpack: bytes) -> Callable[[], pb.RecordResponse]:
        """Start sending a packed batch; returns a function that waits for the answer.

        Lets a caller keep a few batches in flight (encode the next while the server stores
        this one). The returned function raises ApiError like `record_packed`.
        """
        future = self.stub.Record.future(pb.RecordRequest(events_msgpack=events_msgpack),
                                         timeout=self.settings.timeout, metadata=self.metadata)

        def result() -> pb.RecordResponse:
            try:
                return future.result()
            except grpc.RpcError as e:
                raise translate(e, self.settings.server) from None

        return result

    def query(self, request: pb.QueryRequest) -> pb.QueryResponse:
        return self._call("Query", request)

    def list_events(self, request: pb.ListEventsRequest) -> pb.ListEventsResponse:
        return self._call("ListEvents", request)

    def funnel(self, request: pb.FunnelRequest) -> pb.FunnelResponse:
        return self._call("Funnel", request)

    def stats(self) -> pb.StatsResponse:
        return self._call("Stats", pb.StatsRequest())

    def query_pages(self, request: pb.QueryRequest) -> Iterator[pb.QueryResponse]:
        """Every page from `request.page_token` on."""
        request = pb.QueryRequest.FromString(request.SerializeToString())
        while True:
            page = self.query(request)
            yield page
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def event_pages(self, request: pb.ListEventsRequest) -> Iterator[pb.ListEventsResponse]:
        request = pb.ListEventsRequest.FromString(request.SerializeToString())
        while True:
            page = self.list_events(request)
            yield page
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def export(self, request: pb.ExportRequest) -> Iterator[pb.ExportChunk]:
        """The CSV chunks of an export (no overall deadline: exports can be long)."""
        try:
            yield from self.stub.Export(request, metadata=self.metadata)
        except grpc.RpcError as e:
            raise translate(e, self.settings.server) from None


def _channel(settings: ClientSettings) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", 64 * 2**20)]
    if not (settings.tls or settings.tls_ca_file or settings.tls_cert_file):
        return grpc.insecure_channel(settings.server, options=options)

    def read(path: Path | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise ApiError(f"{what}: cannot read {path}: {e.strerror or e}") from None

    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise ApiError("client certificate: give both --tls-cert and --tls-key")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(settings.tls_ca_file, "--tls-ca"),
        private_key=read(settings.tls_key_file, "--tls-key"),
        certificate_chain=read(settings.tls_cert_file, "--tls-cert"),
    )
    return grpc.secure_channel(settings.server, credentials, options=options)
