"""CacheStore on a real LMDB in tmp_path: dedup, refcounts, orphans, LRU, restart."""

from __future__ import annotations

import msgpack

from addons.cache_store import CacheStore, CacheStoreSettings, Entry


def entry(url: str) -> Entry:
    return Entry(url, 200, "OK", [("Cache-Control", "max-age=60")], (), (), 0.0, 0.0, 0)


def test_same_body_is_stored_once_and_freed_with_its_last_reference(tmp_path):
    s = CacheStore(CacheStoreSettings(path=tmp_path / "c"))
    s.put(entry("http://a/1"), b"x" * 1000)
    s.put(entry("http://a/2"), b"x" * 1000)
    st = s.stats()
    assert (st["objects"], st["blobs"], st["dedup_ratio"]) == (2, 1, 2.0)
    s.invalidate("http://a/1")
    assert s.stats()["blobs"] == 1 and s.read_body(s.variants("http://a/2")[0]) == b"x" * 1000
    s.invalidate("http://a/2")
    st = s.stats()
    assert (st["objects"], st["blobs"], st["physical_bytes"]) == (0, 0, 0)
    s.close()


def test_replacing_a_variant_releases_the_old_body(tmp_path):
    s = CacheStore(CacheStoreSettings(path=tmp_path / "c"))
    s.put(entry("http://a/1"), b"old")
    s.put(entry("http://a/1"), b"new")
    assert s.stats()["blobs"] == 1 and s.read_body(s.variants("http://a/1")[0]) == b"new"
    s.close()


def test_orphan_blobs_are_collected_on_open(tmp_path):
    s = CacheStore(CacheStoreSettings(path=tmp_path / "c"))
    s.put(entry("http://a/1"), b"kept")
    with s.env.begin(write=True) as txn:  # simulate a blob left behind by an older version
        txn.put(b"\x01" * 32, b"orphan", db=s.db["blobs"])
    s.close()
    s = CacheStore(CacheStoreSettings(path=tmp_path / "c"))
    assert s.orphans_removed == 1 and s.stats()["blobs"] == 1
    s.close()


def test_lru_order_follows_touches_and_survives_restart(tmp_path):
    now = [1000.0]
    s = CacheStore(CacheStoreSettings(path=tmp_path / "c", max_size=3500), clock=lambda: now[0])
    for i in range(3):
        s.put(entry(f"http://a/{i}"), bytes([i]) * 1000)
        now[0] += 1
    s.touch(s.variants("http://a/0")[0])
    now[0] += 1
    s.put(entry("http://a/3"), b"\x03" * 1000)
    assert s.variants("http://a/0") and not s.variants("http://a/1")
    s.close()
    s = CacheStore(CacheStoreSettings(path=tmp_path / "c", max_size=3500))
    assert [bool(s.variants(f"http://a/{i}")) for i in range(4)] == [True, False, True, True]
    assert s.stats()["evictions"] >= 1
    s.close()


def test_too_large_objects_are_refused(tmp_path):
    s = CacheStore(CacheStoreSettings(path=tmp_path / "c", max_object_size=10))
    assert s.put(entry("http://a/big"), b"x" * 11) is False and s.stats()["objects"] == 0
    s.close()


def test_prefix_purge_does_not_cross_into_longer_names(tmp_path):
    s = CacheStore(CacheStoreSettings(path=tmp_path / "c"))
    for u in ("http://a/docs/1", "http://a/docs/2", "http://a/docsx", "http://b/docs/1"):
        s.put(entry(u), u.encode())
    assert s.purge_prefix("http://a/docs/", batch=1) == 2
    assert s.variants("http://a/docsx") and s.variants("http://b/docs/1")
    s.close()


def test_long_urls_get_a_bounded_key(tmp_path):
    s = CacheStore(CacheStoreSettings(path=tmp_path / "c"))
    long_url = "http://a/" + "x" * 2000
    s.put(entry(long_url), b"l")
    assert s.variants(long_url)[0].url == long_url and not s.variants(long_url + "y")
    assert msgpack  # the record format is msgpack (see Entry.encode)
    s.close()
