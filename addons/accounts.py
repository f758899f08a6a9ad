"""The organisation's account events: which users belong to which org/project, and changes.

Not an addon: a helper of addons/auth.py. `AccountMapping` turns a user's groups into
memberships `{(org, project): role}` (a regex with named groups `org`, `project`, `role`,
and/or an explicit table). `AccountLedger` remembers, per user, the memberships last seen
(a small LMDB environment under the data directory, so restarts don't re-announce
everyone) and turns a new observation into events:

- `user.joined`: an (org, project) the user was not in before;
- `user.role_changed`: same (org, project), different role (`role`, `previous_role`);
- `user.left`: an (org, project) the user is no longer in (`reason: groups`), or the user
  is gone from the directory altogether (`reason: directory`, from the periodic check).

Events are plain dicts for `telemetry.store.Store.submit`; they carry the user name, org,
project and role, never a secret. Blocking (LMDB): call from `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

ACCOUNTS_DIRNAME = "accounts"  # under the gateway's data directory
_MAP_SIZE = 64 * 1024 * 1024

Memberships = dict[tuple[str, str], str]


@dataclass(frozen=True)
class GroupMapping:
    """One explicit row: group name -> org, project, role."""

    org: str
    project: str | None = None
    role: str | None = None


@dataclass(frozen=True)
class AccountMapping:
    """How groups become (org, project) -> role.

    Args:
        group_pattern: a regex matched in full against each group name, with a named group
            `org` and optionally `project` and `role`, e.g.
            `^(?P<org>[a-z0-9]+)-(?P<role>admins|members)$`.
        groups: explicit rows, checked before the pattern.
        roles: renames of captured/explicit roles (`admins` -> `admin`).
        default_project / default_role: when the pattern or row has none.
    """

    group_pattern: str | None = None
    groups: Mapping[str, GroupMapping] = field(default_factory=dict)
    roles: Mapping[str, str] = field(default_factory=dict)
    default_project: str = "default"
    default_role: str = "member"
    _re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.group_pattern is not None:
            try:
                compiled = re.compile(self.group_pattern)
            except re.error as e:
                raise ValueError(f"group_pattern: invalid regular expression "
                                 f"{self.group_pattern!r}: {e}") from None
            if "org" not in compiled.groupindex:
                raise ValueError(f"group_pattern: {self.group_pattern!r} needs a named group "
                                 "(?P<org>...); project and role are optional")
            object.__setattr__(self, "_re", compiled)

    @property
    def enabled(self) -> bool:
        return self._re is not None or bool(self.groups)

    def memberships(self, groups: Iterable[str]) -> Memberships:
        """`{(org, project): role}`; several roles in one place are joined, sorted, by `,`."""
        found: dict[tuple[str, str], set[str]] = {}
        for group in groups:
            row = self.groups.get(group)
            if row is not None:
                org, project, role = row.org, row.project, row.role
            elif self._re is not None and (m := self._re.fullmatch(group)):
                parts = m.groupdict()
                org, project, role = parts.get("org"), parts.get("project"), parts.get("role")
            else:
                continue
            if not org:
                continue
            role = role or self.default_role
            role = self.roles.get(role, role)
            found.setdefault((org, project or self.default_project), set()).add(role)
        return {k: ",".join(sorted(v)) for k, v in found.items()}


def _event(type_: str, username: str, org: str, project: str, role: str, now: float,
           **extra: Any) -> dict[str, Any]:
    return {"type": type_, "time": now,
            "attrs": {"user": username, "org": org, "project": project, "role": role, **extra}}


def diff_memberships(username: str, before: Memberships | None, after: Memberships,
                     now: float) -> list[dict[str, Any]]:
    """The account events between two observations of one user (pure)."""
    before = before or {}
    events = []
    for (org, project), role in sorted(after.items()):
        old = before.get((org, project))
        if old is None:
            events.append(_event("user.joined", username, org, project, role, now))
        elif old != role:
            events.append(_event("user.role_changed", username, org, project, role, now,
                                 previous_role=old))
    for (org, project), role in sorted(before.items()):
        if (org, project) not in after:
            events.append(_event("user.left", username, org, project, role, now, reason="groups"))
    return events


def _key(username: str) -> bytes:
    # fixed width (LMDB keys <= 511 bytes; user names are not bounded that tightly)
    return hashlib.sha256(username.encode()).digest()[:20]


class AccountLedger:
    """Memberships last seen per user, in LMDB; thread-safe; see the module docstring."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(self.path), map_size=_MAP_SIZE, max_dbs=1, subdir=True)
        self._db = self._env.open_db(b"seen")
        self._recent: dict[str, Memberships] = {}  # skip LMDB when nothing changed
        self._lock = threading.Lock()

    def close(self) -> None:
        self._env.close()

    def get(self, username: str) -> Memberships | None:
        with self._env.begin(db=self._db) as txn:
            raw = txn.get(_key(username))
        return None if raw is None else _decode(raw)[1]

    def observe(self, username: str, memberships: Memberships,
                now: float | None = None) -> list[dict[str, Any]]:
        """Record what the user belongs to now; returns the events this observation caused."""
        now = time.time() if now is None else now
        with self._lock:
            if self._recent.get(username) == memberships:
                return []
            with self._env.begin(write=True, db=self._db) as txn:
                raw = txn.get(_key(username))
                before = None if raw is None else _decode(raw)[1]
                events = diff_memberships(username, before, memberships, now)
                if events or raw is None:
                    txn.put(_key(username), _encode(username, memberships))
            self._recent[username] = memberships
        return events

    def forget(self, username: str, now: float | None = None) -> list[dict[str, Any]]:
        """The user is gone from the directory: `user.left` for every place, and forget them."""
        now = time.time() if now is None else now
        with self._lock:
            self._recent.pop(username, None)
            with self._env.begin(write=True, db=self._db) as txn:
                raw = txn.get(_key(username))
                if raw is None:
                    return []
                txn.delete(_key(username))
        return [_event("user.left", username, org, project, role, now, reason="directory")
                for (org, project), role in sorted(_decode(raw)[1].items())]

    def usernames(self) -> list[str]:
        with self._env.begin(db=self._db) as txn:
            return [_decode(v)[0] for _, v in txn.cursor()]


def _encode(username: str, memberships: Memberships) -> bytes:
    return json.dumps({"u": username, "m": [[o, p, r] for (o, p), r in sorted(memberships.items())]},
                      separators=(",", ":")).encode()


def _decode(raw: bytes) -> tuple[str, Memberships]:
    d = json.loads(raw)
    return d["u"], {(o, p): r for o, p, r in d["m"]}
