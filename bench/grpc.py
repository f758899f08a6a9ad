"""The analytics API's cost: Record throughput and Query latency, over gRPC versus in-process.

1. Record: N events in batches of 1,000 sent to a gRPC server in another process (so client
   and server don't share a GIL, as with the CLI or another service), sequentially and with
   a few calls in flight. End to end: the events start as Python dicts and the timed loop
   includes the official client's encoding (`AnalyticsClient.record_events`: one msgpack
   blob per batch). Target: >= 100,000 events/s. For comparison, in the same run:
   the typed `RecordRequest.events` form (client builds pb.Event messages inside the timed
   loop), and in-process `Store.record` of the same dicts (make_event timed, the fair
   baseline) and of prebuilt Events (the store alone).
   Batches are in time order, as a live gateway or a log import sends them (each batch then
   falls into one or two daily partitions); `--shuffled` sends the events in random time order
   over the 7 days (a backfill: every batch touches all 7 partitions, one fsync'd commit each).
2. Query: the same queries over gRPC and in-process on the same data; median latency of each
   and the difference. Target: overhead <= 2 ms per call.

Usage: .venv/bin/python bench/grpc.py [--events 200000] [--repeat 30] [--inflight 4] [--typed 20000] [--shuffled]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# run as a script, bench/ is sys.path[0] and this file would shadow the grpc package itself
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from proto.convert import set_timestamp  # noqa: E402
from proto.portico.v1 import analytics_pb2 as pb  # noqa: E402
from proto.portico.v1 import analytics_pb2_grpc as pb_grpc  # noqa: E402

START = datetime(2026, 11, 1, tzinfo=timezone.utc)
DAYS = 7
BATCH = 1000
ORGS = ("acme", "globex", "initech", "umbrella", "hooli")
PATHS = tuple(f"/page/{i}" for i in range(200))


def make_events(n: int, prefix: str = "b", seed: int = 1, ordered: bool = True) -> list[dict[str, Any]]:
    """Request-like events spread over DAYS days (deterministic), in the wire form of
    `proto.packed` ({"id", "time_us", "type", "attrs"}).

    `ordered`: created in time order, as a live source creates them (sorting afterwards would
    also scatter the dicts in memory and slow every reader with cache misses).
    """
    import random

    rng = random.Random(seed)
    span = DAYS * 86400 * 1_000_000
    start_us = int(START.timestamp()) * 1_000_000
    times = [start_us + rng.randrange(span) for _ in range(n)]
    if ordered:
        times.sort()
    out = []
    for i, t in enumerate(times):
        out.append({"id": f"{prefix}{i:09d}", "time_us": t, "type": "request" if i % 5 else "user.joined",
                    "attrs": {"org": rng.choice(ORGS), "project": "p" + str(rng.randrange(4)),
                              "path": rng.choice(PATHS), "status": rng.choice((200, 200, 200, 404, 500)),
                              "user": f"u{rng.randrange(5000)}", "ms": rng.randrange(1, 400)}})
    return out


def to_request(batch: list[dict[str, Any]]) -> pb.RecordRequest:
    req = pb.RecordRequest()
    for e in batch:
        ev = req.events.add(id=e["id"], type=e["type"])
        ev.time.seconds, rem = divmod(e["time_us"], 1_000_000)
        ev.time.nanos = rem * 1000
        for k, v in e["attrs"].items():
            if isinstance(v, int):
                ev.attrs[k].int_value = v
            else:
                ev.attrs[k].string_value = v
    return req


def queries() -> dict[str, pb.QueryRequest]:
    """The benchmark's questions, as gRPC requests (converted to telemetry Query in-process)."""
    def q(**kw: Any) -> pb.QueryRequest:
        r = pb.QueryRequest(**kw)
        set_timestamp(r.start, START)
        set_timestamp(r.end, START + timedelta(days=DAYS))
        return r

    return {
        "count per hour, 7 days": q(interval="hour"),
        "top 20 paths, 7 days": q(interval="none", group_by=["path"], order="value_desc", page_size=20),
        "distinct users per day": q(interval="day", metric="users"),
        "5xx per day by org": q(interval="day", group_by=["org"], filters=[pb.Filter(expr="status>=500")]),
        "users preset by org": q(preset="users", interval="day", group_by=["org"]),
    }


# ---- server process -------------------------------------------------------------------------

