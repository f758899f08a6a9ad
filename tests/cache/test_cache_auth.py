"""The shared cache and users Portico signs in: a response made for a user is never shared.

Auth takes the Authorization header and the session cookie off the request before the cache
sees it and tells the upstream who the user is (Remote-User), so the cache must count such a
request as authenticated itself (RFC 9111 §3.5), and a revalidation it starts for a user must
not store the upstream's answer for everyone.
"""

from __future__ import annotations

import base64
import threading
import time

import pytest

from auth.users import UsersFile
from tests.cache.conftest import ScriptedUpstream, Seen, start_rig

ERIN = {"Authorization": "Basic " + base64.b64encode(b"erin:erin-pw").decode()}


@pytest.fixture
def rig(upstream: ScriptedUpstream, tmp_path):
    users = UsersFile(tmp_path / "users.yaml", must_exist=False)
    users.add("erin", "erin-pw", groups=("members",), n=2**10)
    auth = (f"auth: {{backend: file, users_file: {tmp_path / 'users.yaml'}}}\n"
            "access_control: {default_policy: bypass}\n")
    r = start_rig(upstream, tmp_path / "cache", extra=auth)
    yield r
    r.gateway.stop()


def personal(anonymous_control: str, user_control: str):
    """An upstream page that greets the user the gateway names (Remote-User), or anonymous."""
    def reply(seen: Seen):
        user = seen.headers.get("remote-user", "anonymous")
        control = anonymous_control if user == "anonymous" else user_control
        return 200, {"Cache-Control": control, "ETag": f'"{user}"'}, f"hello {user}".encode()
    return reply


def settle(rig, path: str, requests: int) -> None:
    """Wait until the upstream has seen `requests` for `path` and no refresh is running."""
    deadline = time.monotonic() + 10
    while (rig.upstream.count(path) < requests or rig.cache._refreshing) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rig.upstream.count(path) >= requests


def test_a_signed_in_user_is_not_served_a_private_entry_and_their_page_is_not_stored(rig):
    rig.upstream.script["/p"] = personal("max-age=60", "max-age=60")
    assert rig.get("/p")[2] == b"hello anonymous"
    status, headers, body = rig.get("/p", ERIN)
    assert body == b"hello erin" and "fwd=bypass" in headers["cache-status"]
    assert rig.get("/p")[2] == b"hello anonymous" and rig.upstream.count("/p") == 2


def test_a_background_refresh_for_a_user_never_replaces_the_shared_entry(rig):
    # the user's page says public too: only the refresh's own rule keeps it out of the cache
    rig.upstream.script["/p"] = personal("public, max-age=1, stale-while-revalidate=60", "public, max-age=300")
    assert rig.get("/p")[2] == b"hello anonymous"
    rig.clock.advance(5)  # stale, within stale-while-revalidate
    status, headers, body = rig.get("/p", ERIN)  # public: the stale shared page, refreshed behind
    assert body == b"hello anonymous" and "stale-while-revalidate" in headers["cache-status"]
    settle(rig, "/p", 2)
    assert rig.upstream.seen[-1].headers.get("remote-user") == "erin"  # the refresh went as erin
    assert rig.get("/p")[2] == b"hello anonymous"  # erin's page was not stored for everyone


def test_a_request_that_joins_a_users_revalidation_is_not_sent_the_users_page(rig):
    rig.upstream.script["/p"] = personal("public, max-age=1", "public, max-age=300")
    assert rig.get("/p")[2] == b"hello anonymous"
    rig.clock.advance(5)  # stale: the next request revalidates (If-None-Match), the others join it
    rig.upstream.delay = 1.0
    erin: list[bytes] = []
    thread = threading.Thread(target=lambda: erin.append(rig.get("/p", ERIN)[2]))
    thread.start()
    deadline = time.monotonic() + 10
    while rig.upstream.count("/p") < 2 and time.monotonic() < deadline:  # erin's revalidation is upstream
        time.sleep(0.01)
    status, headers, body = rig.get("/p")  # joins it, then goes upstream on its own
    thread.join(10)
    assert erin == [b"hello erin"] and body == b"hello anonymous"


def test_a_users_hit_on_a_public_entry_keeps_it_stored(rig):
    rig.upstream.script["/pub"] = (200, {"Cache-Control": "public, max-age=60"}, b"same for all")
    rig.get("/pub")
    assert rig.get("/pub", ERIN)[2] == b"same for all"
    status, headers, _ = rig.get("/pub")
    assert headers["cache-status"].startswith("portico; hit") and rig.upstream.count("/pub") == 1
