"""The store: idempotent ids, writer behaviour, map growth and errors, retention, backup/restore."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from telemetry.errors import StoreClosedError, StoreError, StoreFullError, StoreIOError
from telemetry.events import event_from_json, event_to_json, make_event
from telemetry.query import ListQuery, Query
from telemetry.store import Store, StoreSettings
from tests.telemetry.conftest import T0, open_store

REPO = Path(__file__).resolve().parents[2]


def _count(store: Store, start=T0, end=None, **kw) -> int:  # noqa: ANN001, ANN003
    end = end or start + timedelta(days=30)
    r = store.query(Query(start=start, end=end, interval=None, **kw))
    return sum(row.value for row in r.rows)


def test_duplicate_ids_are_ignored_and_reported(store):
    evs = [make_event("pageview", {"i": i}, id=f"k{i}", time=T0 + timedelta(seconds=i)) for i in range(50)]
    assert store.record(evs).accepted == 50
    again = store.record(evs[:20] + [make_event("pageview", {}, id="new", time=T0)])
    assert (again.accepted, again.duplicates) == (1, 20)
    # duplicates inside one batch too
    twin = make_event("pageview", {}, id="twin", time=T0)
    r = store.record([twin, twin])
    assert (r.accepted, r.duplicates) == (1, 1)
    store.flush(5)
    assert _count(store) == 52
    assert store.stats().events == 52


def test_generated_ids_stay_idempotent_on_retry_and_reimport(store):
    """Generated ids skip the duplicate lookup on first commit only: retries and re-imports
    of the same event must still be found."""
    evs = [make_event("pageview", {"i": i}, time=T0 + timedelta(seconds=i)) for i in range(30)]
    first = store.submit(evs[:10])
    again = store.submit(evs[:10])              # a retry racing the first commit
    assert first.result(10).accepted + again.result(10).accepted == 10
    r = store.record(evs[5:15] + evs[14:15])    # 5 retried, 5 new, one twice in the batch
    assert (r.accepted, r.duplicates) == (5, 6)
    reimported = [event_from_json(event_to_json(e)) for e in evs]   # explicit ids now
    r = store.record(reimported)
    assert (r.accepted, r.duplicates) == (15, 15)
    store.flush(5)
    assert _count(store) == 30


def test_generated_ids_are_found_among_many_events_of_their_millisecond(store):
    """A stored generated id is found by scanning its millisecond's rows (it has no index
    entry): the scan must find it among others and never mistake a neighbour for it."""
    same_ms = [make_event("pageview", {"i": i}, time_us=int(T0.timestamp() * 1e6) + i % 1000) for i in range(300)]
    assert store.record(same_ms).accepted == 300
    r = store.record(same_ms[::7] + [make_event("pageview", {"i": -1}, time_us=same_ms[0].time_us)])
    assert (r.accepted, r.duplicates) == (1, len(same_ms[::7]))
    # a supplied id shaped like a generated one, at another time than the one it names
    ulid = same_ms[3].id
    r = store.record([make_event("pageview", {}, id=ulid[:-1] + ("0" if ulid[-1] != "0" else "1"),
                                 time=T0 + timedelta(days=1))])
    assert (r.accepted, r.duplicates) == (1, 0)
    r = store.record([make_event("pageview", {}, id=ulid[:-1] + ("0" if ulid[-1] != "0" else "1"),
                                 time=T0 + timedelta(days=1))])
    assert (r.accepted, r.duplicates) == (0, 1)


def test_submit_resolves_after_commit_and_many_callers_group_commit(store):
    futs = [store.submit([make_event("click", {"n": i}, time=T0)]) for i in range(300)]
    results = [f.result(10) for f in concurrent.futures.as_completed(futs)]
    assert sum(r.accepted for r in results) == 300


def test_closed_store_refuses_with_a_clear_error(tmp_path):
    s = open_store(tmp_path / "d")
    s.close()
    with pytest.raises(StoreClosedError, match="closed"):
        s.record([make_event("x")])
    with pytest.raises(StoreClosedError):
        s.query(Query(start=T0, end=T0 + timedelta(days=1)))


def test_reopen_keeps_events_and_sequence(tmp_path):
    s = open_store(tmp_path / "d")
    s.record([make_event("x", {"a": 1}, time=T0)])
    s.close()
    s = open_store(tmp_path / "d")
    s.record([make_event("x", {"a": 2}, time=T0)])   # same microsecond: keys must not collide
    s.flush(5)
    assert [e.attrs["a"] for e in s.list_events(ListQuery(start=T0, end=T0 + timedelta(1))).events] == [1, 2]
    assert _count(s) == 2
    s.close()


def test_full_map_grows_automatically(tmp_path):
    s = open_store(tmp_path / "d", map_size=1 << 18, max_map_size=1 << 26)
    evs = [make_event("pageview", {"path": "/x" * 200, "i": i}, time=T0) for i in range(3000)]
    for i in range(0, 3000, 500):
        assert s.record(evs[i:i + 500]).accepted == 500
    s.flush(10)
    assert s.stats().events == 3000
    assert max(f["map_size"] for f in s.stats().files) > 1 << 18
    s.close()


def test_map_full_at_max_size_is_a_clear_store_full_error(tmp_path):
    s = open_store(tmp_path / "d", map_size=1 << 18, max_map_size=1 << 19)
    big = [make_event("pageview", {"blob": "y" * 2000, "i": i}, time=T0) for i in range(400)]
    with pytest.raises(StoreFullError) as ei:
        for i in range(0, 400, 50):
            s.record(big[i:i + 50])
    msg = str(ei.value)
    assert ".events.lmdb" in msg and "map size" in msg and "max_map_size" in msg
    # still usable for reads afterwards
    assert s.stats().events > 0
    s.close()


def test_disk_error_is_reported_as_store_error_naming_the_file(tmp_path):
    # A child process whose file-size limit is tiny: LMDB's writes fail with EFBIG, a real I/O error.
    code = textwrap.dedent(f"""
        import resource, signal, sys
        from datetime import datetime, timezone
        from pathlib import Path
        from telemetry.store import Store, StoreSettings
        from telemetry.events import make_event
        from telemetry.errors import StoreError
        s = Store.open(StoreSettings(Path({str(tmp_path / 'd')!r}), map_size=1 << 24))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        t = datetime(2026, 3, 1, tzinfo=timezone.utc)
        try:
            for i in range(200):
                s.record([make_event("pageview", {{"blob": "z" * 1500, "i": j}}, time=t) for j in range(20)])
        except StoreError as e:
            print("ERR", type(e).__name__, e)
            sys.exit(0)
        print("NO ERROR")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("ERR"), out.stdout + out.stderr
    assert ".lmdb" in out.stdout


