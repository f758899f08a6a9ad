"""Regulation: failures -> bans per user and per address, persisted in LMDB; CLI."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from auth.errors import Banned
from auth.throttle import REGULATION_DIRNAME, Regulator, RegulationSettings, address_subject
from proxy.cli import main

T0 = 1_700_000_000.0
S = RegulationSettings(max_retries=3, address_max_retries=5, find_time=120, ban_time=300)


@pytest.fixture
def reg(tmp_path: Path) -> Regulator:
    r = Regulator.open(tmp_path / REGULATION_DIRNAME, S)
    yield r
    r.close()


def test_user_is_banned_after_max_retries_within_find_time(reg: Regulator) -> None:
    reg.check("alice", "10.0.0.1", now=T0)
    assert reg.record_failure("alice", "10.0.0.1", now=T0) == []
    assert reg.record_failure("alice", "10.0.0.2", now=T0 + 10) == []
    bans = reg.record_failure("Alice", "10.0.0.3", now=T0 + 20)  # case does not split counts
    assert [b.subject for b in bans] == ["user:alice"]
    with pytest.raises(Banned) as e:
        reg.check("ALICE", "192.0.2.9", now=T0 + 21)
    assert e.value.subject == "user:alice" and e.value.until == T0 + 320
    reg.check("bob", "10.0.0.1", now=T0 + 21)  # other users and the addresses are fine
    reg.check("alice", None, now=T0 + 320)  # ban over


def test_failures_outside_the_window_do_not_add_up(reg: Regulator) -> None:
    for i in range(6):
        assert reg.record_failure("alice", None, now=T0 + i * 61) == []
    reg.check("alice", None, now=T0 + 400)


def test_unknown_users_are_counted_like_real_ones(reg: Regulator) -> None:
    for i in range(3):
        reg.record_failure("no-such-user", None, now=T0 + i)
    with pytest.raises(Banned):
        reg.check("no-such-user", None, now=T0 + 5)


def test_address_ban_covers_every_username(reg: Regulator) -> None:
    for i in range(5):
        reg.record_failure(f"user{i}", "203.0.113.7", now=T0 + i)
    with pytest.raises(Banned) as e:
        reg.check("someone-else", "203.0.113.7", now=T0 + 6)
    assert e.value.subject == "address:203.0.113.7"
    reg.check("someone-else", "203.0.113.8", now=T0 + 6)


def test_ipv6_counts_per_64_and_mapped_ipv4_is_ipv4() -> None:
    assert address_subject("2001:db8:1:2:aaaa::1") == address_subject("2001:db8:1:2:ffff::9")
    assert address_subject("2001:db8:1:2::1") != address_subject("2001:db8:1:3::1")
    assert address_subject("::ffff:192.0.2.1") == "address:192.0.2.1"


def test_success_clears_user_failures_but_not_the_address(reg: Regulator) -> None:
    reg.record_failure("alice", "10.9.9.9", now=T0)
    reg.record_failure("alice", "10.9.9.9", now=T0 + 1)
    reg.record_success("alice")
    reg.record_failure("alice", "10.9.9.9", now=T0 + 2)
    reg.record_failure("alice", "10.9.9.9", now=T0 + 3)
    reg.check("alice", None, now=T0 + 4)  # 2 after the success: not banned
    bans = reg.record_failure("mallory", "10.9.9.9", now=T0 + 5)  # 5th from the address
    assert [b.subject for b in bans] == ["address:10.9.9.9"]


def test_bans_survive_reopening_and_unban_lifts_them(tmp_path: Path) -> None:
    path = tmp_path / REGULATION_DIRNAME
    with Regulator.open(path, S, clock=lambda: T0) as r:
        for i in range(3):
            r.record_failure("alice", "198.51.100.1", now=T0 + i)
    with Regulator.open(path, S, clock=lambda: T0 + 10) as r:
        assert [b.subject for b in r.bans()] == ["user:alice"]
        with pytest.raises(Banned):
            r.check("alice", None)
        assert r.unban("alice") is True
        assert r.unban("alice") is False
        r.check("alice", None)
        # the failure history went with the ban: one more failure is not a ban again
        assert r.record_failure("alice", None) == []


def test_purge_removes_ended_bans(reg: Regulator) -> None:
    for i in range(3):
        reg.record_failure("alice", None, now=T0 + i)
    reg.record_failure("bob", None, now=T0)
    assert reg.purge_expired(now=T0 + 1000) == 2
    assert reg.bans(now=T0) == []


def test_zero_disables_a_counter(tmp_path: Path) -> None:
    with Regulator.open(tmp_path / "r", RegulationSettings(max_retries=0, address_max_retries=0)) as r:
        for i in range(50):
            assert r.record_failure("alice", "10.0.0.1", now=T0 + i) == []


@pytest.mark.parametrize("kw", [{"max_retries": -1}, {"find_time": 0}, {"ban_time": -5},
                                {"ipv6_prefix": 129}])
def test_bad_regulation_settings(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        RegulationSettings(**kw)  # type: ignore[arg-type]


def test_cli_bans_and_unban(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    import time

    now = time.time()
    with Regulator.open(tmp_path / REGULATION_DIRNAME, S) as r:
        for i in range(5):
            r.record_failure("bob", "2001:db8::5", now=now + i * 0.01)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["auth", "bans", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "user:bob" in out and "address:2001:db8::/64" in out
    assert main(["auth", "unban", "--data", str(tmp_path), "2001:db8::77"]) == 0
    assert "unbanned address:2001:db8::/64" in capsys.readouterr().out
    assert main(["auth", "unban", "--data", str(tmp_path), "user:bob"]) == 0
    capsys.readouterr()
    assert main(["auth", "bans", "--data", str(tmp_path), "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    assert main(["auth", "unban", "--data", str(tmp_path), "bob"]) == 1
    assert "not banned" in capsys.readouterr().err
    assert main(["auth", "bans", "--data", str(tmp_path / "nowhere")]) == 2
    assert "no regulation store" in capsys.readouterr().err
