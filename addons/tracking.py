"""One `request` event per flow, plus sessions, bot flags and path-goal conversions.

Hooks: `response`, `error` (the last addon in the pipeline, so blocked, denied, cached and
errored flows are all seen), `running`/`done` (the sweeper task).
Metadata read: REQUEST_ID, CLIENT_IP, LISTENER, ORIGINAL_HOST, ORIGINAL_PATH, ROUTE,
BLOCKED_BY, CACHE_STATUS, USER, GROUPS, VISITOR, SESSION.
Written: REQUEST_RECORDED.

Privacy by default: the client address is kept only as its network (/24, /48), the
referrer without its query, the path without query parameters except allow-listed ones,
users optionally as keyed pseudonyms. Events go to the store through `Recorder.submit`
(non-blocking; proxy/tracking_setup.py gives it a `BatchRecorder`, so events reach the
store in batches); a store failure never breaks a request. The hook only copies what the
event needs (`_Captured`); events are built every `build_interval` (or `build_batch`
flows), in arrival order, and before any endpoint's `Visitors.visit` so sessions see
requests in the order they came. The build memoises what repeats (path cleaning, referrer
classes, User-Agent parsing, content kinds).

Bot flags: a known crawler/headless/library User-Agent, or "HTML served but nothing
followed": the HTML request events of a visitor who has not yet fetched anything but HTML
are held (up to `bot_follow_timeout`) until an asset, XHR or beacon from the same visitor
shows a real browser; if none comes they are recorded with `bot: true, bot_reason:
"no-follow"`. Bots keep their events, but their id goes to `bot_visitor` instead of
`visitor`, so visitor counts exclude them unless `count_bots_as_visitors`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from mitmproxy import http

from addons import metadata
from addons.attribution import Attribution, Goal, from_cookie_header, goals_for_path
from addons.headerscan import names, scan_headers
from addons.privacy import clean_path, truncate_address
from addons.recorder import Recorder
from addons.referrers import Referrer, classify
from addons.signing import pseudonym
from addons.useragent import parse_user_agent
from addons.visitor import Session, Visitors

log = logging.getLogger("portico.tracking")

UTM_PARAMS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


@dataclass(frozen=True)
class TrackingSettings:
    secret: bytes
    reserved_prefix: str = "/_portico/"
    query_allowlist: frozenset[str] = frozenset()
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    pseudonymise_users: bool = False
    internal_hosts: tuple[str, ...] = ()
    goals: tuple[Goal, ...] = ()
    attribution_window: float = 30 * 86400.0
    count_bots_as_visitors: bool = False
    bot_follow_timeout: float = 15.0
    max_pending: int = 20_000
    sweep_interval: float = 1.0
    build_interval: float = 0.5  # captured flows become events this often ...
    build_batch: int = 500       # ... or when this many wait


@lru_cache(maxsize=256)
def content_kind(content_type: str) -> str:
    """A short name for the response's media type: html, json, css, js, image, font, other."""
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct in ("text/html", "application/xhtml+xml"):
        return "html"
    if ct.endswith("json"):
        return "json"
    if ct == "text/css":
        return "css"
    if "javascript" in ct:
        return "js"
    if ct.startswith(("image/", "font/", "audio/", "video/")):
        return ct.split("/", 1)[0]
    return "other" if ct else ""


_REQUEST_HEADERS = names("user-agent", "referer", "cookie")
_RESPONSE_HEADERS = names("content-type")


@lru_cache(maxsize=4096)
def _clean_path(path: str, allowlist: frozenset[str]) -> tuple[str, dict[str, str]]:
    """`clean_path`, memoised (callers only read the returned dict): pages are requested again and again."""
    return clean_path(path, allowlist)


@lru_cache(maxsize=4096)
def _classify(referer: str, medium: str | None, source: str | None, ref: str | None, site: str,
              internal_hosts: tuple[str, ...]) -> Referrer:
    """`classify` memoised on exactly the inputs it reads."""
    params = {k: v for k, v in (("utm_medium", medium), ("utm_source", source), ("ref", ref)) if v is not None}
    return classify(referer, params, site, internal_hosts)


