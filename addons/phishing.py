"""Phishing protection: destination hosts (forward proxy) and outbound links (reverse routes).

Hooks: `http_connect`, `request`, `response`.
Metadata read: LISTENER, ROUTE, ORIGINAL_HOST, REQUEST_ID, USER, CLIENT_IP, BLOCKED_BY,
GUARD_CONTINUED. Written: BLOCKED_BY, DO_NOT_CACHE.

Checks (addons/homograph.py, addons/lists.py): phishing blocklists (plain, hosts and
adblock formats, subdomains included), IDN homographs (punycode decoded, mixed scripts,
confusable skeleton equal to a protected domain) and lookalikes (typos, swapped characters,
brand with words glued on, brand as a subdomain of another domain) of the protected list.
Each kind has an action: block (403 page), warn (page with a continue link for this URL
and user; a CONNECT can't show a page, so warn refuses it), log. Findings are recorded as
`phishing.detected` events and the response is never cached.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import http

from addons import metadata
from addons.homograph import Finding, ProtectedDomains
from addons.lists import domain_match
from addons.textscore import decode_body
from addons.verdicts import (ContinueSigner, client_url, consume_continue, destination_host, fail_closed,
                             is_forward_connect, page, pass_undecodable, record, split_continue, with_continue)

log = logging.getLogger("portico.phishing")

_LINK_RE = re.compile(r"""(?:href|action|formaction)\s*=\s*["']?\s*(https?://[^"'\s>]+|//[^"'\s>]+)""", re.I)
_SEVERITY = {"block": 3, "warn": 2, "log": 1}
MAX_LINKS = 500


@dataclass(frozen=True)
class PhishingSettings:
    protected: ProtectedDomains
    blocklist: frozenset[str] = frozenset()
    actions: dict[str, str] = field(default_factory=lambda: {"homograph": "block", "lookalike": "warn",
                                                             "blocklist": "block"})
    routes: frozenset[str] = frozenset()  # route labels with `check_links: true`
    max_scan_bytes: int = 2_000_000


def check_host(settings: PhishingSettings, host: str) -> Finding | None:
    """Why `host` is a phishing destination, or None (blocklist first, then heuristics)."""
    host = host.lower().rstrip(".")
    if (listed := domain_match(settings.blocklist, host)) is not None:
        return Finding("blocklist", f"{host!r} is on a phishing blocklist ({listed})")
    return settings.protected.check(host)


def link_hosts(html_text: str, limit: int = MAX_LINKS) -> list[str]:
    """Distinct hosts of absolute links (href/action) in an HTML document, in order."""
    hosts: dict[str, None] = {}
    for m in _LINK_RE.finditer(html_text):
        url = m.group(1)
        try:
            host = urlsplit(url if not url.startswith("//") else "http:" + url).hostname
        except ValueError:
            continue
        if host:
            hosts.setdefault(host.lower(), None)
            if len(hosts) >= limit:
                break
    return list(hosts)


def user_of(flow: http.HTTPFlow) -> str:
    return str(flow.metadata.get(metadata.USER) or f"ip:{flow.metadata.get(metadata.CLIENT_IP, '')}")


class Phishing:
    """Blocks, warns about or logs phishing destinations and links."""

    def __init__(self, settings: PhishingSettings, store: Any = None, signer: ContinueSigner | None = None) -> None:
        self.settings = settings
        self.store = store
        self.signer = signer or ContinueSigner(None, 1800.0)

    def _decide(self, flow: http.HTTPFlow, findings: list[tuple[str, Finding]], stage: str, *,
                connect: bool = False) -> None:
        request_id = flow.metadata.get(metadata.REQUEST_ID)
        worst_action, worst = "log", findings[0]
        for host, f in findings:
            action = self.settings.actions.get(f.kind, "block")
            record(self.store, "phishing.detected", {
                "host": host, "kind": f.kind, "reason": f.reason, "target": f.target or None, "action": action,
                "stage": stage, "route": flow.metadata.get(metadata.ROUTE), "user": flow.metadata.get(metadata.USER),
                "request_id": request_id})
            log.info("request %s: phishing %s %s: %s", request_id, f.kind, action, f.reason)
            if _SEVERITY[action] > _SEVERITY[worst_action]:
                worst_action, worst = action, (host, f)
        flow.metadata[metadata.DO_NOT_CACHE] = f"phishing:{worst[1].kind}"
        host, finding = worst
        subject = "This site" if stage == "destination" else f"This page links to {host}, which"
        reason = f"{subject} looks like phishing: {finding.reason}."
        if worst_action == "block" or (worst_action == "warn" and connect):
            flow.metadata[metadata.BLOCKED_BY] = f"phishing:{finding.kind}"
            flow.response = page(403, "Blocked: possible phishing", reason, f"phishing/{finding.kind}", request_id)
        elif worst_action == "warn" and not consume_continue(flow, self.signer, user_of(flow)):
            flow.metadata[metadata.BLOCKED_BY] = f"phishing:{finding.kind}:warn"
            url = split_continue(client_url(flow))[0]
            link = with_continue(url, self.signer.token(url, user_of(flow)))
            flow.response = page(403, "Warning: possible phishing", reason, f"phishing/{finding.kind}",
                                 request_id, continue_url=link)

    def _destination(self, flow: http.HTTPFlow, *, connect: bool) -> None:
        host = destination_host(flow)
        try:
            finding = check_host(self.settings, host)
            if finding is not None:
                self._decide(flow, [(host, finding)], "destination", connect=connect)
        except Exception as e:  # fail closed
            self._fail(flow, e)

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or not is_forward_connect(flow):
            return
        self._destination(flow, connect=True)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if flow.metadata.get(metadata.LISTENER) == "forward":
            self._destination(flow, connect=False)
        elif flow.metadata.get(metadata.ROUTE) in self.settings.routes:
            consume_continue(flow, self.signer, user_of(flow))  # strip a continue token before upstream

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.error or not flow.live or flow.response is None or flow.response.stream:
            return
        if flow.metadata.get(metadata.ROUTE) not in self.settings.routes or flow.metadata.get(metadata.BLOCKED_BY):
            return
        if flow.metadata.get(metadata.CACHE_STATUS) == "hit":
            return  # checked before it was stored
        ctype = flow.response.headers.get("content-type", "").lower()
        if "html" not in ctype or flow.response.raw_content is None:
            return
        try:
            raw = decode_body(flow.response.raw_content, flow.response.headers.get("content-encoding", ""),
                              self.settings.max_scan_bytes)
            own = (flow.metadata.get(metadata.ORIGINAL_HOST) or "").lower()
            findings = [(h, f) for h in link_hosts(raw.decode("utf-8", errors="replace"))
                        if h != own and (f := check_host(self.settings, h)) is not None]
            if findings:
                self._decide(flow, findings, "link")
        except ValueError as e:  # corrupt encoding
            pass_undecodable(flow, e, key="phishing", not_done="links not checked", logger=log)
        except Exception as e:  # fail closed
            self._fail(flow, e)

    def _fail(self, flow: http.HTTPFlow, e: Exception) -> None:
        fail_closed(flow, e, key="phishing", check="phishing check", logger=log)
