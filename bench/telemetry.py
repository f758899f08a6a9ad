"""Telemetry store benchmark: Portico's LMDB store beside DuckDB (1 thread) and raw LMDB appends.

    .venv/bin/python bench/telemetry.py                 # 10M events (a few minutes)
    .venv/bin/python bench/telemetry.py --events 200000 # quick

Synthetic events over 30 days with realistic skew (zipf orgs, paths, users, referrers). Every
figure is printed beside the baselines measured in the same run, then PASS/MISS per target
of issue 3. DuckDB gets typed columns and its appender; raw LMDB gets pre-built rows packed
with msgpack and putmulti(append=True), 10,000 per transaction, default sync.

The main ingest generates each 50,000-event chunk between timed sections, and the follower
folds during those pauses too. A last run (--sustained N, default 5M) builds every attribute
map first and feeds them at a steady --rate (default 250,000 ev/s) with no pause, to show
whether rollups really keep up with a load that never stops.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

import lmdb
import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from telemetry.events import make_event  # noqa: E402
from telemetry.query import Filter, ListQuery, Query  # noqa: E402
from telemetry.store import Store, StoreSettings  # noqa: E402

DAYS = 30
END = datetime(2026, 3, 31, tzinfo=timezone.utc)
START = END - timedelta(days=DAYS)
TYPES = ["request", "pageview", "click", "outbound", "email_open", "link_click", "user.joined", "user.left",
         "user.role_changed", "enrolment.enrolled", "enrolment.unenrolled"]
TYPE_P = np.array([0.60, 0.25, 0.08, 0.02, 0.02, 0.01, 0.005, 0.003, 0.002, 0.006, 0.004])
TYPE_P = TYPE_P / TYPE_P.sum()
BROWSERS = ["chrome", "firefox", "safari", "edge", "opera", "samsung", "bot", "curl", "ucbrowser", "other"]
STATUSES = np.array([200, 200, 200, 200, 200, 200, 304, 304, 404, 500, 301, 403])
CACHES = ["HIT", "MISS", "MISS", "BYPASS", "STALE", "EXPIRED"]
CHUNK = 50_000
COLS = ["ts", "type", "org", "project", "path", "referrer_host", "status", "cache", "user", "visitor", "session",
        "browser", "country", "duration_ms", "lat", "lon"]


def zipf(rng: np.random.Generator, n: int, k: int, a: float = 1.2) -> np.ndarray:
    return (np.minimum(rng.zipf(a, n), k) - 1).astype(np.int64)


def gen_chunk(i: int, total: int) -> dict[str, list]:
    """Columns for events [i, i+n): time-ordered over 30 days, skewed values (deterministic by i)."""
    n = min(CHUNK, total - i)
    rng = np.random.default_rng(1000 + i)
    span = DAYS * 86_400 * 10**6
    t0 = int(START.timestamp() * 1e6)
    # float arithmetic: i * span overflows int64 beyond ~3.5M events
    ts = t0 + (np.arange(i, i + n, dtype=np.float64) * (span / total)).astype(np.int64) \
        + rng.integers(0, max(1, span // total), n)
    org = zipf(rng, n, 50)
    user = zipf(rng, n, 200_000, 1.1)
    has_user = rng.random(n) < 0.7
    visitor = rng.integers(0, 500_000, n)
    ref = zipf(rng, n, 500)
    has_ref = rng.random(n) < 0.5
    geo = rng.random(n) < 0.2
    return {
        "ts": ts.tolist(),
        "type": [TYPES[k] for k in rng.choice(len(TYPES), n, p=TYPE_P).tolist()],
        "org": [f"org{k}" for k in org.tolist()],
        "project": [f"org{o}-p{p}" for o, p in zip(org.tolist(), zipf(rng, n, 5).tolist())],
        "path": [f"/s{k % 97}/page{k}" for k in zipf(rng, n, 20_000, 1.15).tolist()],
        "referrer_host": [f"ref{k}.example" if h else None for k, h in zip(ref.tolist(), has_ref.tolist())],
        "status": STATUSES[rng.integers(0, len(STATUSES), n)].tolist(),
        "cache": [CACHES[k] for k in rng.integers(0, len(CACHES), n).tolist()],
        "user": [f"user{u}" if h else None for u, h in zip(user.tolist(), has_user.tolist())],
        "visitor": [None if h else f"v{v}" for v, h in zip(visitor.tolist(), has_user.tolist())],
        "session": [f"s{k}" for k in rng.integers(0, 2_000_000, n).tolist()],
        "browser": [BROWSERS[k] for k in zipf(rng, n, len(BROWSERS), 1.5).tolist()],
        "country": [f"C{k}" for k in zipf(rng, n, 40).tolist()],
        "duration_ms": np.round(rng.lognormal(3, 1, n), 2).tolist(),
        "lat": [round(la, 4) if g else None for la, g in zip(rng.uniform(-60, 70, n).tolist(), geo.tolist())],
        "lon": [round(lo, 4) if g else None for lo, g in zip(rng.uniform(-180, 180, n).tolist(), geo.tolist())],
    }


ATTR_COLS = [c for c in COLS if c not in ("ts", "type")]


def attrs_of(ch: dict[str, list], j: int) -> dict:
    return {c: ch[c][j] for c in ATTR_COLS if ch[c][j] is not None}


def chunk_attrs(ch: dict[str, list]) -> list[dict]:
    cols = [(c, ch[c]) for c in ATTR_COLS]
    n = len(ch["ts"])
    out = []
    for j in range(n):
        d = {}
        for c, col in cols:
            v = col[j]
            if v is not None:
                d[c] = v
        out.append(d)
    return out


# ---- memory ----------------------------------------------------------------------------

class MemSampler(threading.Thread):
    """Peak private (anonymous) memory and RSS of this process, sampled every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_anon = 0
        self.peak_rss = 0
        self.stop = threading.Event()

    def sample(self) -> None:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    self.peak_anon = max(self.peak_anon, int(line.split()[1]) * 1024)
                elif line.startswith("VmRSS:"):
                    self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.sample()