STATIC_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class _Static:
    """The parts of a request event that depend only on `Tracking._static`'s key."""

    attrs: dict[str, Any]  # copied, never changed
    path_only: str
    own: bool              # under the reserved prefix
    kind: str              # content kind
    ua: Any                # addons.useragent.UserAgent
    ref: Referrer


class _Captured(NamedTuple):
    """What a request event needs from one flow, copied in the hook; the event is built
    later with the others captured meanwhile (`Tracking.build_captured`).

    Why: in the gateway each request's tracking code runs after ~750 us of mitmproxy's own
    work has pushed its code and data out of the CPU caches, so it costs 2-4x what it
    costs in a loop. Built 500 at a time it runs at loop speed (docs/tracking.md, session
    12). Only strings and numbers are kept, never the flow (bodies stay unreferenced). A
    tuple: a frozen dataclass of these 19 fields takes 2.2 us to make, a tuple 0.4 us.
    """

    key: tuple[str, ...]   # Tracking._static's key
    cookie: str
    visitor: str | None    # set by an endpoint of ours that visited already
    session: str | None
    status: int
    req_bytes: int
    resp_bytes: int
    req_start: float | None
    req_end: float | None
    resp_start: float | None
    resp_end: float | None
    cache_status: str | None
    blocked_by: str | None
    error: str | None
    user: Any
    groups: Any
    request_id: str
    now: float             # time.time() at the hook
    clock: float           # the visitors' clock at the hook (sessions' idle time)


@dataclass
class _Pending:
    deadline: float
    events: list[dict[str, Any]] = field(default_factory=list)