def test_open_on_a_file_instead_of_a_directory_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreIOError, match=str(f)):
        Store.open(StoreSettings(f))


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(StoreError, match="partition"):
        Store.open(StoreSettings(tmp_path, partition="hour"))


def test_retention_deletes_whole_partition_files_per_type(tmp_path):
    s = open_store(tmp_path / "d", retention={"request": timedelta(days=7), "*": timedelta(days=30)})
    now = datetime(2026, 3, 31, 12, tzinfo=timezone.utc)
    old, mid = now - timedelta(days=40), now - timedelta(days=10)
    s.record([make_event("request", {}, time=old), make_event("pageview", {}, time=old),
              make_event("request", {}, time=mid), make_event("pageview", {}, time=mid),
              make_event("request", {}, time=now)])
    s.flush(5)
    pdir = tmp_path / "d" / "p"
    before = sorted(p.name for p in pdir.glob("*.events.lmdb"))
    assert len(before) == 5     # request and pageview files are separate classes
    deleted = s.apply_retention(now)
    after = sorted(p.name for p in pdir.glob("*.lmdb"))
    assert sorted(deleted) == sorted([f"request@d{old:%Y%m%d}", f"_all@d{old:%Y%m%d}", f"request@d{mid:%Y%m%d}"])
    assert len(after) == 2 * 2     # events + derived of the two survivors
    page = s.list_events(ListQuery(start=now - timedelta(days=60), end=now + timedelta(days=1)))
    assert sorted((e.type, e.time_us) for e in page.events) == sorted(
        [("pageview", int(mid.timestamp() * 1e6)), ("request", int(now.timestamp() * 1e6))])
    s.close()


