"""The users.yaml backend and `portico users ...`."""

from __future__ import annotations

import io
import os
import stat
import time
from pathlib import Path

import pytest

from auth.errors import AccountDisabled, InvalidCredentials, UsersFileError
from auth.users import ScryptHash, UsersFile, hash_password
from proxy.cli import main

FAST = 2**10  # cheap scrypt for tests; the format carries the cost


def test_hash_format_and_verification() -> None:
    h = hash_password("correct horse", n=FAST)
    assert h.startswith(f"$scrypt$n={FAST},r=8,p=1$")
    parsed = ScryptHash.parse(h)
    assert parsed.verify("correct horse") and not parsed.verify("correct horsE")
    assert hash_password("correct horse", n=FAST) != h  # random salt


@pytest.mark.parametrize("bad", [
    "", "plain", "$scrypt$n=1000,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",  # n not a power of 2
    "$scrypt$n=1024,r=99,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
    "$scrypt$n=1024,r=8,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",  # salt too short
    "$argon2id$v=19$m=65536,t=3,p=4$abc$def",
])
def test_bad_hashes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        ScryptHash.parse(bad)


def make_file(path: Path) -> UsersFile:
    users = UsersFile(path, must_exist=False)
    users.add("alice", "alice-pw", display_name="Alice", email="a@example.org",
              groups=("admins", "dev"), n=FAST)
    users.add("bob", "bob-pw", n=FAST)
    return users


def test_login_against_the_file(tmp_path: Path) -> None:
    users = make_file(tmp_path / "users.yaml")
    ident = users.authenticate("alice", "alice-pw")
    assert (ident.username, ident.groups, ident.email, ident.source) == (
        "alice", ("admins", "dev"), "a@example.org", "file")
    assert users.authenticate("ALICE", "alice-pw").username == "alice"
    with pytest.raises(InvalidCredentials) as wrong:
        users.authenticate("alice", "nope")
    with pytest.raises(InvalidCredentials) as unknown:
        users.authenticate("zed", "nope")
    assert type(wrong.value) is type(unknown.value)
    with pytest.raises(InvalidCredentials) as empty:
        users.authenticate("alice", "")
    assert empty.value.reason == "empty_password"


def test_unknown_user_costs_scrypt_work_like_a_known_one(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "u.yaml", must_exist=False)
    users.add("alice", "pw", n=2**14)

    def timed(name: str) -> float:
        best = 1e9
        for _ in range(3):
            t = time.perf_counter()
            with pytest.raises(InvalidCredentials):
                users.authenticate(name, "wrong")
            best = min(best, time.perf_counter() - t)
        return best

    known, unknown = timed("alice"), timed("nobody")
    # without the dummy hash an unknown user answers in microseconds, ~1000x faster
    assert unknown > known * 0.5


def test_disabled_user_is_refused_only_after_a_right_password(tmp_path: Path) -> None:
    users = make_file(tmp_path / "users.yaml")
    users.update("bob", disabled=True)
    with pytest.raises(AccountDisabled):
        users.authenticate("bob", "bob-pw")
    with pytest.raises(InvalidCredentials) as e:
        users.authenticate("bob", "wrong")
    assert e.value.reason == "bad_password"
    assert users.lookup("bob") is None and users.lookup("alice") is not None


def test_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    gateway_view = make_file(path)
    other = UsersFile(path)  # e.g. the CLI in another process
    other.update("alice", password="changed", n=FAST)
    other.remove("bob")
    assert gateway_view.authenticate("alice", "changed").username == "alice"
    with pytest.raises(InvalidCredentials):
        gateway_view.authenticate("bob", "bob-pw")


def test_broken_edit_keeps_previous_users(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "users.yaml"
    users = make_file(path)
    path.write_text("users: [this is not a mapping")
    assert users.authenticate("alice", "alice-pw").username == "alice"
    assert "keeping the previous users" in caplog.text


def test_writes_are_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    make_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".users.yaml.")] == []
    text = path.read_text()
    assert "alice-pw" not in text and "$scrypt$" in text


@pytest.mark.parametrize("text, where", [
    ("users: {alice: {password: x}}", "users.alice.password"),
    ("users: {alice: {pasword: x}}", "users.alice.pasword: unknown key"),
    ("users: {'bad name': {}}", "bad username"),
    ("users: []", "users: expected a mapping"),
    ("people: {}", "one key 'users'"),
    ("users: {a: {groups: admins, password: '%s'}}" % hash_password("x", n=FAST), "users.a.groups"),
    ("users: {Al: {password: '%s'}, al: {password: '%s'}}" % (hash_password("x", n=FAST),
                                                              hash_password("y", n=FAST)), "letter case"),
])
def test_malformed_files_name_the_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(text)
    with pytest.raises(UsersFileError, match=where) as e:
        UsersFile(path)
    assert str(path) in str(e.value)


def test_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="portico users add"):
        UsersFile(tmp_path / "none.yaml")


# --- CLI ------------------------------------------------------------------------------------

def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str,
        stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_users_add_passwd_list_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    f = str(tmp_path / "users.yaml")
    cost = ("--cost", str(FAST))
    code, out, _ = run(monkeypatch, capsys, "users", "add", "--file", f, "carol", "-g", "ops",
                       "-g", "dev", "--email", "c@example.org", "--password-stdin", *cost,
                       stdin="s3cret\n")
    assert code == 0 and "added 'carol'" in out
    assert UsersFile(f).authenticate("carol", "s3cret").groups == ("dev", "ops")

    code, _, err = run(monkeypatch, capsys, "users", "add", "--file", f, "carol",
                       "--password-stdin", *cost, stdin="x\n")
    assert code == 2 and "already exists" in err

    code, _, _ = run(monkeypatch, capsys, "users", "passwd", "--file", f, "carol",
                     "--password-stdin", *cost, stdin="n3w\n")
    assert code == 0 and UsersFile(f).authenticate("carol", "n3w").username == "carol"

    code, out, _ = run(monkeypatch, capsys, "users", "list", "--file", f)
    assert code == 0 and "carol" in out and "ops,dev" in out and "$scrypt$" not in out
    code, out, _ = run(monkeypatch, capsys, "users", "list", "--file", f, "--json")
    assert '"username": "carol"' in out

    code, _, _ = run(monkeypatch, capsys, "users", "remove", "--file", f, "carol")
    assert code == 0 and UsersFile(f).users() == []
    code, _, err = run(monkeypatch, capsys, "users", "remove", "--file", f, "carol")
    assert code == 2 and "no user 'carol'" in err


def test_cli_refuses_empty_password_and_missing_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    f = str(tmp_path / "users.yaml")
    code, _, err = run(monkeypatch, capsys, "users", "add", "--file", f, "dan", "--password-stdin",
                       stdin="\n")
    assert code == 2 and "empty password" in err
    code, _, err = run(monkeypatch, capsys, "users", "add", "--file", f, "dan", stdin="pw\n")
    assert code == 2 and "--password-stdin" in err
    assert not Path(f).exists()


def test_cli_list_reports_a_broken_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "users.yaml"
    f.write_text("users: {x: 1}")
    code, _, err = run(monkeypatch, capsys, "users", "list", "--file", str(f))
    assert code == 2 and "users.x" in err and "Traceback" not in err
