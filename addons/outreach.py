"""Outreach endpoints: the e-mail open pixel and the campaign click redirect.

Hooks: `request` (before Endpoints), `done` (closes the first/repeat memory). Metadata read: LISTENER, REQUEST_ID, ORIGINAL_HOST,
CLIENT_IP. Written: BLOCKED_BY, VISITOR, SESSION.

- `<prefix>px.gif?...` answers a 1x1 GIF with `Cache-Control: no-store` and records
  `email_open` (campaign, recipient pseudonym when recipient tracking is on, first or
  repeat, machine flag and reason).
- `<prefix>c?...` records `link_click`, sets the signed first-party attribution cookie
  (campaign, `attribution_window`, default 30 days) and answers 302 to the target.
- A tampered or unsigned URL gets 400 (never an open redirect). A replayed URL is a
  repeat open/click (`first: false`), which is what a second look at an e-mail is. What
  was seen is kept in LMDB (`seen_path`, addons/firstseen.py), bounded by
  `max_remembered`, so a repeat stays a repeat after a restart.

Machine traffic (image proxies, link scanners) inflates opens and clicks; it is recorded
but flagged: known proxy/scanner User-Agents, crawler/library/headless agents, HEAD
requests, hits within `machine_window` seconds of the send time, and bursts (a recipient
"clicking" 3 or more links within 2 seconds). No attribution cookie for machine clicks.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mitmproxy import http

from addons import metadata
from addons.attribution import from_cookie_header, set_cookie_header
from addons.firstseen import FirstSeen
from addons.outreachlinks import CLICK_PURPOSE, PIXEL_PURPOSE, OutreachHit, parse_hit
from addons.pages import error_response, reverse_request_target
from addons.privacy import truncate_address
from addons.recorder import Recorder
from addons.useragent import parse_user_agent
from addons.visitor import Visitors

log = logging.getLogger("portico.outreach")

PIXEL_GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
             b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
"""A transparent 1x1 GIF (43 bytes)."""

MACHINE_AGENTS = re.compile(
    r"GoogleImageProxy|ggpht\.com|YahooMailProxy|Yahoo! Slurp|Outlook-iOS-Android|OWA-Image-Proxy|"
    r"Barracuda|Mimecast|Proofpoint|Symantec|Forcepoint|Trend ?Micro|Sophos|FireEye|Cisco|IronPort|"
    r"SafeLinks|Microsoft Office Existence Discovery|ms-office|Validator|LinkChecker|Scanner|Preview",
    re.IGNORECASE)


@dataclass(frozen=True)
class OutreachSettings:
    secret: bytes
    reserved_prefix: str = "/_portico/"
    recipients: bool = False           # record recipient pseudonyms (recipient-level tracking)
    attribution_window: float = 30 * 86400.0
    machine_window: float = 10.0       # opens/clicks this soon after the send are machines
    secure_cookie: bool = False        # add `Secure` to the attribution cookie
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    max_remembered: int = 100_000      # (campaign, recipient/visitor) pairs remembered for first/repeat
    seen_path: Path | None = None      # LMDB directory for first/repeat (survives restarts); None: memory


def machine_reason(user_agent: str, method: str, sent_at: int | None, now: float, window: float) -> str:
    """Why a pixel/click hit looks like a machine ('' when it looks like a person)."""
    if MACHINE_AGENTS.search(user_agent):
        return "proxy-or-scanner-agent"
    ua = parse_user_agent(user_agent)
    if ua.bot:
        return f"{ua.bot_reason}-agent"
    if method == "HEAD":
        return "head-request"
    if sent_at is not None and 0 <= now - sent_at < window:
        return "too-soon-after-send"
    return ""


class Outreach:
    """Serves the pixel and click endpoints."""

    def __init__(self, settings: OutreachSettings, recorder: Recorder, visitors: Visitors) -> None:
        self.settings = settings
        self.recorder = recorder
        self.visitors = visitors
        self.pixel_path = settings.reserved_prefix + "px.gif"
        self.click_path = settings.reserved_prefix + "c"
        self.request_paths = frozenset({self.pixel_path, self.click_path})  # see addons/bundle.py
        self.seen = FirstSeen(settings.seen_path, settings.secret, settings.max_remembered)
        self.recent_clicks: dict[tuple[str, str], deque[tuple[float, str]]] = {}

    def request(self, flow: http.HTTPFlow) -> None:
        target = reverse_request_target(flow)
        if target is None:
            return
        path, query = target
        if path == self.pixel_path:
            self._hit(flow, PIXEL_PURPOSE, query)
        elif path == self.click_path:
            self._hit(flow, CLICK_PURPOSE, query)

    def _hit(self, flow: http.HTTPFlow, purpose: str, query: str) -> None:
        request_id = flow.metadata.get(metadata.REQUEST_ID)
        hit = parse_hit(self.settings.secret, purpose, query)
        if isinstance(hit, str):
            flow.metadata[metadata.BLOCKED_BY] = f"outreach:bad-{purpose}"
            log.info("request %s: refused %s URL: %s", request_id, purpose, hit)
            flow.response = error_response(400, "Bad link", f"This link is not valid: {hit}.", request_id)
            return
        now = time.time()
        req = flow.request
        ua = req.headers.get("user-agent", "")
        site = flow.metadata.get(metadata.ORIGINAL_HOST, "")
        client_ip = flow.metadata.get(metadata.CLIENT_IP, "")
        visit = self.visitors.visit(site, client_ip, ua)
        flow.metadata[metadata.VISITOR], flow.metadata[metadata.SESSION] = visit.visitor, visit.session
        reason = machine_reason(ua, req.method, hit.sent_at, now, self.settings.machine_window)
        if purpose == CLICK_PURPOSE and not reason and self._burst(hit, now):
            reason = "click-burst"
        attrs: dict[str, object] = {"campaign": hit.campaign, "machine": bool(reason),
                                    "first": self._first(purpose, hit, visit.visitor), "session": visit.session,
                                    "visitor": visit.visitor}
        if reason:
            attrs["machine_reason"] = reason
        if self.settings.recipients and hit.recipient:
            attrs["recipient"] = hit.recipient
        net = truncate_address(client_ip, self.settings.ipv4_prefix, self.settings.ipv6_prefix)
        if net:
            attrs["net"] = net
        headers = {"Cache-Control": "no-store", "X-Request-Id": request_id or "", "Referrer-Policy": "no-referrer"}
        if purpose == PIXEL_PURPOSE:
            self.recorder.submit([{"type": "email_open", "time": now, "attrs": attrs}])
            flow.metadata[metadata.BLOCKED_BY] = "outreach:pixel"
            flow.response = http.Response.make(200, PIXEL_GIF, headers | {"Content-Type": "image/gif"})
            return
        assert hit.target is not None
        target = urlsplit(hit.target)
        attrs["target_host"] = (target.hostname or "").lower()
        attrs["target_path"] = (target.path or "/")[:1024]
        self.recorder.submit([{"type": "link_click", "time": now, "attrs": attrs}])
        headers["Location"] = hit.target
        response = http.Response.make(302, b"", headers)
        if not reason:
            previous = from_cookie_header(self.settings.secret, req.headers.get("cookie", ""),
                                          self.settings.attribution_window)
            response.headers.add("Set-Cookie", set_cookie_header(
                self.settings.secret, hit.campaign, previous, int(self.settings.attribution_window),
                self.settings.secure_cookie, now))
            state = visit.state
            state.campaign_first = state.campaign_first or (previous.first if previous else hit.campaign)
            state.campaign_last = hit.campaign
        flow.metadata[metadata.BLOCKED_BY] = "outreach:click"
        flow.response = response

    def _first(self, purpose: str, hit: OutreachHit, visitor: str) -> bool:
        """True the first time this campaign is opened/clicked by this recipient (or visitor)."""
        return self.seen.first(purpose, hit.campaign, hit.recipient or f"v:{visitor}")

    def done(self) -> None:
        self.seen.close()

    def _burst(self, hit: OutreachHit, now: float) -> bool:
        """A scanner follows every link of a message at once: 3+ distinct targets within 2 s."""
        if not hit.recipient:
            return False
        key = (hit.campaign, hit.recipient)
        recent = self.recent_clicks.setdefault(key, deque(maxlen=8))
        recent.append((now, hit.target or ""))
        if len(self.recent_clicks) > self.settings.max_remembered:
            self.recent_clicks.pop(next(iter(self.recent_clicks)))
        return len({t for ts, t in recent if now - ts <= 2.0}) >= 3