def test_week_partitions_start_on_monday(tmp_path):
    s = open_store(tmp_path / "d", partition="week")
    s.record([make_event("x", {}, time=datetime(2026, 3, 4, tzinfo=timezone.utc)),   # Wednesday
              make_event("x", {}, time=datetime(2026, 3, 8, 23, tzinfo=timezone.utc))])  # Sunday
    assert [p.name for p in (tmp_path / "d" / "p").glob("*.events.lmdb")] == ["_all@w20260302.events.lmdb"]
    s.close()


def test_backup_is_consistent_and_restores(tmp_path):
    s = open_store(tmp_path / "d")
    s.record([make_event("pageview", {"org": "acme", "i": i}, time=T0 + timedelta(minutes=i)) for i in range(500)])
    s.flush(5)
    s.backup(tmp_path / "bk")
    s.record([make_event("pageview", {"org": "acme"}, time=T0)])   # after the backup: not in it
    s.close()
    with pytest.raises(StoreIOError, match="not an empty directory"):
        Store.restore(tmp_path / "bk", tmp_path / "d")
    Store.restore(tmp_path / "bk", tmp_path / "restored")
    r = open_store(tmp_path / "restored")
    r.flush(5)
    assert r.stats().events == 500
    assert _count(r, filters=()) == 500
    r.close()


