"""The client snippet: injected into HTML, served as JS, and its beacon endpoint.

Hooks: `request` (`<prefix>t.js` and the beacon `<prefix>b`, before Endpoints; the beacon
answers 202 only once its events are committed, through a coroutine returned for that
path only). Injection is `edit_html`, called by addons/htmledit.py for HTML responses of
the configured routes: a bytes search and splice, no decoding of the page.
Metadata read: LISTENER, ROUTE, BLOCKED_BY, ORIGINAL_HOST, CLIENT_IP, REQUEST_ID.
Written: BLOCKED_BY, VISITOR, SESSION.

Injection goes before `</head>` (else before `</body>`) as
`<script src="<prefix>t.js" data-endpoint=... defer>`. Content-Security-Policy is
respected, never loosened blindly:
- no script restriction, or `'self'` allowed (without `'strict-dynamic'`): plain tag;
- a nonce in the policy: our tag carries the page's nonce;
- hashes only: the snippet is inlined and its sha256 added to that directive (adding a
  hash where there was none would disable `'unsafe-inline'`, so only then);
- otherwise (or when `connect-src` forbids posting to 'self'): not injected, one log line.

Beacon: POST JSON `{"events": [...]}` (`text/plain` from sendBeacon). 400 names the bad
field, 413 when the body or the batch is too large, 429 past the per-visitor rate, 204
when the browser sends DNT/GPC and the config honours it, 503 when the store can't take
events. Event types: pageview, click, outbound, engagement, custom (`portico.track`);
custom events are stored as type `custom` with their `name` (a page can't forge other
event types), and configured goals turn into `conversion` events carrying the campaign.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import http

from addons import metadata
from addons.attribution import Attribution, Goal, from_cookie_header, goals_for_event
from addons.htmlpage import HtmlPage
from addons.pages import reverse_request_target
from addons.privacy import clean_path
from addons.recorder import Recorder
from addons.referrers import classify
from addons.useragent import parse_user_agent
from addons.visitor import Visit, Visitors

log = logging.getLogger("portico.snippet")

SCRIPT = (Path(__file__).parent / "static" / "portico.js").read_bytes()
BEACON_TYPES = ("pageview", "click", "outbound", "engagement", "custom")
_NAME = re.compile(r"^[a-z0-9_.-]{1,64}$")
_PROP_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # no '.': the store reads it as a map member
_HEAD_END = re.compile(rb"</head\s*>", re.IGNORECASE)
_BODY_END = re.compile(rb"</body\s*>", re.IGNORECASE)
_INJECTED = re.compile(rb"data-portico[\s>]")


@dataclass(frozen=True)
class SnippetSettings:
    secret: bytes
    reserved_prefix: str = "/_portico/"
    routes: frozenset[str] = frozenset({"*"})
    inject: bool = True
    click_selectors: tuple[str, ...] = ("[data-track]",)
    respect_dnt: bool = True
    respect_gpc: bool = True
    max_bytes: int = 16 * 1024
    max_events: int = 50
    rate_per_minute: int = 120
    query_allowlist: frozenset[str] = frozenset()
    internal_hosts: tuple[str, ...] = ()
    goals: tuple[Goal, ...] = ()
    attribution_window: float = 30 * 86400.0


class BeaconError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- CSP -----------------------------------------------------------------------------------

def parse_csp(values: list[str]) -> list[dict[str, list[str]]]:
    """Each enforced policy as {directive: [sources]} (a header may hold several, comma-separated)."""
    policies = []
    for value in values:
        for policy in value.split(","):
            directives: dict[str, list[str]] = {}
            for part in policy.split(";"):
                tokens = part.split()
                if tokens and tokens[0].lower() not in directives:
                    directives[tokens[0].lower()] = tokens[1:]
            if directives:
                policies.append(directives)
    return policies


def _script_directive(policy: dict[str, list[str]]) -> str | None:
    return next((d for d in ("script-src-elem", "script-src", "default-src") if d in policy), None)


@dataclass(frozen=True)
class CspPlan:
    mode: str            # "plain" | "nonce" | "hash" | "skip"
    nonce: str = ""
    reason: str = ""


def plan_for_csp(values: list[str]) -> CspPlan:
    """How to inject under these Content-Security-Policy header values."""
    nonces: set[str] = set()
    need_hash = False
    for policy in parse_csp(values):
        connect = policy.get("connect-src", policy.get("default-src"))
        if connect is not None and not any(s in ("'self'", "*") for s in connect):
            return CspPlan("skip", reason="connect-src does not allow 'self' (the beacon endpoint)")
        directive = _script_directive(policy)
        if directive is None:
            continue
        sources = policy[directive]
        lower = [s.lower() for s in sources]
        found = [s[7:-1] for s in sources if s.lower().startswith("'nonce-") and s.endswith("'")]
        if found:
            nonces.add(found[0])
        elif "'self'" in lower and "'strict-dynamic'" not in lower:
            continue
        elif any(s.startswith(("'sha256-", "'sha384-", "'sha512-")) for s in lower):
            need_hash = True
        else:
            return CspPlan("skip", reason=f"{directive} allows neither 'self', a nonce nor hashes")
    if len(nonces) > 1:
        return CspPlan("skip", reason="several policies with different nonces")
    if nonces and need_hash:
        return CspPlan("skip", reason="one policy uses a nonce, another only hashes")
    if nonces:
        return CspPlan("nonce", nonce=nonces.pop())
    if need_hash:
        return CspPlan("hash")
    return CspPlan("plain")


def add_hash_to_csp(value: str, digest: str) -> str:
    """Add `'sha256-...'` to the script directive of each policy in one header value that has hashes."""
    out_policies = []
    for policy in value.split(","):
        parts = policy.split(";")
        names = [p.split()[0].lower() if p.split() else "" for p in parts]
        target = next((d for d in ("script-src-elem", "script-src", "default-src") if d in names), None)
        if target is not None:
            i = names.index(target)
            if "'sha" in parts[i].lower():
                parts[i] = parts[i].rstrip() + f" 'sha256-{digest}'"
        out_policies.append(";".join(parts))
    return ",".join(out_policies)


# --- injection -----------------------------------------------------------------------------

def script_tag(settings: SnippetSettings, plan: CspPlan) -> str:
    p = settings.reserved_prefix
    attrs = (f' data-portico data-endpoint="{html.escape(p + "b")}"'
             f' data-selectors="{html.escape(", ".join(settings.click_selectors))}"'
             f' data-dnt="{int(settings.respect_dnt)}" data-gpc="{int(settings.respect_gpc)}"')
    if plan.mode == "hash":
        return f"<script{attrs}>{SCRIPT.decode()}</script>"
    nonce = f' nonce="{html.escape(plan.nonce)}"' if plan.mode == "nonce" else ""
    return f'<script src="{html.escape(p + "t.js")}"{attrs}{nonce} defer></script>'


def inject_bytes(data: bytes, tag: bytes) -> bytes | None:
    """The page with `tag` before </head> (else </body>); None when there is neither or it is
    there already. `data` is in an ASCII-compatible charset (see addons/htmledit.py)."""
    at = injection_point(data)
    return None if at is None else data[:at] + tag + data[at:]


def injection_point(data: bytes) -> int | None:
    """Where `inject_bytes` puts the tag, or None (see there)."""
    at = data.find(b"data-portico")  # a find, then the regex only where it could match
    if at >= 0 and _INJECTED.search(data, at):
        return None
    at = data.find(b"</head>")  # the common spelling first: a find is ~10x cheaper than the regex
    if at < 0:
        m = _HEAD_END.search(data) or _BODY_END.search(data)
        if m is None:
            return None
        at = m.start()
    return at


def inject(text: str, tag: str) -> str | None:
    """`inject_bytes` for text (tests, tools)."""
    out = inject_bytes(text.encode("utf-8", "surrogatepass"), tag.encode("utf-8"))
    return None if out is None else out.decode("utf-8", "surrogatepass")


@lru_cache(maxsize=64)
def plan_for_csp_cached(values: tuple[str, ...]) -> CspPlan:
    """`plan_for_csp`, memoised: a site sends the same few policies again and again."""
    return plan_for_csp(list(values))


# --- beacon validation ---------------------------------------------------------------------

def _str(event: dict[str, Any], key: str, where: str, limit: int, required: bool = False) -> str:
    value = event.get(key, "")
    if not isinstance(value, str):
        raise BeaconError(400, f"{where}.{key}: expected a string, got {type(value).__name__}")
    if required and not value:
        raise BeaconError(400, f"{where}.{key}: required")
    if len(value) > limit:
        raise BeaconError(400, f"{where}.{key}: longer than {limit} characters")
    _check_unicode(value, f"{where}.{key}")
    return value


def _check_unicode(value: str, where: str) -> None:
    """JSON's \\u escapes can carry half of a surrogate pair, which no store can encode: refuse
    it here, with the field's name, rather than accept the event and lose it."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BeaconError(400, f"{where}: not valid Unicode (an unpaired surrogate escape)") from None


