"""The logged-out sessions store: revoked until expiry, pruned after, persistent, clear errors."""

from __future__ import annotations

import pytest

from auth.revocation import RevocationStoreError, RevokedSessions


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_revoked_until_the_token_expires_then_pruned(tmp_path):
    clock = Clock()
    store = RevokedSessions.open(tmp_path / "r", clock=clock)
    store.revoke("sid-a", expires_at=1_100.0)
    store.revoke("sid-b", expires_at=5_000.0)
    assert store.is_revoked("sid-a") and store.is_revoked("sid-b") and not store.is_revoked("sid-c")
    clock.now = 1_100.0
    assert not store.is_revoked("sid-a") and store.is_revoked("sid-b")   # expired anyway
    assert store.prune() == 1 and len(store) == 1
    store.close()
    again = RevokedSessions.open(tmp_path / "r", clock=clock)              # durable
    assert again.is_revoked("sid-b") and len(again) == 1
    again.close()


def test_logouts_sweep_expired_entries_on_their_own(tmp_path):
    clock = Clock()
    store = RevokedSessions.open(tmp_path / "r", clock=clock)
    for i in range(150):
        store.revoke(f"old-{i}", expires_at=1_001.0)
    clock.now = 2_000.0
    for i in range(100):
        store.revoke(f"new-{i}", expires_at=9_000.0)
    assert len(store) <= 150 and all(store.is_revoked(f"new-{i}") for i in range(100))
    store.close()


def test_an_unusable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RevocationStoreError, match=r"cannot open the logged-out sessions store at .*file"):
        RevokedSessions.open(blocker / "r")
