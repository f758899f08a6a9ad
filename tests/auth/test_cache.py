"""The in-memory caches: TTLs, bounds, keyed hashing."""

from __future__ import annotations

from auth.cache import CredentialCache, TtlCache
from auth.identity import Identity


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_credential_cache_expires_and_separates_users_and_passwords() -> None:
    clock = Clock()
    cache = CredentialCache(ttl=10, clock=clock)
    alice = Identity("alice")
    cache.put("alice", "pw", alice)
    assert cache.get("alice", "pw") == alice
    assert cache.get("alice", "pw2") is None
    assert cache.get("alicep", "w") is None  # length-prefixed: no concatenation collision
    clock.now = 10
    assert cache.get("alice", "pw") is None


def test_credential_cache_keys_are_keyed_hashes_not_passwords() -> None:
    a, b = CredentialCache(ttl=10), CredentialCache(ttl=10)
    a.put("u", "secret-password", Identity("u"))
    b.put("u", "secret-password", Identity("u"))
    assert list(a._entries) != list(b._entries)  # noqa: SLF001 - per-process random key
    assert b"secret-password" not in b"".join(a._entries)  # noqa: SLF001


def test_credential_cache_is_bounded_and_forgets_users() -> None:
    cache = CredentialCache(ttl=10, max_entries=2)
    for i in range(3):
        cache.put(f"u{i}", "p", Identity(f"u{i}"))
    assert len(cache) == 2 and cache.get("u0", "p") is None
    assert cache.forget_user("u1") == 1 and cache.get("u1", "p") is None


def test_zero_ttl_disables_the_credential_cache() -> None:
    cache = CredentialCache(ttl=0)
    cache.put("u", "p", Identity("u"))
    assert cache.get("u", "p") is None


def test_ttl_cache_lists_entries_due_for_refresh() -> None:
    clock = Clock()
    cache: TtlCache[int] = TtlCache(ttl=10, clock=clock)
    cache.put("a", 1)
    clock.now = 6
    cache.put("b", 2)
    assert cache.older_than(5) == ["a"]
    clock.now = 10
    assert cache.get("a") is None and cache.get("b") == 2
