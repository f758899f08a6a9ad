"""Groups -> org/project/role, and the LMDB ledger that turns observations into account events."""

from __future__ import annotations

import pytest

from addons.accounts import AccountLedger, AccountMapping, GroupMapping

PATTERN = r"^(?P<org>[a-z0-9]+)-(?P<role>admins|members)$"


@pytest.mark.parametrize(("groups", "expected"), [
    (["acme-admins"], {("acme", "default"): "admin"}),
    (["acme-members", "globex-admins", "staff"], {("acme", "default"): "member", ("globex", "default"): "admin"}),
    (["acme-admins", "acme-members"], {("acme", "default"): "admin,member"}),
    (["ACME-admins", "acme-owners", "developers"], {}),
    (["web-team"], {("acme", "web"): "developer"}),  # the explicit table
])
def test_mapping_from_groups(groups, expected):
    mapping = AccountMapping(group_pattern=PATTERN, roles={"admins": "admin", "members": "member"},
                             groups={"web-team": GroupMapping("acme", "web", "developer")})
    assert mapping.memberships(groups) == expected


def test_pattern_with_project_and_defaults():
    mapping = AccountMapping(group_pattern=r"^(?P<org>\w+)\.(?P<project>\w+)$", default_role="user")
    assert mapping.memberships(["acme.site"]) == {("acme", "site"): "user"}


@pytest.mark.parametrize(("pattern", "message"), [("(", "invalid regular expression"),
                                                  ("^(?P<team>.+)$", "(?P<org>")])
def test_bad_patterns_are_refused_with_a_clear_message(pattern, message):
    with pytest.raises(ValueError, match="group_pattern") as e:
        AccountMapping(group_pattern=pattern)
    assert message in str(e.value)


def test_ledger_emits_joined_role_changed_and_left_and_survives_reopen(tmp_path):
    ledger = AccountLedger(tmp_path / "accounts")
    events = ledger.observe("alice", {("acme", "web"): "member", ("globex", "default"): "admin"}, now=1.0)
    assert sorted((e["type"], e["attrs"]["org"]) for e in events) == [("user.joined", "acme"), ("user.joined", "globex")]
    assert ledger.observe("alice", {("acme", "web"): "member", ("globex", "default"): "admin"}) == []
    events = ledger.observe("alice", {("acme", "web"): "admin"}, now=2.0)
    assert [(e["type"], e["attrs"]["org"], e["attrs"]["role"], e["attrs"].get("previous_role"),
             e["attrs"].get("reason")) for e in events] == [
        ("user.role_changed", "acme", "admin", "member", None),
        ("user.left", "globex", "admin", None, "groups")]
    assert all(e["attrs"]["user"] == "alice" and e["time"] == 2.0 for e in events)
    ledger.close()

    reopened = AccountLedger(tmp_path / "accounts")
    assert reopened.observe("alice", {("acme", "web"): "admin"}) == []  # nothing new after a restart
    assert reopened.usernames() == ["alice"]
    left = reopened.forget("alice", now=3.0)
    assert [(e["type"], e["attrs"]["reason"]) for e in left] == [("user.left", "directory")]
    assert reopened.usernames() == [] and reopened.forget("alice") == []
    reopened.close()


def test_a_user_without_mapped_groups_is_remembered_without_events(tmp_path):
    ledger = AccountLedger(tmp_path / "accounts")
    assert ledger.observe("bob", {}) == []
    assert ledger.usernames() == ["bob"]
    assert [e["type"] for e in ledger.observe("bob", {("acme", "default"): "member"})] == ["user.joined"]
    ledger.close()