def test_restore_refuses_a_directory_that_is_not_a_backup(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(StoreIOError, match="not a telemetry backup"):
        Store.restore(tmp_path / "junk", tmp_path / "out")


def test_follower_catches_up_after_reopen(tmp_path):
    s = open_store(tmp_path / "d")
    s.record([make_event("pageview", {"org": "a"}, time=T0) for _ in range(100)])
    s.flush(5)
    s.close()
    # forget the derived files: reopening must rebuild rollups and segments from the rows
    for f in (tmp_path / "d" / "p").glob("*.derived.lmdb*"):
        os.unlink(f)
    s = open_store(tmp_path / "d")
    s.flush(10)
    assert _count(s) == 100
    s.close()


def test_stats_report_events_bytes_partitions_and_range(store):
    store.record([make_event("x", {}, time=T0), make_event("x", {}, time=T0 + timedelta(days=2, hours=3))])
    st = store.stats()
    assert (st.events, st.partitions) == (2, 2)
    assert st.oldest == T0 and st.newest == T0 + timedelta(days=2, hours=3)
    assert st.bytes > 0


def test_thread_follower_mode_builds_the_same_rollups(tmp_path):
    s = open_store(tmp_path / "d", follower="thread")
    s.record([make_event("pageview", {"org": "acme" if i % 3 else "globex", "user": f"u{i % 10}"},
                         time=T0 + timedelta(minutes=i)) for i in range(600)])
    s.flush(10)
    assert _count(s, filters=(__import__("telemetry.query", fromlist=["Filter"]).Filter("org", "eq", "acme"),)) == 400
    r = s.query(Query(start=T0, end=T0 + timedelta(days=1), metric="users", interval=None))
    assert r.rows[0].value == 10
    s.close()


def test_rollups_catch_up_after_the_last_ack(tmp_path):
    """Every acknowledged event is folded into the rollups (how fast: bench/telemetry.py)."""
    s = open_store(tmp_path / "d", sync=True)
    evs = [make_event("request", {"org": f"o{i % 7}", "path": f"/p{i % 50}", "user": f"u{i % 300}"},
                      time=T0 + timedelta(seconds=i)) for i in range(30_000)]
    futs = [s.submit(evs[i:i + 1000]) for i in range(0, len(evs), 1000)]
    assert sum(f.result(30).accepted for f in futs) == 30_000
    s.flush(timeout=60)  # the follower runs niced: on a loaded CI machine it may be slow
    assert _count(s) == 30_000
    assert s.stats().pending == 0
    s.close()


def test_unknown_follower_mode_is_refused(tmp_path):
    with pytest.raises(StoreError, match="follower"):
        Store.open(StoreSettings(tmp_path, follower="fork"))


def test_a_backlog_is_committed_in_few_larger_batches(tmp_path):
    """A batch closes at batch_max events, but what is already queued joins it (up to
    BACKLOG_BATCHES x batch_max): after a slow commit (here: the partition's write lock held by
    the test) the writer catches up in a few commits, not one per batch_max."""
    s = open_store(tmp_path / "data", batch_max=100)
    try:
        s.record([make_event("x", {"n": -1}, time=T0)])
        part = s.partitions()[0]
        with part.events.begin(write=True):               # the writer blocks on this lock
            futures = [s.submit([make_event("x", {"n": i}, time=T0 + timedelta(seconds=i))
                                 for _ in range(100)]) for i in range(10)]
        assert sum(f.result(10).accepted for f in futures) == 1000
        with part.events.begin() as txn:
            commits = txn.stat(part.log)["entries"]        # the follower's feed: one entry per commit
        # the first record, the batch the writer held when blocked, then 900 in batches of 400
        assert commits <= 1 + 1 + 3, f"1,000 queued events took {commits - 1} commits"
    finally:
        s.close()


def test_the_store_shortens_the_gil_switch_interval_and_never_lengthens_it(tmp_path):
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        s = open_store(tmp_path / "a")
        assert sys.getswitchinterval() == pytest.approx(0.001)
        s.close()
        sys.setswitchinterval(0.0002)
        s = open_store(tmp_path / "b")
        assert sys.getswitchinterval() == pytest.approx(0.0002)
        s.close()
        sys.setswitchinterval(0.005)
        s = open_store(tmp_path / "c", switch_interval=None)
        assert sys.getswitchinterval() == pytest.approx(0.005)
        s.close()
        with pytest.raises(StoreError, match="switch_interval"):
            StoreSettings(tmp_path / "d", switch_interval=0).validate()
    finally:
        sys.setswitchinterval(before)


def test_the_follower_lets_a_small_backlog_grow_but_flush_never_waits_for_it(tmp_path):
    """At low rates the follower process folds what it finds, then waits fold_gather for the
    next small backlog to grow (a fold has a fixed cost); flush() tells it to fold now."""
    s = open_store(tmp_path / "data", fold_gather=30.0)
    try:
        s.record([make_event("x", {"n": i}, time=T0 + timedelta(seconds=i)) for i in range(5)])
        s.flush(10)
        time.sleep(1.0)                  # the process reads flush's last "now" messages, goes idle
        s.record([make_event("x", {"n": i}, time=T0 + timedelta(seconds=10 + i)) for i in range(7)])
        deadline = time.monotonic() + 10
        while s.stats().pending and time.monotonic() < deadline:     # found idle: folded at once
            time.sleep(0.02)
        assert s.stats().pending == 0
        s.record([make_event("x", {"n": i}, time=T0 + timedelta(seconds=20 + i)) for i in range(9)])
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert s.stats().pending == 9, "folded within fold_gather of the last fold, without a flush"
            time.sleep(0.1)
        s.flush(10)                                    # would time out if it waited 30 s
        assert s.stats().pending == 0 and _count(s) == 21
    finally:
        s.close()
