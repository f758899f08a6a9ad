"""Forum moderation: posts to configured paths are scored before they reach the forum.

Hooks: `request`.
Metadata read: LISTENER, ROUTE, ORIGINAL_PATH, REQUEST_ID, USER, CLIENT_IP. Written: BLOCKED_BY.

A POST/PUT/PATCH whose path (as the client sent it) is under a rule's `paths` has its text
fields (form-urlencoded, multipart or JSON; the rule's `fields`, or all of them) scored with
the rule's weighted word list after de-obfuscation, plus escalation signals (shouting,
repeated insults, aimed at a person). At or above the rule's threshold:
  alert  - the post goes through; a `moderation.alert` event is recorded,
  hold   - the post is NOT forwarded; the author gets a "held for review" page (202),
  reject - the post is NOT forwarded; the author gets a "rejected" page (422).
Every decision is a `moderation.alert` event with route, user, rule, score and action, so
alerts are queried and exported like any other event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from addons import metadata
from addons.pages import error_response
from addons.paths import prefix_matches
from addons.privacy import truncate_address
from addons.textscore import PhraseScorer, Score, heat
from addons.verdicts import page, record

log = logging.getLogger("portico.forum")

_MAX_JSON_STRINGS = 200


@dataclass
class ForumRule:
    name: str
    paths: tuple[str, ...]
    action: str  # alert | hold | reject
    threshold: float
    fields: tuple[str, ...] = ()
    words: Mapping[str, float] = field(default_factory=dict)
    scorer: PhraseScorer | None = None

    def __post_init__(self) -> None:
        self.scorer = PhraseScorer(self.words)

    def matches(self, path: str) -> bool:
        return any(prefix_matches(p, path.split("?", 1)[0]) for p in self.paths)


def _json_strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _json_strings(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _json_strings(v, key)


def post_fields(request: http.Request) -> list[tuple[str, str]]:
    """(field, text) pairs of a form, multipart or JSON body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        return list(request.urlencoded_form.items(multi=True))
    if ctype == "multipart/form-data":
        out = []
        for k, v in request.multipart_form.items(multi=True):
            try:
                out.append((k.decode(), v.decode("utf-8")))
            except UnicodeDecodeError:
                continue  # a file upload, not text
        return out
    if ctype == "application/json" or ctype.endswith("+json"):
        try:
            data = json.loads(request.get_text(strict=False) or "null")
        except ValueError:
            return []
        out = []
        for pair in _json_strings(data):
            out.append(pair)
            if len(out) >= _MAX_JSON_STRINGS:
                break
        return out
    if ctype.startswith("text/"):
        return [("body", request.get_text(strict=False) or "")]
    return []


def score_post(rule: ForumRule, fields: Sequence[tuple[str, str]]) -> Score:
    """The rule's score for a post's selected fields (phrases + escalation signals)."""
    wanted = [text for name, text in fields if not rule.fields or name in rule.fields]
    text = "\n".join(wanted)
    assert rule.scorer is not None
    return heat(text, rule.scorer.score(text))


class ForumModeration:
    """Scores forum posts and alerts, holds or rejects per rule."""

    def __init__(self, rules: Sequence[ForumRule], store: Any = None, max_body: int = 1_000_000) -> None:
        self.rules = tuple(rules)
        self.store = store
        self.max_body = max_body

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if flow.request.method.upper() not in ("POST", "PUT", "PATCH"):
            return
        path = flow.metadata.get(metadata.ORIGINAL_PATH) or flow.request.path
        rule = next((r for r in self.rules if r.matches(path)), None)
        if rule is None:
            return
        try:
            self._check(flow, rule, path)
        except Exception as e:  # fail closed: an unchecked post must not slip through
            request_id = flow.metadata.get(metadata.REQUEST_ID)
            log.exception("forum moderation failed for request %s", request_id)
            flow.metadata[metadata.BLOCKED_BY] = "forum:internal-error"
            flow.response = error_response(503, "Service unavailable",
                                           f"Your post could not be checked ({type(e).__name__}); try again.",
                                           request_id)

    def _check(self, flow: http.HTTPFlow, rule: ForumRule, path: str) -> None:
        if len(flow.request.raw_content or b"") > self.max_body:
            fields: list[tuple[str, str]] = [("body", (flow.request.get_text(strict=False) or "")[:self.max_body])]
        else:
            fields = post_fields(flow.request)
        score = score_post(rule, fields)
        if score.total < rule.threshold:
            return
        request_id = flow.metadata.get(metadata.REQUEST_ID)
        user = flow.metadata.get(metadata.USER)
        record(self.store, "moderation.alert", {
            "rule": rule.name, "action": rule.action, "score": round(score.total, 2), "reasons": score.reasons(),
            "route": flow.metadata.get(metadata.ROUTE), "user": user,
            # the network, not the address (as tracking stores it): enough to spot a range posting abuse
            "client": None if user else truncate_address(flow.metadata.get(metadata.CLIENT_IP) or "") or None,
            "path": path.split("?", 1)[0], "request_id": request_id})
        log.info("request %s: forum rule %s scored %.1f (%s): %s", request_id, rule.name, score.total,
                 rule.action, score.reasons())
        if rule.action == "hold":
            flow.metadata[metadata.BLOCKED_BY] = f"forum:{rule.name}:hold"
            flow.response = page(202, "Your post is held for review",
                                 "A moderator will look at your post before it is published.", rule.name, request_id)
        elif rule.action == "reject":
            flow.metadata[metadata.BLOCKED_BY] = f"forum:{rule.name}:reject"
            flow.response = page(422, "Your post was not published",
                                 "It breaks the community rules on abusive language. Please rephrase it.",
                                 rule.name, request_id)