# ---- runs ------------------------------------------------------------------------------

def ingest_portico(path: Path, total: int) -> dict:
    store = Store.open(StoreSettings(path))
    mem = MemSampler()
    mem.sample()
    base_anon = mem.peak_anon
    mem.start()
    timed = 0.0
    acked = 0
    inflight: deque = deque()
    for i in range(0, total, CHUNK):
        ch = gen_chunk(i, total)
        attrs = chunk_attrs(ch)
        types, ts = ch["type"], ch["ts"]
        del ch
        t = time.perf_counter()
        for s in range(0, len(attrs), 1000):
            evs = [make_event(types[j], attrs[j], time_us=ts[j]) for j in range(s, min(s + 1000, len(attrs)))]
            inflight.append(store.submit(evs))
            while len(inflight) > 16:
                acked += inflight.popleft().result().accepted
        while inflight:
            acked += inflight.popleft().result().accepted
        timed += time.perf_counter() - t
        del attrs
    t_end = time.perf_counter()
    store.flush(600)
    lag = time.perf_counter() - t_end
    follower_cpu = _child_cpu(store)
    mem.sample()
    mem.stop.set()
    out = {"store": store, "rate": acked / timed, "acked": acked, "catch_up": lag,
           "peak_anon": mem.peak_anon, "base_anon": base_anon, "peak_rss": mem.peak_rss,
           "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "follower_cpu": follower_cpu}
    return out


def _child_cpu(store: Store) -> float | None:
    """CPU seconds the follower process has used (user + system), from /proc."""
    child = getattr(store, "_child", None)
    try:
        fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (AttributeError, OSError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest_sustained(path: Path, total: int, rate: int) -> dict:
    """The main ingest pauses between chunks to generate data, and the follower catches up in
    those pauses. Here every attribute map is built first, then fed at a steady `rate` with
    no pause (make_event in the loop, as in the main run): does folding keep up for real?"""
    chunks = []
    for i in range(0, total, CHUNK):
        ch = gen_chunk(i, total)
        chunks.append((chunk_attrs(ch), ch["type"], ch["ts"]))
    gc.collect()
    gc.freeze()                 # millions of prebuilt dicts: keep them out of every collection
    store = Store.open(StoreSettings(path))
    inflight: deque = deque()
    acked = sent = 0
    waited = slept = 0.0
    t = time.perf_counter()
    cpu0 = time.process_time()
    for attrs, types, ts in chunks:
        for s in range(0, len(attrs), 1000):
            evs = [make_event(types[j], attrs[j], time_us=ts[j]) for j in range(s, min(s + 1000, len(attrs)))]
            inflight.append(store.submit(evs))
            sent += len(evs)
            if len(inflight) > 16:
                w = time.perf_counter()
                while len(inflight) > 16:
                    acked += inflight.popleft().result().accepted
                waited += time.perf_counter() - w
            ahead = sent / rate - (time.perf_counter() - t)
            if ahead > 0:
                slept += ahead
                time.sleep(ahead)
    while inflight:
        acked += inflight.popleft().result().accepted
    seconds = time.perf_counter() - t
    t_end = time.perf_counter()
    store.flush(600)
    out = {"rate": acked / seconds, "seconds": seconds, "catch_up": time.perf_counter() - t_end,
           "cpu_us": (time.process_time() - cpu0) / acked * 1e6,
           "follower_us": (_child_cpu(store) or 0.0) / acked * 1e6, "waited": waited, "slept": slept}
    store.close()
    del chunks
    gc.unfreeze()
    gc.collect()
    return out


def ingest_raw_lmdb(path: Path, total: int) -> float:
    env = lmdb.open(str(path), subdir=False, map_size=1 << 36, max_dbs=2)
    db = env.open_db(b"rows")
    timed = 0.0
    seq = 0
    pack = msgpack.Packer(use_bin_type=True).pack
    for i in range(0, total, CHUNK):
        ch = gen_chunk(i, total)
        attrs = chunk_attrs(ch)
        types, ts = ch["type"], ch["ts"]
        t = time.perf_counter()
        for s in range(0, len(attrs), 10_000):
            rows = []
            for j in range(s, min(s + 10_000, len(attrs))):
                seq += 1
                rows.append((ts[j].to_bytes(8, "big") + seq.to_bytes(8, "big"), pack((types[j], attrs[j]))))
            with env.begin(write=True, db=db) as txn:
                txn.cursor().putmulti(rows, append=True)
        timed += time.perf_counter() - t
    env.close()
    return total / timed


def ingest_duckdb(con, total: int) -> float:
    con.execute("""CREATE TABLE ev (ts TIMESTAMP, type VARCHAR, org VARCHAR, project VARCHAR, path VARCHAR,
                   referrer_host VARCHAR, status INTEGER, cache VARCHAR, "user" VARCHAR, visitor VARCHAR,
                   session VARCHAR, browser VARCHAR, country VARCHAR, duration_ms DOUBLE, lat DOUBLE, lon DOUBLE)""")
    timed = 0.0
    epoch = datetime(1970, 1, 1)   # naive UTC: DuckDB's TIMESTAMPTZ results would need pytz
    for i in range(0, total, CHUNK):
        ch = gen_chunk(i, total)
        tss = [epoch + timedelta(microseconds=x) for x in ch["ts"]]
        rows = list(zip(tss, *(ch[c] for c in COLS[1:])))
        t = time.perf_counter()
        ap = con.appender("ev")
        ap.append_rows(rows)
        ap.flush()
        timed += time.perf_counter() - t
    con.execute("CHECKPOINT")
    return total / timed


def timeit(fn, repeat: int = 5) -> tuple[float, object]:
    fn()
    times = []
    res = None
    for _ in range(repeat):
        t = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one, removed after)")
    ap.add_argument("--skip-duckdb", action="store_true")
    ap.add_argument("--sustained", type=int, default=None, metavar="N",
                    help="events for the strictly sustained run (built first: ~1 GB per million; default "
                         "min(--events, 5M)); 0 skips it")
    ap.add_argument("--rate", type=int, default=250_000, help="feed rate of the sustained run (events/s)")
    args = ap.parse_args()
    total = args.events
    if args.sustained is None:
        args.sustained = min(total, 5_000_000)
    work = Path(args.dir or tempfile.mkdtemp(prefix="portico-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"events: {total:,} over {DAYS} days; work dir {work}; cores {os.cpu_count()}")
    try:
        return run(total, work, args)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


def run(total: int, work: Path, args: argparse.Namespace) -> int:
    results: list[tuple[str, bool, str]] = []

    def verdict(name: str, ok: bool, text: str) -> None:
        results.append((name, ok, text))
        print(f"  {'PASS' if ok else 'MISS'}  {name}: {text}")

    print("\n== ingest (durable: default sync, acknowledged) ==")
    p = ingest_portico(work / "portico", total)
    store: Store = p.pop("store")
    print(f"  portico   {p['rate']:>10,.0f} ev/s acknowledged ({p['acked']:,} events); rollups/segments caught up "
          f"{p['catch_up']:.2f} s after the last ack")
    if p["follower_cpu"]:
        per = p["follower_cpu"] / p["acked"] * 1e6
        print(f"  follower  {per:.1f} us CPU per event folded (segments, rollups, indexes): one core folds "
              f"{1e6 / per:,.0f} ev/s")
    print(f"  memory    peak RSS {p['peak_rss'] / 2**20:.0f} MiB (incl. LMDB file pages), peak private "
          f"(anon) {p['peak_anon'] / 2**20:.0f} MiB, of which {p['base_anon'] / 2**20:.0f} MiB before ingest")
    gc.collect()
    raw = ingest_raw_lmdb(work / "raw.lmdb", total)
    print(f"  raw LMDB  {raw:>10,.0f} ev/s (msgpack + putmulti append, 10k per txn)")
    duck = None
    con = None
    if not args.skip_duckdb:
        import duckdb
        con = duckdb.connect(str(work / "duck.db"))
        con.execute("SET threads TO 1")
        duck = ingest_duckdb(con, total)
        print(f"  DuckDB    {duck:>10,.0f} ev/s (appender, typed columns, 1 thread)")
    verdict("ingest >= 250k ev/s durable", p["rate"] >= 250_000, f"{p['rate']:,.0f} ev/s"
            + (f" (DuckDB {duck:,.0f}, raw LMDB {raw:,.0f})" if duck else ""))
    verdict("rollups caught up <= 2 s after load", p["catch_up"] <= 2.0, f"{p['catch_up']:.2f} s")
    private = p["peak_anon"]
    verdict("writer private memory <= 200 MB", private <= 200e6,
            f"peak anon {private / 1e6:.0f} MB (bench's own chunk of {CHUNK:,} dicts included), "
            f"peak RSS {p['peak_rss'] / 1e6:.0f} MB")

    st = store.stats()
    print(f"  store: {st.events:,} events, {st.bytes / 2**20:.0f} MiB, {st.partitions} partitions")

    print("\n== queries (median of 5 after a warm-up) ==")
    end = END
    d30, d7 = end - timedelta(days=30), end - timedelta(days=7)
    n_end, n30, n7 = (x.replace(tzinfo=None) for x in (end, d30, d7))

    def ratio(ours: float, theirs: float | None) -> str:
        return f"ours {ours * 1e3:.1f} ms" + (f" vs DuckDB {theirs * 1e3:.1f} ms ({ours / theirs:.2f}x)" if theirs else "")

    # 1. count per hour over 30 days, one type, filtered by org
    q1 = Query(start=d30, end=end, types=("request",), filters=(Filter("org", "eq", "org1"),), interval="hour",
               limit=10_000)
    t1, r1 = timeit(lambda: store.query(q1))
    dt1 = dr1 = None
    if con:
        dt1, dr1 = timeit(lambda: con.execute(
            "SELECT time_bucket(INTERVAL 1 HOUR, ts) h, count(*) FROM ev WHERE type='request' AND org='org1' "
            "AND ts >= ? AND ts < ? GROUP BY h ORDER BY h", [n30, n_end]).fetchall())
        assert sum(r.value for r in r1.rows) == sum(c for _, c in dr1), "q1 totals differ"
    verdict("count/hour 30 d by org <= 30 ms", t1 <= 0.030, ratio(t1, dt1))

    # 2. top-20 paths over 7 days
    q2 = Query(start=d7, end=end, group_by=("path",), interval=None, order="value_desc", limit=20)
    t2, r2 = timeit(lambda: store.query(q2))
    dt2 = None
    if con:
        dt2, dr2 = timeit(lambda: con.execute(
            "SELECT path, count(*) c FROM ev WHERE ts >= ? AND ts < ? GROUP BY path ORDER BY c DESC LIMIT 20",
            [n7, n_end]).fetchall())
        assert [r.value for r in r2.rows] == [c for _, c in dr2], "q2 differs"
    verdict("top-20 paths 7 d <= 0.6x DuckDB", bool(dt2) and t2 <= 0.6 * dt2, ratio(t2, dt2))

    # 3. unique users per day over 30 days
    q3 = Query(start=d30, end=end, metric="users", interval="day")
    t3, r3 = timeit(lambda: store.query(q3), repeat=3)
    dt3 = None
    if con:
        dt3, dr3 = timeit(lambda: con.execute(
            "SELECT date_trunc('day', ts) d, count(DISTINCT coalesce(\"user\", visitor)) "
            "FROM ev WHERE ts >= ? AND ts < ? GROUP BY d ORDER BY d", [n30, n_end]).fetchall(), repeat=3)
        ours3 = {r.bucket.replace(tzinfo=None): r.value for r in r3.rows if r.value}
        assert ours3 == {d: c for d, c in dr3 if c}, "q3 differs"
    verdict("unique users/day 30 d <= 0.2x DuckDB", bool(dt3) and t3 <= 0.2 * dt3, ratio(t3, dt3))

    # 4. ad-hoc group-by on an attribute without rollups, 7 days
    q4 = Query(start=d7, end=end, group_by=("browser",), interval=None, order="value_desc")
    t4, r4 = timeit(lambda: store.query(q4))
    dt4 = None
    if con:
        dt4, dr4 = timeit(lambda: con.execute(
            "SELECT browser, count(*) c FROM ev WHERE ts >= ? AND ts < ? GROUP BY browser ORDER BY c DESC",
            [n7, n_end]).fetchall())
        assert sorted(r.value for r in r4.rows) == sorted(c for _, c in dr4), "q4 differs"
    verdict("ad-hoc group-by 7 d <= DuckDB", bool(dt4) and t4 <= dt4, ratio(t4, dt4))

    # 5. a page of 100 raw events deep into the data
    mid = START + timedelta(days=DAYS * 0.77)
    first = store.list_events(ListQuery(start=START, end=end, limit=100, page_token=None))
    deep = store.list_events(ListQuery(start=mid, end=end, limit=100))
    token = deep.next_page_token
    lq = ListQuery(start=mid, end=end, limit=100, page_token=token)
    t5, r5 = timeit(lambda: store.list_events(lq), repeat=50)
    assert len(r5.events) == 100 and len(first.events) == 100
    dt5 = None
    if con:
        last = r5.events[0].time_us
        dt5, _ = timeit(lambda: con.execute(
            "SELECT * FROM ev WHERE ts > make_timestamp(?) ORDER BY ts LIMIT 100", [last]).fetchall(), repeat=10)
    verdict("page of 100 at depth <= 1 ms", t5 <= 0.001, ratio(t5, dt5) + " (DuckDB: keyset ORDER BY ts LIMIT 100)")

    store.close()
    if con:
        con.close()

    # The store alone: record() of events already validated by make_event (the gateway's
    # producers validate in their own request handling), same durability.
    n_pre = min(total, 300_000)
    pre = []
    for i in range(0, n_pre, CHUNK):
        ch = gen_chunk(i, n_pre)
        attrs = chunk_attrs(ch)
        pre += [make_event(ch["type"][j], attrs[j], time_us=ch["ts"][j]) for j in range(len(attrs))]
    s2 = Store.open(StoreSettings(work / "prepared"))
    t = time.perf_counter()
    futs: deque = deque()
    for i in range(0, n_pre, 1000):
        futs.append(s2.submit(pre[i:i + 1000]))
        while len(futs) > 16:
            futs.popleft().result()
    while futs:
        futs.popleft().result()
    rate_pre = n_pre / (time.perf_counter() - t)
    s2.close()
    print(f"\n  store only (prepared events, {n_pre:,}): {rate_pre:,.0f} ev/s acknowledged")
    results.append(("(info) record() of prepared events", rate_pre >= 250_000, f"{rate_pre:,.0f} ev/s"))
    if args.sustained:
        sus = ingest_sustained(work / "sustained", args.sustained, args.rate)
        print(f"\n== strictly sustained: {args.sustained:,} events built before the clock starts, fed at "
              f"{args.rate:,} ev/s with no pause ==")
        print(f"  {sus['rate']:,.0f} ev/s over {sus['seconds']:.1f} s; rollups caught up {sus['catch_up']:.2f} s "
              f"after the last ack")
        print(f"  CPU per event: {sus['cpu_us']:.2f} us feeding (make_event) and writing, "
              f"{sus['follower_us']:.2f} us in the follower")
        print(f"  feeder: {sus['slept']:.1f} s ahead of schedule (slept), {sus['waited']:.1f} s waiting on "
              f"acknowledgements (more than 16 batches in flight)")
        verdict(f"sustained {args.rate:,} ev/s for {sus['seconds']:.0f} s, rollups caught up <= 2 s",
                sus["rate"] >= 0.98 * args.rate and sus["catch_up"] <= 2.0,
                f"{sus['rate']:,.0f} ev/s, caught up in {sus['catch_up']:.2f} s")
    print("\n== summary ==")
    for name, ok, text in results:
        print(f"  {'PASS' if ok else 'MISS'}  {name}: {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
