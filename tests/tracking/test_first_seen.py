"""First/repeat e-mail opens survive a restart: LMDB-backed memory, bounded, and end to end
through two gateways started one after the other on the same data directory."""

from __future__ import annotations

import pytest

from addons.firstseen import FirstSeen, FirstSeenError
from addons.outreachlinks import make_tracked_urls
from tests.integration.harness import GatewayThread, request
from tests.tracking.gateway import HtmlUpstream, events, gateway_config, requires_store

SECRET = b"0123456789abcdef0123456789abcdef"
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")


def test_first_then_repeat_and_remembered_after_reopening(tmp_path):
    seen = FirstSeen(tmp_path / "seen", SECRET)
    assert seen.first("pixel", "spring", "r1") and not seen.first("pixel", "spring", "r1")
    assert seen.first("click", "spring", "r1")  # a click is not an open
    seen.close()
    again = FirstSeen(tmp_path / "seen", SECRET)
    assert not again.first("pixel", "spring", "r1") and again.first("pixel", "spring", "r2")
    again.close()


def test_keys_are_digests_not_campaigns_or_recipients(tmp_path):
    seen = FirstSeen(tmp_path / "seen", SECRET)
    seen.first("pixel", "spring-campaign", "recipient-pseudonym-7")
    seen.close()
    data = (tmp_path / "seen" / "data.mdb").read_bytes()
    assert b"spring-campaign" not in data and b"recipient-pseudonym-7" not in data


def test_bounded_oldest_keys_are_forgotten_first(tmp_path):
    seen = FirstSeen(tmp_path / "seen", SECRET, max_entries=3)
    for i, now in enumerate((10.0, 20.0, 30.0, 40.0)):
        assert seen.first("pixel", "c", f"r{i}", now=now)
    assert len(seen) == 3
    assert not seen.first("pixel", "c", "r3") and not seen.first("pixel", "c", "r1")
    assert seen.first("pixel", "c", "r0", now=50.0)  # the oldest was forgotten: first again
    assert len(seen) == 3
    seen.close()


def test_memory_mode_without_a_path_is_bounded_too():
    seen = FirstSeen(None, SECRET, max_entries=2)
    assert seen.first("a") and seen.first("b") and seen.first("c")
    assert len(seen) == 2 and seen.first("a") and not seen.first("c")


def test_unopenable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(FirstSeenError, match="first/repeat opens"):
        FirstSeen(blocker / "seen", SECRET)


@requires_store
def test_repeat_open_stays_a_repeat_after_the_gateway_restarts(tmp_path):
    upstream = HtmlUpstream()
    data = tmp_path / "events"
    config = gateway_config(upstream.url, str(data))
    gw = GatewayThread(config)
    try:
        secret = (data / "tracking.secret").read_text().strip().encode()
        pixel = make_tracked_urls(secret, gw.url, "restart", recipients=["ada@example.org"], sent_at=1_000_000,
                                  recipient_tracking=True)[0].pixel
        path = pixel[len(gw.url):]
        assert request(gw.url, path, headers={"User-Agent": CHROME})[0] == 200
    finally:
        gw.stop()
    gw = GatewayThread(config)  # same data directory, new process state
    try:
        assert request(gw.url, path, headers={"User-Agent": CHROME})[0] == 200
        opens = events(gw.gateway.store, "email_open", wait_for=2, where=lambda e: e.attrs["campaign"] == "restart")
        assert [e.attrs["first"] for e in sorted(opens, key=lambda e: e.time_us)] == [True, False]
    finally:
        gw.stop()
        upstream.close()
