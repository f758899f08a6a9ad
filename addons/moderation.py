"""Content moderation by category: domains, URL patterns and weighted phrases in text responses.

Hooks: `http_connect`, `request`, `response`.
Metadata read: LISTENER, ROUTE, ORIGINAL_HOST, ORIGINAL_PATH, REQUEST_ID, USER, CLIENT_IP,
CACHE_STATUS. Written: BLOCKED_BY, DO_NOT_CACHE.

Which traffic: every forward-proxy request; reverse-proxy requests of routes with
`moderate: true`. On the request, the destination host is matched against each
category's domain lists (subdomains included) and the URL against its patterns; on the
response (reverse routes, and plain-HTTP forward responses), HTML/JSON/text bodies are
decoded (gzip/deflate/br, at most `max_scan_bytes`), reduced to visible text and scored
against each category's phrases. A category's `action` then applies: `block` (403 page),
`warn` (page with a continue link signed for this URL and user), `log` (event only).
Flagged responses are marked DO_NOT_CACHE, so this addon must run before the cache's
`response` hook (see proxy/pipeline.py). Events: moderation.blocked / .warned / .flagged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from addons import metadata
from addons.lists import ReloadingCategory
from addons.textscore import PhraseScorer, Score, decode_body, normalise, visible_text
from addons.verdicts import (ContinueSigner, client_url, consume_continue, destination_host, fail_closed,
                             is_forward_connect, page, pass_undecodable, record, split_continue, with_continue)

log = logging.getLogger("portico.moderation")

TEXT_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "application/json", "text/xml",
              "application/xml")
_EVENT = {"block": "moderation.blocked", "warn": "moderation.warned", "log": "moderation.flagged"}
_SEVERITY = {"block": 3, "warn": 2, "log": 1}


@dataclass
class Category:
    name: str
    action: str  # block | warn | log
    threshold: float
    lists: ReloadingCategory
    _scorer: PhraseScorer | None = None
    _scorer_of: Any = None

    def scorer(self) -> PhraseScorer:
        """The compiled phrase scorer for the current lists (rebuilt after a reload)."""
        current = self.lists.current()
        if self._scorer is None or self._scorer_of is not current:
            self._scorer, self._scorer_of = PhraseScorer(current.phrases), current
        return self._scorer


@dataclass(frozen=True)
class Verdict:
    category: str
    action: str
    reason: str
    score: float | None = None


@dataclass(frozen=True)
class ModerationSettings:
    categories: Sequence[Category]
    routes: frozenset[str]  # route labels with `moderate: true`
    max_scan_bytes: int
    signer: ContinueSigner


def flow_url(flow: http.HTTPFlow) -> str:
    """The URL the client asked for (before routing rewrote host/path), without a continue token."""
    return split_continue(client_url(flow))[0]


def flow_user(flow: http.HTTPFlow) -> str:
    """Who a continue link is bound to: the authenticated user, else the client address."""
    return str(flow.metadata.get(metadata.USER) or f"ip:{flow.metadata.get(metadata.CLIENT_IP, '')}")


def match_request(categories: Sequence[Category], host: str, url: str) -> Verdict | None:
    """The most severe category whose domains or URL patterns match."""
    best: Verdict | None = None
    for c in categories:
        lists = c.lists.current()
        reason = None
        if (domain := lists.match_domain(host)) is not None:
            reason = f"the site {domain} is listed in category {c.name}"
        elif (pattern := lists.match_url(url)) is not None:
            reason = f"the address matches a {c.name} pattern ({pattern})"
        if reason and (best is None or _SEVERITY[c.action] > _SEVERITY[best.action]):
            best = Verdict(c.name, c.action, reason)
    return best


def score_text(categories: Sequence[Category], text: str) -> Verdict | None:
    """The most severe category whose phrase score reaches its threshold on `text`."""
    normalised = normalise(text)
    best: Verdict | None = None
    for c in categories:
        s: Score = c.scorer().score(normalised, normalised=True)
        if s.hits and s.total >= c.threshold and (best is None or _SEVERITY[c.action] > _SEVERITY[best.action]):
            best = Verdict(c.name, c.action, f"the content scored {s.total:g} for {c.name} "
                           f"(threshold {c.threshold:g}: {s.reasons()})", s.total)
    return best


def response_text(response: http.Response, limit: int) -> str | None:
    """The visible text of a text response, decoded within `limit` bytes; None when not text."""
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in TEXT_TYPES or response.raw_content is None:
        return None
    raw = decode_body(response.raw_content, response.headers.get("content-encoding", ""), limit)
    charset = "utf-8"
    for part in response.headers.get("content-type", "").split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip('"')
    try:
        text = raw.decode(charset, errors="replace")
    except LookupError:
        text = raw.decode("utf-8", errors="replace")
    return visible_text(text) if "html" in ctype else text


class Moderation:
    """Applies category verdicts to requests (domains, URLs) and text responses (phrases)."""

    def __init__(self, settings: ModerationSettings, store: Any = None) -> None:
        self.settings = settings
        self.store = store

    def _applies(self, flow: http.HTTPFlow) -> bool:
        if flow.metadata.get(metadata.LISTENER) == "forward":
            return True
        return flow.metadata.get(metadata.ROUTE) in self.settings.routes

    def _apply(self, flow: http.HTTPFlow, verdict: Verdict, stage: str) -> None:
        request_id = flow.metadata.get(metadata.REQUEST_ID)
        url = flow_url(flow)
        flow.metadata[metadata.DO_NOT_CACHE] = f"moderation:{verdict.category}"
        record(self.store, _EVENT[verdict.action], {
            "category": verdict.category, "action": verdict.action, "reason": verdict.reason, "stage": stage,
            "score": verdict.score, "url": url.split("?", 1)[0], "route": flow.metadata.get(metadata.ROUTE),
            "user": flow.metadata.get(metadata.USER), "request_id": request_id,
            "continued": bool(flow.metadata.get(metadata.GUARD_CONTINUED)) if verdict.action == "warn" else None})
        log.info("request %s: %s (%s) %s", request_id, verdict.category, verdict.action, verdict.reason)
        if verdict.action == "block":
            flow.metadata[metadata.BLOCKED_BY] = f"moderation:{verdict.category}"
            flow.response = page(403, "Blocked by content policy", f"This page was blocked: {verdict.reason}.",
                                 verdict.category, request_id)
        elif verdict.action == "warn" and not flow.metadata.get(metadata.GUARD_CONTINUED):
            flow.metadata[metadata.BLOCKED_BY] = f"moderation:{verdict.category}:warn"
            token = self.settings.signer.token(url, flow_user(flow))
            flow.response = page(403, "Warning: this page may be harmful", f"Portico warns you: {verdict.reason}.",
                                 verdict.category, request_id, continue_url=with_continue(url, token))

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """HTTPS tunnels of the forward proxy: only the host is visible, so domain lists apply."""
        if flow.response or not is_forward_connect(flow):
            return
        try:
            host = destination_host(flow)
            verdict = match_request(self.settings.categories, host, f"https://{host}/")
            if verdict is not None:
                if verdict.action == "warn":  # a tunnel can't show a page: warn refuses it
                    verdict = Verdict(verdict.category, "block", verdict.reason + " (warn; tunnels can't be continued)")
                self._apply(flow, verdict, "connect")
        except Exception as e:  # fail closed
            self._fail(flow, e)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or not self._applies(flow):
            return
        try:
            consume_continue(flow, self.settings.signer, flow_user(flow))
            host = flow.metadata.get(metadata.ORIGINAL_HOST) or flow.request.host
            verdict = match_request(self.settings.categories, host, flow_url(flow))
            if verdict is not None:
                self._apply(flow, verdict, "request")
        except Exception as e:  # fail closed
            self._fail(flow, e)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.error or not flow.live or flow.response is None or not self._applies(flow):
            return
        if flow.metadata.get(metadata.BLOCKED_BY) or flow.metadata.get(metadata.CACHE_STATUS) == "hit":
            return  # our own pages, or content scored before it was stored
        if flow.response.stream:
            return  # larger than stream_large_bodies: passed through unbuffered, cannot be scored
        try:
            text = response_text(flow.response, self.settings.max_scan_bytes)
            if text is None:
                return
            verdict = score_text(self.settings.categories, text)
            if verdict is not None:
                self._apply(flow, verdict, "response")
        except ValueError as e:  # corrupt encoding
            pass_undecodable(flow, e, key="moderation", not_done="response not scored", logger=log)
        except Exception as e:  # fail closed
            self._fail(flow, e)

    def _fail(self, flow: http.HTTPFlow, e: Exception) -> None:
        fail_closed(flow, e, key="moderation", check="content check", logger=log)
