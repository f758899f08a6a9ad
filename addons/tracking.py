"""One `request` event per flow, plus sessions, bot flags and path-goal conversions.

Hooks: `response`, `error` (the last addon in the pipeline, so blocked, denied, cached and
errored flows are all seen), `running`/`done` (the sweeper task).
Metadata read: REQUEST_ID, CLIENT_IP, LISTENER, ORIGINAL_HOST, ORIGINAL_PATH, ROUTE,
BLOCKED_BY, CACHE_STATUS, USER, GROUPS, VISITOR, SESSION.
Written: VISITOR, SESSION, REQUEST_RECORDED.

Privacy by default: the client address is kept only as its network (/24, /48), the
referrer without its query, the path without query parameters except allow-listed ones,
users optionally as keyed pseudonyms. Events go to the store through `Recorder.submit`
(non-blocking; proxy/tracking_setup.py gives it a `BatchRecorder`, so events reach the
store in batches); a store failure never breaks a request. The hot path reads the request
headers in one pass and memoises what repeats (path cleaning, referrer classes,
User-Agent parsing, content kinds).

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
from typing import Any

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
        self._task: asyncio.Task[None] | None = None
        self._last_session_sweep = 0.0

    # --- lifecycle -------------------------------------------------------------------------

    def running(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweeper(), name="tracking-sweeper")

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.flush_pending(force=True)
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
        """Release overdue held events; every 30 s, record ended sessions."""
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
            log.exception("request %s: could not build the request event", flow.metadata.get(metadata.REQUEST_ID))

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
        s = self.settings
        req, resp, md = flow.request, flow.response, flow.metadata
        headers = scan_headers(req.headers, _REQUEST_HEADERS)
        ua_text = headers.get(b"user-agent", "")
        client_ip = md.get(metadata.CLIENT_IP) or (flow.client_conn.peername[0] if flow.client_conn.peername else "")
        site = md.get(metadata.ORIGINAL_HOST) or req.pretty_host
        original_path = md.get(metadata.ORIGINAL_PATH) or req.path
        if resp is not None:
            status = resp.status_code
            ctype = scan_headers(resp.headers, _RESPONSE_HEADERS).get(b"content-type", "")
            resp_bytes = len(resp.raw_content or b"")
        else:
            status, ctype, resp_bytes = 502, "", 0
        key = (req.method, req.scheme, site, original_path, md.get(metadata.LISTENER, "reverse"), ua_text, ctype,
               md.get(metadata.ROUTE) or "", client_ip, headers.get(b"referer", ""))
        static = self._statics.get(key) or self._static(key)
        ua, ref, kind, path_only, own_endpoint = static.ua, static.ref, static.kind, static.path_only, static.own

        if metadata.VISITOR in md and metadata.SESSION in md:  # an endpoint of ours visited already
            state = self.visitors.sessions.get(md[metadata.VISITOR])
            visitor, session = md[metadata.VISITOR], md[metadata.SESSION]
        else:
            visit = self.visitors.visit(site, client_ip, ua_text)
            visitor, session, state = visit.visitor, visit.session, visit.state
            md[metadata.VISITOR], md[metadata.SESSION] = visitor, session
        # the session's first recorded flow announces it, whoever's visit() started it
        new_session = state is not None and not state.announced and state.session == session
        if new_session:
            state.announced = True

        now = time.time()
        started = req.timestamp_start or now
        end = (resp.timestamp_end if resp is not None and resp.timestamp_end else None) or now
        upstream_ms = 0.0
        cache_status = md.get(metadata.CACHE_STATUS)
        blocked_by = md.get(metadata.BLOCKED_BY)
        if resp is not None and not blocked_by and resp.timestamp_start and req.timestamp_end \
                and cache_status not in ("hit", "stale"):
            upstream_ms = max(0.0, (resp.timestamp_start - req.timestamp_end) * 1000)

        attrs = static.attrs.copy()
        attrs["status"] = status
        attrs["req_bytes"] = len(req.raw_content or b"")
        attrs["resp_bytes"] = resp_bytes
        attrs["duration_ms"] = round(max(0.0, end - started) * 1000, 2)
        attrs["upstream_ms"] = round(upstream_ms, 2)
        attrs["session"] = session
        attrs["request_id"] = md.get(metadata.REQUEST_ID, "")
        if cache_status:
            attrs["cache"] = cache_status
        if blocked_by:
            attrs["blocked_by"] = blocked_by
        if flow.error is not None:
            attrs["error"] = str(flow.error.msg)[:200]
        if md.get(metadata.USER):
            user = str(md[metadata.USER])
            attrs["user"] = pseudonym(s.secret, "user", user) if s.pseudonymise_users else user
            groups = md.get(metadata.GROUPS) or ()
            if groups and not s.pseudonymise_users:
                attrs["groups"] = [str(g) for g in groups][:50]
        attribution = self._attribution(headers.get(b"cookie", ""), state)
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

        is_document = kind == "html" and req.method in ("GET", "HEAD") and not own_endpoint
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
        attrs["visitor" if state.browser_seen or self.settings.count_bots_as_visitors else "bot_visitor"] = state.visitor
        if state.campaign_last:
            attrs["campaign"] = state.campaign_last
        return {"type": "session.end", "time": state.last_seen, "attrs": attrs}

    def pending_count(self) -> int:
        return sum(len(p.events) for p in self.pending.values())

