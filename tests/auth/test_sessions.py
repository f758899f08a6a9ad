"""Session tokens (signing, tampering, expiry, rotation) and safe redirects."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from auth.errors import AuthConfigError, InvalidSession, SessionError, SessionExpired
from auth.identity import Identity
from auth.sessions import SessionManager, SessionSettings, generate_key, safe_redirect_target

K1, K2 = "k1-" + "a" * 40, "k2-" + "b" * 40
ALICE = Identity("alice", ("admins", "dev"), "Alice", "a@example.org", "uid=alice,dc=x")
T0 = 1_700_000_000.0


def manager(*keys: str, **kw: float) -> SessionManager:
    settings = SessionSettings(key_env="UNUSED", **kw)
    return SessionManager(settings, keys=list(keys) or [K1])


def test_roundtrip_keeps_identity_but_not_dn() -> None:
    m = manager()
    s = m.verify(m.issue(ALICE, now=T0), now=T0 + 1)
    assert (s.identity.username, s.identity.groups, s.identity.display_name, s.identity.email) == (
        "alice", ("admins", "dev"), "Alice", "a@example.org")
    assert s.issued_at == s.last_seen == T0 and s.expires_at == T0 + 12 * 3600
    assert len(s.session_id) >= 16


def _swap_payload(token: str, **changes: object) -> str:
    v, kid, body, mac = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    return ".".join((v, kid, new, mac))


@pytest.mark.parametrize("tamper", [
    lambda t: _swap_payload(t, g=["admins", "root"]),
    lambda t: _swap_payload(t, u="bob"),
    lambda t: _swap_payload(t, exp=T0 + 10**9),
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
    lambda t: t.replace("v1.", "v2.", 1),
    lambda t: t + ".",
    lambda t: "",
    lambda t: "x" * 5000,
    lambda t: t.split(".")[0] + ".AAAAAAAA." + ".".join(t.split(".")[2:]),
])
def test_tampered_tokens_are_rejected(tamper) -> None:  # noqa: ANN001
    m = manager()
    with pytest.raises(InvalidSession):
        m.verify(tamper(m.issue(ALICE, now=T0)), now=T0 + 1)


def test_token_signed_with_another_key_is_rejected() -> None:
    with pytest.raises(InvalidSession, match="unknown key"):
        manager(K1).verify(manager(K2).issue(ALICE, now=T0), now=T0)


def test_inactivity_counts_from_the_instant_not_a_rounded_down_second() -> None:
    """Tokens keep whole seconds; rounding the last-seen time down made a session issued at
    x.95 s with a 1 s timeout expire 0.05 s later (a flaky gateway test found it)."""
    m = manager(inactivity_timeout=1, refresh_after=0)
    token = m.issue(ALICE, now=T0 + 0.95)
    m.verify(token, now=T0 + 1.5)
    with pytest.raises(SessionExpired):
        m.verify(token, now=T0 + 2.0)
    touched = m.touch(m.verify(token, now=T0 + 1.9), now=T0 + 1.9)
    assert touched is not None
    m.verify(touched, now=T0 + 2.8)


def test_absolute_and_inactivity_expiry() -> None:
    m = manager(absolute_lifetime=7200, inactivity_timeout=600, refresh_after=60)
    token = m.issue(ALICE, now=T0)
    m.verify(token, now=T0 + 599)
    with pytest.raises(SessionExpired) as e:
        m.verify(token, now=T0 + 600)
    assert e.value.reason == "inactive"
    # keep it alive by touching it: inactivity moves, the absolute limit does not
    now = T0
    while now < T0 + 7000:
        now += 500
        session = m.verify(token, now=now)
        token = m.touch(session, now=now) or token
    with pytest.raises(SessionExpired) as e:
        m.verify(token, now=T0 + 7200)
    assert e.value.reason == "absolute"


def test_touch_is_rate_limited_and_keeps_session_id() -> None:
    m = manager(refresh_after=60)
    s = m.verify(m.issue(ALICE, now=T0), now=T0)
    assert m.touch(s, now=T0 + 59) is None
    fresh = m.touch(s, now=T0 + 61)
    assert fresh is not None
    s2 = m.verify(fresh, now=T0 + 61)
    assert s2.session_id == s.session_id and s2.last_seen == T0 + 61 and s2.expires_at == s.expires_at


def test_token_from_the_future_is_rejected() -> None:
    m = manager()
    with pytest.raises(InvalidSession, match="future"):
        m.verify(m.issue(ALICE, now=T0 + 3600), now=T0)


def test_key_rotation_new_key_signs_old_key_still_verifies() -> None:
    old = manager(K1).issue(ALICE, now=T0)
    rotated = manager(K2, K1)
    assert rotated.verify(old, now=T0).identity.username == "alice"
    new = rotated.issue(ALICE, now=T0)
    assert manager(K2).verify(new, now=T0).identity.username == "alice"
    with pytest.raises(InvalidSession):
        manager(K2).verify(old, now=T0)  # old key dropped: old sessions end


def test_keys_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# newest first\n{K2}\n\n{K1}\n")
    m = SessionManager(SessionSettings(key_file=str(f)))
    assert m.verify(manager(K1).issue(ALICE, now=T0), now=T0)
    monkeypatch.setenv("SESSION_KEYS", f"{K2} {K1}")
    m2 = SessionManager(SessionSettings(key_env="SESSION_KEYS"))
    assert m2.verify(m.issue(ALICE, now=T0), now=T0)


@pytest.mark.parametrize("content, message", [("", "no key"), ("short\n", "at least 32")])
def test_bad_key_files_are_config_errors(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "keys"
    f.write_text(content)
    with pytest.raises(AuthConfigError, match=message):
        SessionManager(SessionSettings(key_file=str(f)))
    with pytest.raises(AuthConfigError, match="cannot read"):
        SessionManager(SessionSettings(key_file=str(tmp_path / "missing")))


@pytest.mark.parametrize("kw", [{}, {"key_env": "X", "inactivity_timeout": 0},
                                {"key_env": "X", "refresh_after": 4000}])
def test_bad_session_settings(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SessionSettings(**kw)  # type: ignore[arg-type]


def test_generated_keys_are_long_and_distinct() -> None:
    a, b = generate_key(), generate_key()
    assert a != b and len(a) >= 64


def test_too_many_groups_for_a_cookie_is_an_error() -> None:
    many = Identity("u", tuple(f"group-with-a-long-name-{i}" for i in range(300)))
    with pytest.raises(SessionError, match="too many groups"):
        manager().issue(many, now=T0)


ORIGIN = "https://app.example.org"


@pytest.mark.parametrize("target, expected", [
    ("/dashboard?tab=1#top", "/dashboard?tab=1#top"),
    ("/", "/"),
    ("https://app.example.org/x?y=1", "/x?y=1"),
    ("https://APP.example.org:443/x", "/x"),
    ("https://app.example.org", "/"),
    ("//evil.example", "/"),
    ("///evil.example", "/"),
    ("/\\evil.example", "/"),
    ("\\\\evil.example", "/"),
    ("/\t/evil.example", "/"),
    ("/x\r\nSet-Cookie: a=b", "/"),
    ("/x\x00", "/"),
    ("https://evil.example/", "/"),
    ("https://app.example.org.evil.example/", "/"),
    ("https://app.example.org@evil.example/", "/"),
    ("https://user:pw@app.example.org/", "/"),
    ("http://app.example.org/x", "/"),  # scheme downgrade
    ("https://app.example.org:8443/x", "/"),
    ("https://app.example.org:99999/x", "/"),
    ("javascript:alert(1)", "/"),
    ("JavaScript:alert(1)", "/"),
    ("data:text/html,<script>", "/"),
    ("dashboard", "/"),
    ("", "/"),
    (None, "/"),
    ("/" + "a" * 3000, "/"),
    ("https://app.example.org//evil.example", "/"),
])
def test_safe_redirect_target(target: str | None, expected: str) -> None:
    assert safe_redirect_target(target, ORIGIN) == expected


def test_safe_redirect_default_is_configurable() -> None:
    assert safe_redirect_target("//evil", ORIGIN, default="/home") == "/home"
