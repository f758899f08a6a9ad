"""`portico cache purge URL | --prefix URL | --all` and `portico cache stats`.

Talks to a running gateway's CacheAdmin gRPC service (--server / PORTICO_SERVER, default
127.0.0.1:50051; --token / PORTICO_TOKEN, an admin token when the server has a tokens file).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import grpc

from proto.client import DEFAULT_SERVER, translate
from proxy.cli_common import CliError


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `cache purge` and `cache stats` to the `portico` parser."""
    cache = subparsers.add_parser("cache", help="purge the HTTP cache or show its statistics")
    sub = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=os.environ.get("PORTICO_SERVER", DEFAULT_SERVER),
                        help="gRPC address of the gateway (env PORTICO_SERVER; default %(default)s)")
    common.add_argument("--token", default=os.environ.get("PORTICO_TOKEN"),
                        help="admin bearer token (env PORTICO_TOKEN)")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default %(default)s)")

    purge = sub.add_parser("purge", parents=[common], help="remove stored responses without restarting")
    target = purge.add_mutually_exclusive_group(required=True)
    target.add_argument("url", nargs="?", help="one absolute URL (all its variants)")
    target.add_argument("--prefix", metavar="URL", help="every URL starting with this absolute URL")
    target.add_argument("--all", action="store_true", help="empty the whole cache")
    purge.set_defaults(func=run_purge)

    stats = sub.add_parser("stats", parents=[common], help="objects, bytes, hit ratio, bytes saved, dedup ratio")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=run_stats)


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    from proto.portico.v1 import cache_pb2_grpc as pb_grpc

    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    with grpc.insecure_channel(args.server) as channel:
        try:
            return getattr(pb_grpc.CacheAdminStub(channel), method)(request, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            raise CliError(str(translate(e, args.server)),
                           2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1) from None


def _absolute(url: str, flag: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise CliError(f"{flag}: expected an absolute URL like 'https://app.example.org/page', got {url!r}", 2)
    return url


def run_purge(args: argparse.Namespace) -> int:
    from proto.portico.v1 import cache_pb2 as pb

    if args.all:
        request = pb.PurgeRequest(all=True)
    elif args.prefix:
        request = pb.PurgeRequest(prefix=_absolute(args.prefix, "--prefix"))
    else:
        request = pb.PurgeRequest(url=_absolute(args.url, "URL"))
    reply = _call(args, "Purge", request)
    print(f"purged {reply.purged} stored response(s)")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from proto.portico.v1 import cache_pb2 as pb

    r = _call(args, "Stats", pb.CacheStatsRequest())
    data = {"objects": r.objects, "bytes": r.bytes, "max_size": r.max_size, "hit_ratio": round(r.hit_ratio, 4),
            "bytes_saved": r.bytes_saved, "dedup_ratio": round(r.dedup_ratio, 3), "blobs": r.blobs,
            **dict(sorted(r.counters.items()))}
    if args.json:
        print(json.dumps(data))
    else:
        for k, v in data.items():
            print(f"{k:14} {v}")
    return 0