def parse_beacon(body: bytes, max_bytes: int, max_events: int) -> list[dict[str, Any]]:
    """The validated events of a beacon body.

    Raises:
        BeaconError: 413 for an oversized body or batch, 400 naming the first bad field.
    """
    if len(body) > max_bytes:
        raise BeaconError(413, f"body of {len(body)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BeaconError(400, f"body: expected JSON like {{\"events\": [...]}}: {e}") from None
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list) or not events:
        raise BeaconError(400, "events: expected a non-empty list of events")
    if len(events) > max_events:
        raise BeaconError(413, f"events: {len(events)} events exceed the limit of {max_events} per batch")
    out = []
    for i, ev in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(ev, dict):
            raise BeaconError(400, f"{where}: expected an object")
        kind = ev.get("type")
        if kind not in BEACON_TYPES:
            raise BeaconError(400, f"{where}.type: expected one of {', '.join(BEACON_TYPES)}, got {kind!r}")
        url = _str(ev, "url", where, 2048, required=True)
        if not url.startswith("/"):
            raise BeaconError(400, f"{where}.url: expected a path starting with '/', got {url[:80]!r}")
        clean: dict[str, Any] = {"type": kind, "url": url}
        if kind == "pageview":
            clean["ref"] = _str(ev, "ref", where, 2048)
            clean["spa"] = bool(ev.get("spa", False))
        elif kind == "click":
            clean["track"] = _str(ev, "track", where, 100)
            clean["tag"] = _str(ev, "tag", where, 32)
            clean["text"] = _str(ev, "text", where, 200)
        elif kind == "outbound":
            href = _str(ev, "href", where, 2048, required=True)
            try:
                scheme = urlsplit(href).scheme
            except ValueError:  # e.g. "http://[::1": a bracket never closed
                raise BeaconError(400, f"{where}.href: not a valid URL: {href[:80]!r}") from None
            if scheme not in ("http", "https"):
                raise BeaconError(400, f"{where}.href: expected an http(s) URL")
            clean["href"] = href
        elif kind == "engagement":
            ms = ev.get("ms")
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms <= 86_400_000:
                raise BeaconError(400, f"{where}.ms: expected milliseconds from 0 to 86400000, got {ms!r}")
            clean["ms"] = int(ms)
        else:
            name = ev.get("name")
            if not isinstance(name, str) or not _NAME.match(name):
                raise BeaconError(400, f"{where}.name: expected 1-64 characters of a-z 0-9 _ . -, got {name!r}")
            props = ev.get("props", {})
            if not isinstance(props, dict) or len(props) > 20:
                raise BeaconError(400, f"{where}.props: expected an object with at most 20 keys")
            for k, v in props.items():
                if not _PROP_KEY.match(k):
                    raise BeaconError(400, f"{where}.props: key {k[:70]!r} is not 1-64 characters of A-Z a-z 0-9 _ -")
                if not isinstance(v, (str, int, float, bool)) or (isinstance(v, str) and len(v) > 200):
                    raise BeaconError(400, f"{where}.props.{k}: expected a string (<= 200 chars), number or boolean")
                if isinstance(v, str):
                    _check_unicode(v, f"{where}.props.{k}")
                elif isinstance(v, float) and not math.isfinite(v):
                    raise BeaconError(400, f"{where}.props.{k}: {v} is not a finite number")
                elif isinstance(v, int) and not isinstance(v, bool) and not -(1 << 63) <= v < 1 << 63:
                    raise BeaconError(400, f"{where}.props.{k}: {v} is outside the 64-bit integer range")
            clean["name"], clean["props"] = name, props
        out.append(clean)
    return out


class RateLimiter:
    """A token bucket per key (`rate` events per minute, bursts up to `rate`); bounded memory."""

    def __init__(self, rate_per_minute: int, max_keys: int = 100_000) -> None:
        self.rate = rate_per_minute / 60.0
        self.capacity = float(rate_per_minute)
        self.max_keys = max_keys
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, cost: int, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        ok = tokens >= cost
        self.buckets[key] = (tokens - cost if ok else tokens, now)
        self.buckets.move_to_end(key)
        if len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)
        return ok