class Tracking:
    """Records every flow as a `request` event (the last addon in the pipeline)."""

    def __init__(self, settings: TrackingSettings, recorder: Recorder, visitors: Visitors,
                 geoip: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.settings = settings
        self.recorder = recorder
        self.visitors = visitors
        self.geoip = geoip
        self.pending: dict[str, _Pending] = {}
        self._statics: dict[tuple[str, ...], _Static] = {}
        self._captured: list[_Captured] = []
        self._build_timer: asyncio.TimerHandle | None = None
        self._build_loop: asyncio.AbstractEventLoop | None = None  # the timer's loop
        self._done = False  # after `done`: flows still closing are built and flushed at once
        # a beacon, click or redirect must find the flows captured before it already built
        # into the visitor's session (attribution, browser_seen, goals): same order as live
        visitors.catch_up.append(self.build_captured)
        self._task: asyncio.Task[None] | None = None
        self._last_session_sweep = 0.0

    # --- lifecycle -------------------------------------------------------------------------

    def running(self) -> None:
        self._done = False
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweeper(), name="tracking-sweeper")

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._done = True
        self.flush_pending(force=True)  # builds what is captured first
        flush = getattr(self.recorder, "flush", None)  # a BatchRecorder: hand over the last batch
        if flush is not None:
            flush()

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - the sweeper must keep running
                log.exception("tracking sweeper failed")

    def sweep(self) -> None:
        """Release overdue held events (building what is captured first); every 30 s,
        record ended sessions."""
        self.flush_pending()
        now = time.monotonic()
        if now - self._last_session_sweep >= 30:
            self._last_session_sweep = now
            self.recorder.submit([self.session_end_event(s) for s in self.visitors.expired()])

    # --- hooks -----------------------------------------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def _record(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(metadata.REQUEST_RECORDED):
            return
        flow.metadata[metadata.REQUEST_RECORDED] = True
        try:
            self._record_flow(flow)
        except Exception:  # noqa: BLE001 - tracking must never break a request
            log.exception("request %s: could not capture the request event", flow.metadata.get(metadata.REQUEST_ID))

    def _static(self, key: tuple[str, ...]) -> _Static:
        """What a request event takes from its inputs alone (method, scheme, site, path,
        listener, User-Agent, Content-Type, route, client address, Referer), remembered:
        the same visitor asks for the same pages again and again."""
        s = self.settings
        method, scheme, site, original_path, listener, ua_text, ctype, route, client_ip, referer = key
        ua = parse_user_agent(ua_text)
        path, params = _clean_path(original_path, s.query_allowlist)
        path_only = path.split("?", 1)[0]
        kind = content_kind(ctype)
        attrs: dict[str, Any] = {
            "method": method, "scheme": scheme, "host": site, "path": path[:1024], "listener": listener,
            "browser": ua.browser, "browser_version": ua.version, "os": ua.os, "device": ua.device}
        if kind:
            attrs["content"] = kind
        if route:
            attrs["route"] = route
        net = truncate_address(client_ip, s.ipv4_prefix, s.ipv6_prefix)
        if net:
            attrs["net"] = net
        if self.geoip is not None and net:
            attrs.update(self.geoip(net.split("/", 1)[0]))  # looked up by network: no raw address kept
        ref = _classify(referer, params.get("utm_medium"), params.get("utm_source"), params.get("ref"), site,
                        s.internal_hosts)
        attrs["ref_class"] = ref.source_class
        if ref.host:
            attrs["ref_host"] = ref.host
        if ref.path:
            attrs["ref_path"] = ref.path
        if params:
            for name in UTM_PARAMS:
                if params.get(name):
                    attrs[name] = params[name][:200]
        static = _Static(attrs, path_only, (path_only + "/").startswith(s.reserved_prefix), kind, ua, ref)
        if len(self._statics) >= STATIC_ENTRIES:
            self._statics.clear()  # rarely: many distinct clients x pages; rebuilt as requests come
        self._statics[key] = static
        return static

    def _record_flow(self, flow: http.HTTPFlow) -> None:
        """Capture now, build later (see `_Captured`); outside an event loop, build at once."""
        self._captured.append(self._capture(flow))
        if len(self._captured) >= self.settings.build_batch:
            self.build_captured()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # unit tests, the CLI: nothing would fire a timer
            loop = None
        if loop is None or self._done:  # no timer would fire (or it would fire after the store closed)
            self._build_due()
        elif self._build_timer is None or self._build_loop is not loop:  # (a test's earlier loop ended)
            self._build_loop = loop
            self._build_timer = loop.call_later(self.settings.build_interval, self._build_due)

    def _capture(self, flow: http.HTTPFlow) -> _Captured:
        """Everything a request event reads from the flow, copied (never the flow or its bodies)."""
        req, resp, md = flow.request, flow.response, flow.metadata
        headers = scan_headers(req.headers, _REQUEST_HEADERS)
        if resp is not None:
            status = resp.status_code
            ctype = scan_headers(resp.headers, _RESPONSE_HEADERS).get(b"content-type", "")
            resp_bytes = len(resp.raw_content or b"")
            resp_start, resp_end = resp.timestamp_start, resp.timestamp_end
        else:
            status, ctype, resp_bytes, resp_start, resp_end = 502, "", 0, None, None
        site = md.get(metadata.ORIGINAL_HOST) or req.pretty_host
        client_ip = md.get(metadata.CLIENT_IP) or (flow.client_conn.peername[0] if flow.client_conn.peername else "")
        key = (req.method, req.scheme, site, md.get(metadata.ORIGINAL_PATH) or req.path,
               md.get(metadata.LISTENER, "reverse"), headers.get(b"user-agent", ""), ctype,
               md.get(metadata.ROUTE) or "", client_ip, headers.get(b"referer", ""))
        return _Captured(
            key, headers.get(b"cookie", ""), md.get(metadata.VISITOR), md.get(metadata.SESSION),
            status, len(req.raw_content or b""), resp_bytes, req.timestamp_start, req.timestamp_end,
            resp_start, resp_end, md.get(metadata.CACHE_STATUS), md.get(metadata.BLOCKED_BY),
            str(flow.error.msg)[:200] if flow.error is not None else None,
            md.get(metadata.USER), md.get(metadata.GROUPS), md.get(metadata.REQUEST_ID, ""),
            time.time(), self.visitors.clock())

    def _build_due(self) -> None:
        """The timer: build, then hand the batch on at once (these events waited already)."""
        try:
            self.build_captured()
            flush = getattr(self.recorder, "flush", None)  # a BatchRecorder
            if flush is not None:
                flush()
        except Exception:  # noqa: BLE001 - a timer callback must not take the loop's handler
            log.exception("tracking: could not build the captured request events")

    def build_captured(self) -> None:
        """Turn the captured flows into events, in the order they were captured, and hand
        them to the recorder. Also run by every endpoint's `Visitors.visit` (catch-up):
        there it must stay cheap, so it does not flush the recorder (one store submit per
        beacon would undo the batching)."""
        if self._build_timer is not None:
            self._build_timer.cancel()  # (a no-op when it is the timer that called)
            self._build_timer = None
        if not self._captured:
            return
        captured, self._captured = self._captured, []
        for c in captured:
            try:
                self._build(c)
            except Exception:  # noqa: BLE001 - one bad flow must not lose the others
                log.exception("request %s: could not build the request event", c.request_id)

    def _build(self, c: _Captured) -> None:
        s = self.settings
        method, _, site, _, _, ua_text, _, _, client_ip, _ = c.key
        static = self._statics.get(c.key) or self._static(c.key)
        ua, ref, kind, path_only, own_endpoint = static.ua, static.ref, static.kind, static.path_only, static.own
        status = c.status

        if c.visitor is not None and c.session is not None:  # an endpoint of ours visited already
            state = self.visitors.sessions.get(c.visitor)
            visitor, session = c.visitor, c.session
        else:
            visit = self.visitors.visit_at(c.clock, site, client_ip, ua_text)
            visitor, session, state = visit.visitor, visit.session, visit.state
        # the session's first recorded flow announces it, whoever's visit() started it
        new_session = state is not None and not state.announced and state.session == session
        if new_session:
            state.announced = True

        now = c.now
        started = c.req_start or now
        end = c.resp_end or now
        upstream_ms = 0.0
        cache_status = c.cache_status
        blocked_by = c.blocked_by
        if c.resp_start and c.req_end and not blocked_by and cache_status not in ("hit", "stale"):
            upstream_ms = max(0.0, (c.resp_start - c.req_end) * 1000)

        attrs = static.attrs.copy()
        attrs["status"] = status
        attrs["req_bytes"] = c.req_bytes
        attrs["resp_bytes"] = c.resp_bytes
        attrs["duration_ms"] = round(max(0.0, end - started) * 1000, 2)
        attrs["upstream_ms"] = round(upstream_ms, 2)
        attrs["session"] = session
        attrs["request_id"] = c.request_id
        if cache_status:
            attrs["cache"] = cache_status
        if blocked_by:
            attrs["blocked_by"] = blocked_by
        if c.error is not None:
            attrs["error"] = c.error
        if c.user:
            user = str(c.user)
            attrs["user"] = pseudonym(s.secret, "user", user) if s.pseudonymise_users else user
            groups = c.groups or ()
            if groups and not s.pseudonymise_users:
                attrs["groups"] = [str(g) for g in groups][:50]
        attribution = self._attribution(c.cookie, state)
        if attribution is not None:
            attrs["campaign"], attrs["campaign_first"] = attribution.last, attribution.first

        events: list[dict[str, Any]] = []
        if new_session:
            events.append({"type": "session.start", "time": started, "attrs": {
                "session": session, "entry": path_only[:1024], "host": site, "ref_class": ref.source_class,
                **({"ref_host": ref.host} if ref.host else {}),
                **{k: attrs[k] for k in ("browser", "os", "device", "net", "country", "campaign") if k in attrs}}})
        events.append({"type": "request", "time": started, "attrs": attrs})
        if state is not None and not own_endpoint and status < 400 and s.goals:
            for goal in goals_for_path(s.goals, path_only):
                if goal.name not in state.goals_done:
                    state.goals_done.add(goal.name)
                    events.append(self.conversion_event(goal, attribution, session, path_only, now))

        is_document = kind == "html" and method in ("GET", "HEAD") and not own_endpoint
        if state is not None:
            if is_document:
                state.pageviews += 1
            elif status < 400 and (kind or own_endpoint):
                state.browser_seen = True  # an asset, XHR or beacon followed: a browser
        if ua.bot:
            for ev in events:
                self._mark_bot(ev, visitor, ua.bot_reason)
            self.recorder.submit(events)
            return
        if state is not None and state.browser_seen:
            self._release(visitor, bot=False)
            for ev in events:
                self._mark_human(ev, visitor)
            self.recorder.submit(events)
            return
        # Not yet known: hold until something follows (or the timeout says "no-follow").
        held = self.pending.get(visitor)
        if held is None:
            if len(self.pending) >= s.max_pending:
                self._release(next(iter(self.pending)), bot=None)
            held = self.pending[visitor] = _Pending(time.monotonic() + s.bot_follow_timeout)
        held.events.extend(events)

    # --- helpers ---------------------------------------------------------------------------

    def _attribution(self, cookie: str, state: Session | None) -> Attribution | None:
        found = from_cookie_header(self.settings.secret, cookie, self.settings.attribution_window) if cookie else None
        if found is None and state is not None and state.campaign_last:
            found = Attribution(state.campaign_first or state.campaign_last, state.campaign_last, 0)
        return found

    @staticmethod
    def conversion_event(goal: Goal, attribution: Attribution | None, session: str, path: str,
                         now: float) -> dict[str, Any]:
        attrs: dict[str, Any] = {"goal": goal.name, "session": session, "path": path[:1024]}
        if attribution is not None:
            attrs["campaign_first"], attrs["campaign_last"] = attribution.first, attribution.last
        return {"type": "conversion", "time": now, "attrs": attrs}

    def _mark_bot(self, event: dict[str, Any], visitor: str, reason: str) -> None:
        event["attrs"]["bot"] = True
        event["attrs"]["bot_reason"] = reason
        event["attrs"]["visitor" if self.settings.count_bots_as_visitors else "bot_visitor"] = visitor

    @staticmethod
    def _mark_human(event: dict[str, Any], visitor: str) -> None:
        event["attrs"]["bot"] = False
        event["attrs"]["visitor"] = visitor

    def _release(self, visitor: str, bot: bool | None) -> None:
        """Record a visitor's held events: as human, as a no-follow bot, or undecided (None)."""
        held = self.pending.pop(visitor, None)
        if held is None:
            return
        for ev in held.events:
            if bot:
                self._mark_bot(ev, visitor, "no-follow")
            elif bot is False:
                self._mark_human(ev, visitor)
            else:
                ev["attrs"]["visitor"] = visitor
        self.recorder.submit(held.events)

    def flush_pending(self, force: bool = False) -> None:
        """Release held events whose timeout passed; with `force` (shutdown) all of them,
        the ones not yet overdue without a verdict (no `bot` attribute)."""
        self.build_captured()
        now = time.monotonic()
        for visitor in [v for v, p in self.pending.items() if force or p.deadline <= now]:
            overdue = self.pending[visitor].deadline <= now
            state = self.visitors.sessions.get(visitor)
            if state is not None and state.browser_seen:
                self._release(visitor, bot=False)
            else:
                self._release(visitor, bot=True if overdue else None)

    def session_end_event(self, state: Session) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "session": state.session, "duration_ms": round((state.last_seen - state.started) * 1000),
            "hits": state.hits, "pageviews": state.pageviews, "bounce": state.pageviews <= 1,
            "bot": not state.browser_seen,
        }
        counted = state.browser_seen or self.settings.count_bots_as_visitors
        attrs["visitor" if counted else "bot_visitor"] = state.visitor
        if state.campaign_last:
            attrs["campaign"] = state.campaign_last
        return {"type": "session.end", "time": state.last_seen, "attrs": attrs}

    def pending_count(self) -> int:
        self.build_captured()
        return sum(len(p.events) for p in self.pending.values())

