"""Cache behaviour that needs its own gateway (settings, restarts, a stopped upstream).

mitmproxy keeps one current master per process, so these run one gateway at a time, in a
module of their own (the shared gateway of test_gateway_cache.py is gone by then).
"""

from __future__ import annotations

from tests.cache.conftest import ScriptedUpstream, start_rig


def test_stale_if_error_when_upstream_is_stopped(tmp_path):
    up = ScriptedUpstream()
    rig = start_rig(up, tmp_path / "c")
    try:
        up.script["/p"] = (200, {"Cache-Control": "max-age=10, stale-if-error=600"}, b"kept")
        rig.get("/p")
        up.close()
        rig.clock.advance(30)
        status, h, body = rig.get("/p")
        assert (status, body) == (200, b"kept") and "stale-if-error" in h["cache-status"]
        assert int(h["age"]) >= 30
    finally:
        rig.gateway.stop()


def test_purge_method_off_by_default(rig):
    rig.upstream.script["/x"] = (200, {"Cache-Control": "max-age=60"}, b"p")
    rig.get("/x")
    status, _, _ = rig.get("/x", method="PURGE")
    assert status == 405
    rig.get("/x")
    assert rig.upstream.count("/x") == 1 and rig.upstream.count(method="PURGE") == 0


def test_do_not_cache_metadata_is_honoured(rig):
    from addons import metadata

    class Flagger:
        def request(self, flow):
            if flow.request.path.startswith("/flagged"):
                flow.metadata[metadata.DO_NOT_CACHE] = "moderation:test"

    rig.gateway.gateway.master.addons.add(Flagger())
    rig.upstream.script["/flagged"] = (200, {"Cache-Control": "max-age=60"}, b"bad")
    rig.get("/flagged")
    _, h, _ = rig.get("/flagged")
    assert rig.upstream.count("/flagged") == 2 and "do-not-cache" in h["cache-status"]


# --- configuration-dependent behaviour (own gateways) --------------------------------------------

def test_set_cookie_stored_only_when_route_allows_it(tmp_path):
    up = ScriptedUpstream()
    rig = start_rig(up, tmp_path / "c", route_extra="    cache: {store_set_cookie: true, default_ttl: 30s}")
    try:
        up.script["/c"] = (200, {"Cache-Control": "max-age=60", "Set-Cookie": "s=1"}, b"c")
        _, h1, _ = rig.get("/c")
        _, h2, _ = rig.get("/c")
        assert h1["set-cookie"] == "s=1" and "set-cookie" not in h2 and up.count("/c") == 1
        up.script["/ttl"] = (200, {}, b"t")  # no freshness info: the route's default_ttl applies
        rig.get("/ttl"), rig.get("/ttl")
        assert up.count("/ttl") == 1
    finally:
        rig.gateway.stop()
        up.close()


def test_large_body_streamed_intact_and_not_stored(tmp_path):
    up = ScriptedUpstream()
    rig = start_rig(up, tmp_path / "c", extra="  max_object_size: 64KB")
    try:
        big = bytes(range(256)) * 1200  # 307 kB
        up.script["/big"] = (200, {"Cache-Control": "max-age=60"}, big)
        status, h, body = rig.get("/big")
        assert status == 200 and body == big and "too-large" in h["cache-status"]
        assert rig.get("/big")[2] == big and up.count("/big") == 2
        assert rig.cache.store.stats()["objects"] == 0
    finally:
        rig.gateway.stop()
        up.close()


def test_restart_keeps_the_cache(tmp_path):
    up = ScriptedUpstream()
    up.script["/keep"] = (200, {"Cache-Control": "max-age=3600"}, b"persisted")
    rig = start_rig(up, tmp_path / "c")
    rig.get("/keep")
    rig.gateway.stop()
    rig2 = start_rig(up, tmp_path / "c")
    try:
        status, h, body = rig2.get("/keep")
        assert (status, body) == (200, b"persisted") and "hit" in h["cache-status"]
        assert up.count("/keep") == 1
    finally:
        rig2.gateway.stop()
        up.close()


def test_lru_eviction_at_the_size_cap(tmp_path):
    up = ScriptedUpstream()
    rig = start_rig(up, tmp_path / "c", extra="  max_size: 60KB")
    try:
        for i in range(8):
            up.script[f"/o{i}"] = (200, {"Cache-Control": "max-age=600"}, bytes([i]) * 10_000)
        for i in range(5):
            rig.get(f"/o{i}")
            rig.clock.advance(1)
        rig.get("/o0")  # touch: o0 becomes most recently used
        rig.clock.advance(1)
        for i in range(5, 8):
            rig.get(f"/o{i}")
            rig.clock.advance(1)
        stats = rig.cache.store.stats()
        assert stats["bytes"] <= 60_000 and stats["evictions"] >= 2
        before = up.count()
        assert rig.get("/o0")[2] == bytes([0]) * 10_000 and up.count() == before  # kept
        rig.get("/o1")
        assert up.count() == before + 1  # evicted
    finally:
        rig.gateway.stop()
        up.close()
