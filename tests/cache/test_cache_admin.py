"""CacheAdmin over real gRPC (grpc.aio on 127.0.0.1:0) and the `portico cache` commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading

import grpc
import pytest

from addons import cache_policy as P
from addons.cache_store import CacheStore, CacheStoreSettings, Entry
from proto.cache_service import add_cache_service
from proto.portico.v1 import cache_pb2 as pb
from proto.portico.v1 import cache_pb2_grpc as pb_grpc
from proxy import cli_cache
from proxy.cli_common import CliError


def put(store: CacheStore, url: str, body: bytes) -> None:
    store.put(Entry(url, 200, "OK", [("Cache-Control", "max-age=60")], (), (), 0.0, 0.0, 0), body)


class Server:
    """A real grpc.aio server with CacheAdmin, on its own loop in a thread."""

    def __init__(self, store):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start():
            server = grpc.aio.server()
            add_cache_service(server, store)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self.server, self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def store(tmp_path):
    s = CacheStore(CacheStoreSettings(path=tmp_path / "c"))
    s.url_normalizer = P.normalize_absolute_url
    yield s
    s.close()


@pytest.fixture
def server(store):
    srv = Server(store)
    yield srv
    srv.stop()


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli_cache.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_purge_url_prefix_all_over_grpc(store, server):
    for path in ("/a", "/docs/1", "/docs/2", "/other"):
        put(store, f"http://app.test{path}", path.encode())
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.CacheAdminStub(ch)
        assert stub.Purge(pb.PurgeRequest(url="http://APP.test:80/a")).purged == 1
        assert stub.Purge(pb.PurgeRequest(prefix="http://app.test/docs/")).purged == 2
        assert stub.Stats(pb.CacheStatsRequest()).objects == 1
        assert stub.Purge(pb.PurgeRequest(all=True)).purged == 1
        with pytest.raises(grpc.RpcError) as e:
            stub.Purge(pb.PurgeRequest(url="not a url"))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "absolute" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stub.Purge(pb.PurgeRequest())
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cli_stats_and_purge(store, server, capsys):
    put(store, "http://app.test/x", b"same body")
    put(store, "http://app.test/y", b"same body")
    store.count("hit", 9)
    store.count("miss")
    assert cli("cache", "stats", "--json", "--server", f"127.0.0.1:{server.port}") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["objects"] == 2 and data["blobs"] == 1 and data["dedup_ratio"] == 2.0
    assert data["hit_ratio"] == 0.5 and data["bytes_saved"] == 9
    assert cli("cache", "purge", "--prefix", "http://app.test/", "--server", f"127.0.0.1:{server.port}") == 0
    assert "purged 2" in capsys.readouterr().out


def test_cli_errors_are_one_line(server):
    with pytest.raises(CliError, match="absolute URL") as e:
        cli("cache", "purge", "app.test/x", "--server", f"127.0.0.1:{server.port}")
    assert e.value.exit_code == 2
    with pytest.raises(CliError, match="unreachable"):
        cli("cache", "stats", "--server", "127.0.0.1:1", "--timeout", "2")


def test_disabled_cache_answers_failed_precondition():
    srv = Server(None)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            with pytest.raises(grpc.RpcError) as e:
                pb_grpc.CacheAdminStub(ch).Stats(pb.CacheStatsRequest())
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "cache.enabled" in e.value.details()
    finally:
        srv.stop()
