"""A real gateway (auth file backend, telemetry on, gRPC on) with a week of seeded events.

Package-scoped: starting a gateway and seeding costs ~1 s, and no test writes events. Not
session-scoped: only one gateway may run in a process at a time (mitmproxy's `ctx` is
global), so it must be gone before other packages start theirs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from auth.users import UsersFile
from tests.dashboard.data import seed_events
from tests.integration.harness import EchoUpstream, GatewayThread, request

PREFIX = "/_portico/"
DASH = PREFIX + "dashboard/"
USERS = {"ada": ("ada-pw", ("admins",)), "bob": ("bob-pw", ("staff",))}


def basic(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{USERS[user][0]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def gateway_config(tmp: Path, upstream: str, extra: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
grpc: {{listen: 127.0.0.1:0}}
cache: {{enabled: false}}
telemetry: {{path: {json.dumps(str(tmp / 'data'))}, sync: false}}
tracking: {{enabled: false}}
routes: [{{match: {{host: "*", path_prefix: /}}, upstream: {upstream}}}]
auth: {{backend: file, users_file: {json.dumps(str(tmp / 'users.yaml'))}}}
{extra}
"""


class Dash:
    """The running gateway plus helpers to call the dashboard as a given user."""

    def __init__(self, gateway: GatewayThread) -> None:
        self.gateway = gateway

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.gateway.gateway.grpc_port}"

    @property
    def store(self) -> Any:
        return self.gateway.gateway.store

    def get(self, path: str, params: Any = None, user: str | None = "ada",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        query = ("?" + urlencode(params, doseq=True)) if params else ""
        h = dict(headers or {})
        if user:
            h.update(basic(user))
        return request(self.url, DASH + path + query, headers=h)

    def api(self, name: str, params: Any, user: str | None = "ada") -> tuple[int, Any]:
        status, _, body = self.get("api/" + name, params, user)
        return status, (json.loads(body) if not name.endswith(".csv") or status != 200 else body)


@pytest.fixture(scope="package")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    tmp = tmp_path_factory.mktemp("dashboard")
    users = UsersFile(tmp / "users.yaml", must_exist=False)
    for name, (pw, groups) in USERS.items():
        users.add(name, pw, groups=groups, n=2**10)
    upstream = EchoUpstream()
    gateway = GatewayThread(gateway_config(tmp, upstream.url))
    try:
        result = gateway.gateway.store.record(seed_events())
        assert not result.errors, result.errors[:3]
        gateway.gateway.store.flush()
        yield Dash(gateway)
    finally:
        gateway.stop()
        upstream.close()