class Snippet:
    """Injects the snippet into HTML, serves it, and takes its beacons."""

    def __init__(self, settings: SnippetSettings, recorder: Recorder, visitors: Visitors) -> None:
        self.settings = settings
        self.recorder = recorder
        self.visitors = visitors
        self.script_path = settings.reserved_prefix + "t.js"
        self.beacon_path = settings.reserved_prefix + "b"
        self.request_paths = frozenset({self.script_path, self.beacon_path})  # see addons/bundle.py
        self.limiter = RateLimiter(settings.rate_per_minute)
        self.script_hash = base64.b64encode(hashlib.sha256(SCRIPT).digest()).decode()
        self.routes = settings.routes
        self._plain_tag = script_tag(settings, CspPlan("plain")).encode("utf-8")

    # --- endpoints -------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Serve the script; for the beacon return a coroutine (mitmproxy awaits it), so the
        other requests don't pay for a coroutine on every hook call."""
        target = reverse_request_target(flow)
        if target is None:
            return None
        path = target[0]
        if path == self.script_path:
            flow.metadata[metadata.BLOCKED_BY] = "snippet:script"
            flow.response = http.Response.make(200, SCRIPT, {
                "Content-Type": "application/javascript; charset=utf-8", "Cache-Control": "public, max-age=3600",
                "X-Content-Type-Options": "nosniff"})
        elif path == self.beacon_path:
            flow.metadata[metadata.BLOCKED_BY] = "snippet:beacon"
            return self._answer_beacon(flow)
        return None

    async def _answer_beacon(self, flow: http.HTTPFlow) -> None:
        flow.response = await self.beacon(flow)

    async def beacon(self, flow: http.HTTPFlow) -> http.Response:
        """Validate, rate-limit and durably record one beacon; the response to send."""
        s, req = self.settings, flow.request
        rid = flow.metadata.get(metadata.REQUEST_ID) or ""
        if req.method != "POST":
            return self._json(405, {"error": "use POST"}, rid, {"Allow": "POST"})
        if (s.respect_dnt and req.headers.get("dnt") == "1") or (s.respect_gpc and req.headers.get("sec-gpc") == "1"):
            return http.Response.make(204, b"", {"Cache-Control": "no-store", "X-Request-Id": rid})
        length = req.headers.get("content-length", "")
        try:
            if length.isdigit() and int(length) > s.max_bytes:
                raise BeaconError(413, f"body of {length} bytes exceeds the limit of {s.max_bytes} bytes")
            events = parse_beacon(req.raw_content or b"", s.max_bytes, s.max_events)
        except BeaconError as e:
            return self._json(e.status, {"error": str(e)}, rid)
        site = flow.metadata.get(metadata.ORIGINAL_HOST, "")
        ua = req.headers.get("user-agent", "")
        visit = self.visitors.visit(site, flow.metadata.get(metadata.CLIENT_IP, ""), ua)
        flow.metadata[metadata.VISITOR], flow.metadata[metadata.SESSION] = visit.visitor, visit.session
        if not self.limiter.allow(visit.visitor, len(events)):
            return self._json(429, {"error": f"more than {s.rate_per_minute} events per minute from this visitor"},
                              rid, {"Retry-After": "60"})
        visit.state.browser_seen = True  # a beacon: the page's script ran
        records = self.build_events(events, visit, site, ua, req.headers.get("cookie", ""))
        if not self.recorder.enabled:
            return self._json(503, {"error": "event recording is disabled on this gateway"}, rid)
        try:
            result = await self.recorder.record_durable(records)
        except Exception as e:  # noqa: BLE001 - answer 503 and let the browser's next beacon retry
            log.warning("request %s: beacon not recorded: %s: %s", rid, type(e).__name__, e)
            return self._json(503, {"error": "events could not be stored; try again later"}, rid)
        errors = getattr(result, "errors", None) or []
        if errors:  # parse_beacon's checks should make this rare: say so rather than drop quietly
            first = errors[0][1] if isinstance(errors[0], tuple) else str(errors[0])
            log.warning("request %s: the store refused %d beacon event(s): %s", rid, len(errors), first)
            return self._json(202, {"accepted": getattr(result, "accepted", 0), "rejected": len(errors),
                                    "error": first}, rid)
        return self._json(202, {"accepted": getattr(result, "accepted", len(records))}, rid)

    def build_events(self, events: list[dict[str, Any]], visit: Visit, site: str, ua_text: str,
                     cookie: str) -> list[dict[str, Any]]:
        """Store events for validated beacon events (plus conversions for event goals)."""
        s = self.settings
        ua = parse_user_agent(ua_text)
        now = time.time()
        attribution = from_cookie_header(s.secret, cookie, s.attribution_window)
        if attribution is None and visit.state.campaign_last:
            attribution = Attribution(visit.state.campaign_first or visit.state.campaign_last,
                                      visit.state.campaign_last, 0)
        common: dict[str, Any] = {"visitor": visit.visitor, "session": visit.session, "host": site,
                                  "browser": ua.browser, "os": ua.os, "device": ua.device, "bot": ua.bot}
        if attribution is not None:
            common["campaign"], common["campaign_first"] = attribution.last, attribution.first
        out: list[dict[str, Any]] = []
        for ev in events:
            path, params = clean_path(ev["url"], s.query_allowlist)
            attrs = dict(common)
            attrs["path"] = path[:1024]
            kind = ev["type"]
            conversions: list[dict[str, Any]] = []
            if kind == "pageview":
                visit.state.pageviews += 1
                ref = classify(ev["ref"], params, site, s.internal_hosts)
                attrs["spa"], attrs["ref_class"] = ev["spa"], ref.source_class
                if ref.host:
                    attrs["ref_host"] = ref.host
                if ref.path:
                    attrs["ref_path"] = ref.path
                for name in ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"):
                    if params.get(name):
                        attrs[name] = params[name][:200]
            elif kind == "click":
                attrs.update({k: ev[k] for k in ("track", "tag", "text") if ev[k]})
            elif kind == "outbound":
                target = urlsplit(ev["href"])
                attrs.update({"from": path.split("?", 1)[0], "target_host": (target.hostname or "").lower(),
                              "target_path": (target.path or "/")[:1024], "via": "beacon"})
                del attrs["path"]
            elif kind == "engagement":
                attrs["ms"] = ev["ms"]
            else:
                attrs["name"] = ev["name"]
                if ev["props"]:
                    attrs["props"] = ev["props"]
                for goal in goals_for_event(s.goals, ev["name"]):
                    if goal.name not in visit.state.goals_done:
                        visit.state.goals_done.add(goal.name)
                        conv: dict[str, Any] = {"goal": goal.name, "session": visit.session,
                                                "visitor": visit.visitor, "path": path.split("?", 1)[0]}
                        if attribution is not None:
                            conv["campaign_first"], conv["campaign_last"] = attribution.first, attribution.last
                        conversions.append({"type": "conversion", "time": now, "attrs": conv})
            out.append({"type": kind, "time": now, "attrs": attrs})
            out.extend(conversions)
        return out

    @staticmethod
    def _json(status: int, body: dict[str, Any], rid: str, extra: dict[str, str] | None = None) -> http.Response:
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store", "X-Request-Id": rid}
        return http.Response.make(status, json.dumps(body).encode(), headers | (extra or {}))

    # --- injection -------------------------------------------------------------------------

    # what it inserts depends on the page's Content-Security-Policy (a nonce, a hash): a page
    # template made under another policy asks `redo_edit` again (see HtmlEditor.edit_html)
    reads_csp = True

    def edit_html(self, page: HtmlPage) -> bytes | None:
        """The page with the snippet tag (an editor for addons/htmledit.py), or None."""
        planned = self._planned_tag(page)
        if planned is None:
            return None
        tag, plan = planned
        at = injection_point(page.body)
        if at is None:
            return None
        self._allow_in_csp(page, plan)
        if page.edits is not None:
            page.edits.append((at, at, len(tag)))
        return page.body[:at] + tag + page.body[at:]

    def redo_edit(self, page: HtmlPage, span: bytes) -> bytes | None:
        """The tag for this page's policy, in place of the one `edit_html` inserted (its
        insertion replaced no bytes: `span` is empty); None when it would inject nothing."""
        planned = None if span else self._planned_tag(page)
        if planned is None:
            return None
        self._allow_in_csp(page, planned[1])
        return planned[0]

    def _planned_tag(self, page: HtmlPage) -> tuple[bytes, CspPlan] | None:
        """The tag to insert under the page's policy, and the plan; None when none goes in."""
        s = self.settings
        if not s.inject or page.method != "GET":
            return None
        plan = plan_for_csp_cached(tuple(page.csp))
        if plan.mode == "skip":
            log.info("request %s: snippet not injected into %s: %s", page.request_id, page.path, plan.reason)
            return None
        return (self._plain_tag if plan.mode == "plain" else script_tag(s, plan).encode("utf-8")), plan

    def _allow_in_csp(self, page: HtmlPage, plan: CspPlan) -> None:
        if plan.mode == "hash":
            page.csp = [add_hash_to_csp(v, self.script_hash) for v in page.csp]
            page.csp_changed = True