def serve(path: str) -> None:
    """Child process: open the store, serve gRPC on 127.0.0.1:0, print the port; then each
    "flush" line on stdin waits for the store's indexes and answers "ok"; EOF stops."""
    import asyncio

    from proto.server import GrpcSettings, create_server
    from telemetry.store import Store, StoreSettings

    store = Store.open(StoreSettings(path=Path(path)))
    # time the store's own work inside the server, so overhead = client latency - this
    query_times: list[float] = []
    real_query = store.query

    def timed_query(q: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real_query(q)
        finally:
            query_times.append(time.perf_counter() - t0)

    store.query = timed_query  # type: ignore[method-assign]

    async def main() -> None:
        server, port, _ = create_server(GrpcSettings(listen="127.0.0.1:0"), store)
        await server.start()
        print(port, flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            if line.strip() == "flush":
                await asyncio.to_thread(store.flush, 120)
                print("ok", flush=True)
            elif line.strip() == "times":
                print(json.dumps(query_times), flush=True)
                query_times.clear()
        await server.stop(1)

    try:
        asyncio.run(main())
    finally:
        store.close()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its child processes
    (the store's follower), from /proc (Linux)."""
    def own(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    kids = [int(k) for t in Path(f"/proc/{pid}/task").iterdir()
            for k in (t / "children").read_text().split()]
    return own(pid) + sum(process_cpu(k) for k in kids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--inflight", type=int, default=4)
    parser.add_argument("--typed", type=int, default=20_000, help="events sent as typed pb.Event (0: skip)")
    parser.add_argument("--shuffled", action="store_true", help="events in random time order (backfill)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return

    from proto.client import AnalyticsClient, ClientSettings
    from proto.packed import pack_events
    from telemetry.events import make_event
    from telemetry.store import Store, StoreSettings

    events = make_events(args.events, ordered=not args.shuffled)
    batches = [events[i:i + BATCH] for i in range(0, len(events), BATCH)]
    typed_events = make_events(args.typed, "t", 2, ordered=not args.shuffled)   # other ids: no duplicates
    typed_batches = [typed_events[i:i + BATCH] for i in range(0, len(typed_events), BATCH)]
    t0 = time.perf_counter()
    for b in batches[:20]:
        pack_events(b)
    pack_rate = sum(map(len, batches[:20])) / (time.perf_counter() - t0)
    half = len(batches) // 2
    tmp = Path(tempfile.mkdtemp(prefix="portico-bench-grpc-"))
    store_a = tmp / "grpc"
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(store_a)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=ROOT, bufsize=1)
    port = int(child.stdout.readline())  # type: ignore[union-attr]
    print(f"events: {args.events:,} in batches of {BATCH}, {'shuffled over' if args.shuffled else 'time-ordered over'} "
          f"{DAYS} days; server pid {child.pid} on 127.0.0.1:{port}")
    print(f"client: msgpack encoding alone {pack_rate:,.0f} events/s (included in the figures below)")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]) as ch, \
                AnalyticsClient(ClientSettings(server=f"127.0.0.1:{port}", timeout=60)) as client:
            stub = pb_grpc.AnalyticsStub(ch)
            overhead: dict[str, float] = {}
            client.stats()  # connect before timing
            cpu0, server_cpu0 = os.times(), process_cpu(child.pid)
            t0 = time.perf_counter()
            accepted = sum(client.record_events(b).accepted for b in batches[:half])
            seq_s = time.perf_counter() - t0
            seq_n = sum(map(len, batches[:half]))
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.inflight) as pool:
                accepted += sum(r.accepted for r in pool.map(client.record_events, batches[half:]))
            par_s = time.perf_counter() - t0
            cpu1, server_cpu1 = os.times(), process_cpu(child.pid)
            client_us = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) * 1e6 / args.events
            server_us = (server_cpu1 - server_cpu0) * 1e6 / args.events
            par_n = args.events - seq_n
            assert accepted == args.events, f"accepted {accepted} of {args.events}"
            typed_rate = 0.0
            if typed_batches:
                t0 = time.perf_counter()
                typed = sum(stub.Record(to_request(b), timeout=60).accepted for b in typed_batches)
                typed_rate = typed / (time.perf_counter() - t0)
                assert typed == args.typed, f"accepted {typed} of {args.typed} typed events"
            # queries are timed on a caught-up store, as in-process below
            child.stdin.write("flush\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
            assert child.stdout.readline().strip() == "ok"  # type: ignore[union-attr]
            grpc_latency, server_latency = {}, {}
            for name, r in queries().items():
                for _ in range(2):  # warm-up
                    stub.Query(r, timeout=60)
                child.stdin.write("times\n")  # type: ignore[union-attr]
                json.loads(child.stdout.readline())  # type: ignore[union-attr]
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    stub.Query(r, timeout=60)
                    times.append(time.perf_counter() - t0)
                child.stdin.write("times\n")  # type: ignore[union-attr]
                inside = json.loads(child.stdout.readline())  # type: ignore[union-attr]
                grpc_latency[name] = statistics.median(times) * 1000
                server_latency[name] = statistics.median(inside) * 1000
                # overhead per call, paired: what the client waited minus the store's own time
                overhead[name] = statistics.median(t - i for t, i in zip(times, inside)) * 1000
    finally:
        child.stdin.close()  # type: ignore[union-attr]
        child.wait(timeout=30)

    from proto.convert import query_from_pb

    store = Store.open(StoreSettings(path=store_a))
    try:
        local_latency = {}
        for name, r in queries().items():
            q = query_from_pb(r)
            for _ in range(2):
                store.query(q)
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                store.query(q)
                times.append(time.perf_counter() - t0)
            local_latency[name] = statistics.median(times) * 1000
    finally:
        store.close()
    store = Store.open(StoreSettings(path=tmp / "local"))
    try:
        # the fair baseline: the same dicts, validated by make_event inside the timed loop
        t0 = time.perf_counter()
        for b in batches[:half]:
            store.record([make_event(e["type"], e["attrs"], id=e["id"], time_us=e["time_us"]) for e in b])
        local_dict_s = time.perf_counter() - t0
        # the store alone: Events prebuilt outside the timed loop
        prepared = [[make_event(e["type"], e["attrs"], id=e["id"], time_us=e["time_us"]) for e in b]
                    for b in batches[half:]]
        t0 = time.perf_counter()
        for b in prepared:
            store.record(b)
        local_s = time.perf_counter() - t0
    finally:
        store.close()

    seq_rate, par_rate = seq_n / seq_s, par_n / par_s
    local_dict_rate, local_rate = seq_n / local_dict_s, par_n / local_s
    print("\nRecord (durable before the answer; client encoding included)")
    print(f"  gRPC msgpack, 1 call in flight      {seq_rate:>10,.0f} events/s")
    print(f"  gRPC msgpack, {args.inflight} calls in flight     {par_rate:>10,.0f} events/s")
    print(f"  CPU per event (msgpack runs): client {client_us:.1f} us (encoding + gRPC), server {server_us:.1f} us "
          f"(gRPC, decoding, store, follower)")
    if typed_rate:
        print(f"  gRPC typed Event messages, 1 call   {typed_rate:>10,.0f} events/s ({args.typed:,} events)")
    print(f"  in-process Store.record(make_event) {local_dict_rate:>10,.0f} events/s (validation timed)")
    print(f"  in-process Store.record(Events)     {local_rate:>10,.0f} events/s (Events prebuilt)")
    best = max(seq_rate, par_rate)
    print(f"  best gRPC / in-process(make_event) {best / local_dict_rate:>10.2f}   target >= 100,000 events/s: "
          f"{'met' if best >= 100_000 else 'NOT met'}")
    print("\nQuery median latency (ms)   gRPC client   store in server   in-process   overhead/call")
    worst = 0.0
    for name in grpc_latency:
        worst = max(worst, overhead[name])
        print(f"  {name:<26} {grpc_latency[name]:>10.2f}   {server_latency[name]:>15.2f}   "
              f"{local_latency[name]:>10.2f}   {overhead[name]:>13.2f}")
    print("  overhead = client latency - the store's time inside the server, same call (median)")
    print(f"  worst overhead {worst:.2f} ms; target <= 2 ms: {'met' if worst <= 2 else 'NOT met'}")
    print(json.dumps({"record_grpc_seq": round(seq_rate), "record_grpc_parallel": round(par_rate),
                      "record_grpc_typed": round(typed_rate),
                      "cpu_us_per_event_client": round(client_us, 2), "cpu_us_per_event_server": round(server_us, 2), "record_inprocess_make_event": round(local_dict_rate),
                      "record_inprocess": round(local_rate), "query_overhead_ms_max": round(worst, 3)}))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
