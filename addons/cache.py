"""The shared HTTP cache (RFC 9111, 5861 stale-*, 9211 Cache-Status, 9213 targeted fields).

Hooks:
- `Cache.request` (after the router): answers from the store (hit, 304 to a client's
  conditional request, HEAD from a stored GET, a byte range from a complete body, stale
  with a background refresh, stale-if-error), revalidates stale entries upstream itself
  with If-None-Match/If-Modified-Since, collapses concurrent misses for the same URL into
  one upstream request, handles `PURGE` from configured networks.
- `Cache.responseheaders`: streams bodies over `max_object_size` (never buffered, never stored).
- `Cache.error`: releases collapsed requests waiting on a failed one.
- `CacheStoreStage.response` (`Cache.store_stage`, placed after moderation): stores cacheable
  responses, invalidates on successful unsafe methods, sets `Cache-Status` and metadata.
Metadata read: LISTENER, ROUTE, ORIGINAL_HOST, ORIGINAL_PATH, CLIENT_IP, DO_NOT_CACHE, USER
(a response made for a user Portico signed in is never stored for others).
Written: CACHE_STATUS (hit, miss, stale, revalidated, bypass, expired, updating), CACHE_BYTES.

Every decision is a pure function in `addons/cache_policy.py`; storage is `addons/cache_store.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client as httpclient
import ipaddress
import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from addons import cache_policy as P
from addons import metadata
from addons.cache_store import CacheStore, Entry

log = logging.getLogger("portico.cache")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CONDITIONALS = ("if-none-match", "if-modified-since")
_PRECONDITIONS = ("if-match", "if-unmodified-since")
_HASH_IN_THREAD = 1 << 20


@dataclass(frozen=True)
class RouteCacheSettings:
    """Per-route switches (a route's `cache:` mapping over the global defaults)."""

    enabled: bool = True
    default_ttl: float | None = None
    ignore_query_params: tuple[str, ...] = ()
    sort_query: bool = False
    store_set_cookie: bool = False


@dataclass(frozen=True)
class CacheSettings:
    default: RouteCacheSettings = RouteCacheSettings()
    routes: Mapping[str, RouteCacheSettings] = field(default_factory=dict)  # by route label
    max_object_size: int = 8 << 20
    heuristic_max: float = 86400.0
    stale_while_revalidate_max: float = 86400.0
    stale_if_error_max: float = 86400.0
    lock_timeout: float = 5.0
    fetch_timeout: float = 10.0
    purge_networks: tuple[Network, ...] = ()
    private_cookies: tuple[str, ...] = ("portico_session",)
    flush_interval: float = 2.0
    # host, port -> addresses, over the encrypted resolver (the `dns:` section): the cache's own
    # upstream fetches resolve names the way the engine's connections do, never by the
    # system's plaintext DNS. None: no `dns:` section, the system resolver as everywhere else.
    resolve: Callable[[str, int], Awaitable[list[str]]] | None = None


@dataclass
class _State:
    """What the cache knows about one flow between its hooks."""

    url: str
    route: RouteCacheSettings
    request_time: float
    req_control: dict[str, str | None]
    authenticated: bool
    outcome: str = "miss"
    fwd: str | None = "miss"
    detail: str | None = None
    served: bool = False
    leader: bool = False
    invalidate: bool = False
    may_store: bool = True
    stale: Entry | None = None  # a stored response kept for stale-if-error
    client_conditionals: dict[str, str] = field(default_factory=dict)
    collapsed: bool = False


@dataclass
class _Updated:
    """A revalidation that left a usable stored response (after a 304 or a new 200)."""

    entry: Entry
    status: int


@dataclass
class _Fetched:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


def fields_of(headers: http.Headers) -> P.Fields:
    """mitmproxy headers -> Fields of latin-1 strings (lossless, msgpack-safe)."""
    return P.Fields((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers.fields)


def to_headers(pairs: Sequence[tuple[str, str]]) -> http.Headers:
    return http.Headers([(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs])


class _PinnedHTTPSConnection(httpclient.HTTPSConnection):
    """HTTPS to a resolved address, with SNI and the certificate check on the name."""

    def __init__(self, host: str, port: int, address: str, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _fetch_blocking(scheme: str, host: str, port: int, path: str, headers: Sequence[tuple[str, str]],
                    timeout: float, address: str | None = None) -> _Fetched:
    """One GET to the upstream (run in a thread): revalidation and background refresh.

    With `address` (resolved over encrypted DNS) the connection goes there and nothing is
    looked up here; TLS still verifies the certificate for `host`.
    """
    if scheme == "https":
        conn: httpclient.HTTPConnection = (
            _PinnedHTTPSConnection(host, port, address, timeout=timeout, context=ssl.create_default_context())
            if address else httpclient.HTTPSConnection(host, port, timeout=timeout,
                                                       context=ssl.create_default_context()))
    else:
        conn = httpclient.HTTPConnection(address or host, port, timeout=timeout)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v.encode("latin-1"))
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        pairs = [(k, v.encode("iso-8859-1", "replace").decode("latin-1")) for k, v in resp.getheaders()]
        return _Fetched(resp.status, resp.reason or "", pairs, body)
    finally:
        conn.close()


class CacheStoreStage:
    """The storing half of the cache, placed after moderation so DO_NOT_CACHE is known."""

    def __init__(self, cache: "Cache") -> None:
        self.cache = cache

    async def response(self, flow: http.HTTPFlow) -> None:
        await self.cache.finish(flow)


class Cache:
    """Looks up, revalidates and serves cached responses (see the module docstring)."""

    def __init__(self, settings: CacheSettings, store: CacheStore, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self._clock = clock
        store.clock = clock
        store.url_normalizer = self.normalize_purge_url
        self.store_stage = CacheStoreStage(self)
        self._flows: dict[str, _State] = {}
        self._leaders: dict[str, asyncio.Future[Entry | None]] = {}
        self._refreshing: dict[str, asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.upstream_fetches = 0  # background/validation requests made by the cache itself

    # --- clock (tests inject one) ---------------------------------------------------------

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @clock.setter
    def clock(self, value: Callable[[], float]) -> None:
        self._clock = value
        self.store.clock = value

    # --- lifecycle --------------------------------------------------------------------------

    def running(self) -> None:
        self._spawn(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                self.store.flush(sync=False)
                await asyncio.to_thread(self.store.sync)
            except Exception as e:  # noqa: BLE001 - keep flushing; the store logs details
                log.warning("cache: periodic flush failed: %s", e)

    async def done(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await asyncio.to_thread(self.store.close)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- keys ---------------------------------------------------------------------------------

    def route_settings(self, label: str | None) -> RouteCacheSettings:
        return self.settings.routes.get(label or "", self.settings.default)

    def normalize_purge_url(self, url: str) -> str:
        """Purge URLs use the global key normalisation (routes can't be told from a bare URL
        without the router); ignore lists set per route should also be set globally."""
        d = self.settings.default
        return P.normalize_absolute_url(url, d.ignore_query_params, d.sort_query)

    def _authenticated(self, req: P.Fields) -> bool:
        if req.get_all("authorization"):
            return True
        names = set(self.settings.private_cookies)
        for value in req.get_all("cookie"):
            for part in value.split(";"):
                if part.split("=", 1)[0].strip() in names:
                    return True
        return False

    def _select(self, url: str, req: P.Fields) -> tuple[Entry | None, str]:
        """§4.1: the newest stored variant whose Vary-named fields match the request."""
        variants = self.store.variants(url)
        if not variants:
            return None, "uri-miss"
        for entry in variants:
            if P.vary_values(req, entry.vary) == entry.vary_values:
                return entry, ""
        return None, "vary-miss"

    # --- request --------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if flow.metadata.get(metadata.LISTENER) != "reverse" or metadata.ROUTE not in flow.metadata:
            return
        route = self.route_settings(flow.metadata.get(metadata.ROUTE))
        if not route.enabled:
            return
        try:
            await self._request(flow, route)
        except Exception:  # noqa: BLE001 - a cache failure must not fail the request: go upstream
            log.exception("cache: lookup failed for %s; forwarding", flow.request.path.split("?", 1)[0])
            state = self._flows.get(flow.id)
            if state is not None:
                state.outcome, state.fwd, state.detail, state.may_store = "bypass", "bypass", "error", False
                self._release(state, None)

    async def _request(self, flow: http.HTTPFlow, route: RouteCacheSettings) -> None:
        req = fields_of(flow.request.headers)
        method = flow.request.method.upper()
        scheme = "https" if flow.client_conn.tls_established else "http"
        url = P.cache_url(scheme, flow.metadata.get(metadata.ORIGINAL_HOST, ""),
                          flow.metadata.get(metadata.ORIGINAL_PATH, flow.request.path),
                          route.ignore_query_params, route.sort_query)
        if method == "PURGE":
            self._purge(flow, url)
            return
        # a user Portico identified counts as an authenticated request (§3.5): Auth has taken
        # the Authorization header and session cookie away, and the upstream is told who it is
        state = _State(url, route, self.clock(), P.request_control(req),
                       self._authenticated(req) or bool(flow.metadata.get(metadata.USER)))
        self._flows[flow.id] = state
        if method in P.UNSAFE_METHODS:
            state.outcome, state.fwd, state.invalidate, state.may_store = "bypass", "method", True, False
            return
        if method not in ("GET", "HEAD"):
            state.outcome, state.fwd, state.may_store = "bypass", "method", False
            return
        if any(req.get_all(h) for h in _PRECONDITIONS):
            state.outcome, state.fwd, state.detail = "bypass", "request", "precondition"
            return

        entry, miss = self._select(url, req)
        if entry is None and method == "GET" and not req.get_all("range") \
                and "only-if-cached" not in state.req_control:
            entry = await self._collapse(flow, state, req)
            if entry is None:
                state.fwd = miss
                self._strip_client_conditionals(flow, state)
                return
        if entry is None:
            if "only-if-cached" in state.req_control:
                self._answer_504(flow, state)
                return
            state.fwd = miss
            state.may_store = method == "GET" and not req.get_all("range")
            return
        control = P.response_control(P.Fields(entry.headers))
        if state.authenticated and not ({"public", "s-maxage", "must-revalidate"} & control.directives.keys()):
            state.outcome, state.fwd, state.detail = "bypass", "bypass", "authenticated"
            return
        await self._reuse(flow, state, entry, control, req)

    async def _collapse(self, flow: http.HTTPFlow, state: _State, req: P.Fields) -> Entry | None:
        """Request collapsing: one upstream request per URL at a time; the others wait for it."""
        leader = self._leaders.get(state.url)
        if leader is None:
            self._leaders[state.url] = asyncio.get_running_loop().create_future()
            state.leader = True
            return None
        try:
            await asyncio.wait_for(asyncio.shield(leader), self.settings.lock_timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            return None
        entry, _ = self._select(state.url, req)
        state.collapsed = entry is not None
        return entry

    def _release(self, state: _State, entry: Entry | None) -> None:
        if state.leader:
            state.leader = False
            fut = self._leaders.pop(state.url, None)
            if fut is not None and not fut.done():
                fut.set_result(entry)

    async def _reuse(self, flow: http.HTTPFlow, state: _State, entry: Entry, control: P.ResponseControl,
                     req: P.Fields) -> None:
        now = self.clock()
        stored = P.Fields(entry.headers)
        freshness = P.freshness_lifetime(entry.status, stored, control, heuristic_max=self.settings.heuristic_max,
                                         default_ttl=state.route.default_ttl)
        age = P.current_age(P.Times(entry.request_time, entry.response_time,
                                    P.http_date(stored.get("date")), entry.age), now)
        reuse = P.decide_reuse(freshness, age, control, state.req_control,
                               swr_cap=self.settings.stale_while_revalidate_max,
                               sie_cap=self.settings.stale_if_error_max)
        if reuse.action == "fresh":
            self._serve(flow, state, entry, age, reuse.ttl, "hit")
            return
        if reuse.action == "stale-ok":
            self._serve(flow, state, entry, age, reuse.ttl, "stale", detail="max-stale")
            return
        if reuse.action == "swr":
            self._serve(flow, state, entry, age, reuse.ttl, "updating", detail="stale-while-revalidate")
            self._refresh(flow, state, entry, background=True)
            return
        if "only-if-cached" in state.req_control:
            self._answer_504(flow, state)
            return
        by_request = reuse.ttl > 0
        sie = P.stale_if_error_allows(control, state.req_control, reuse.ttl, self.settings.stale_if_error_max)
        if not P.has_validator(stored) and not sie:
            # nothing to validate with and no stale fallback: an ordinary miss through the engine
            state.outcome, state.fwd = "expired", "request" if by_request else "stale"
            self._strip_client_conditionals(flow, state)
            return
        running = self._refreshing.get(state.url)
        joined = running is not None and not running.done()  # another request's revalidation
        task = self._refresh(flow, state, entry, background=False)
        try:
            result = await task
        except Exception as e:  # noqa: BLE001 - upstream unreachable: stale-if-error or the engine's 502
            log.info("cache: revalidating %s failed: %s", state.url, e)
            result = None
        if isinstance(result, _Updated):  # 304 merged, or a new full response stored
            fresh = result.entry
            age = P.current_age(P.Times(fresh.request_time, fresh.response_time,
                                        P.http_date(P.Fields(fresh.headers).get("date")), fresh.age), self.clock())
            new_control = P.response_control(P.Fields(fresh.headers))
            lifetime = P.freshness_lifetime(fresh.status, P.Fields(fresh.headers), new_control,
                                            heuristic_max=self.settings.heuristic_max,
                                            default_ttl=state.route.default_ttl).lifetime
            state.fwd = "request" if by_request else "stale"
            self._serve(flow, state, fresh, age, lifetime - age, "revalidated" if result.status == 304 else "expired",
                        fwd=state.fwd, fwd_status=result.status, hit=False)
            return
        if isinstance(result, _Fetched):
            if result.status >= 500 and sie:
                self._serve(flow, state, entry, age, reuse.ttl, "stale", detail="stale-if-error",
                            fwd="stale", fwd_status=result.status, hit=True)
                return
            if joined:  # the answer to someone else's request (a user's page, perhaps): not ours to send
                state.outcome, state.fwd, state.may_store = "expired", "stale", True
                self._strip_client_conditionals(flow, state)
                return
            state.outcome, state.fwd, state.served = "expired", "stale", True
            flow.response = self._response(result.status, result.reason, P.stored_fields(result.headers,
                                           drop_set_cookie=False), result.body)
            flow.response.headers["Cache-Status"] = P.cache_status(fwd=state.fwd, fwd_status=result.status,
                                                                   detail="not-stored")
            return
        if sie:
            self._serve(flow, state, entry, age, reuse.ttl, "stale", detail="stale-if-error", fwd="stale", hit=True)
            return
        state.outcome, state.fwd = "expired", "stale"  # let the engine try (and show its 502 page)
        state.may_store = True

    def _refresh(self, flow: http.HTTPFlow, state: _State, entry: Entry, *, background: bool) -> asyncio.Task[Any]:
        """One conditional upstream request per URL at a time (validation or background refresh)."""
        task = self._refreshing.get(state.url)
        if task is not None and not task.done():
            return task
        headers = [(k, v) for k, v in fields_of(flow.request.headers).pairs
                   if k.lower() not in P.HOP_BY_HOP and k.lower() not in
                   (*_CONDITIONALS, "if-range", "range", "content-length")]
        headers += list(P.conditional_headers(P.Fields(entry.headers)).items())
        target = (flow.request.scheme, flow.request.host, flow.request.port, flow.request.path)
        # a response the upstream made for a user Portico identified is never stored: only a
        # 304 may update the shared entry
        task = self._spawn(self._revalidate(target, headers, state.url, state.route, entry,
                                                 flow.request.headers.copy(), authenticated=state.authenticated,
                                                 store_new=not flow.metadata.get(metadata.USER)))
        self._refreshing[state.url] = task
        task.add_done_callback(lambda t, url=state.url: self._refreshing.pop(url, None)
                               if self._refreshing.get(url) is t else None)
        if background:
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
        return task

    async def _revalidate(self, target: tuple[str, str, int, str], headers: list[tuple[str, str]], url: str,
                          route: RouteCacheSettings, entry: Entry, request_headers: http.Headers, *,
                          authenticated: bool = False, store_new: bool = True) -> Any:
        """Fetch upstream with validators; a 304 updates the entry, a cacheable 200 replaces it
        (unless `store_new` is false: the request carried a user's identity)."""
        request_time = self.clock()
        self.upstream_fetches += 1
        address = None
        if self.settings.resolve is not None:
            address = (await self.settings.resolve(target[1], target[2]))[0]   # DnsResolutionError: an OSError
        fetched = await asyncio.to_thread(_fetch_blocking, *target, headers, self.settings.fetch_timeout, address)
        response_time = self.clock()
        got = P.Fields(fetched.headers)
        if fetched.status == 304:
            if P.validator_mismatch(P.Fields(entry.headers), got):
                return _Fetched(502, "Bad Gateway", [], b"")  # can't select: treat as failure
            merged = P.merge_not_modified(entry.headers, P.stored_fields(fetched.headers, drop_set_cookie=True))
            age = P.delta_seconds((got.get("age") or "").split(",")[0].strip()) or 0
            updated = Entry(url, entry.status, entry.reason, merged, entry.vary, entry.vary_values,
                            request_time, response_time, age)
            body = self.store.read_body(entry)
            if body is None or not self.store.put(updated, body, entry.body_hash):
                return None
            return _Updated(updated, 304)
        if fetched.status >= 500 or not store_new:
            return fetched
        req = fields_of(request_headers)
        new = self._entry_from(url, route, fetched.status, fetched.reason, fetched.headers, req,
                               request_time, response_time, authenticated=authenticated or self._authenticated(req),
                               req_control=P.request_control(req))
        if new is not None and await self._put(new, fetched.body):
            return _Updated(new, fetched.status)
        return fetched

    # --- building and serving responses ---------------------------------------------------------

    def _entry_from(self, url: str, route: RouteCacheSettings, status: int, reason: str,
                    headers: list[tuple[str, str]], req: P.Fields, request_time: float, response_time: float,
                    *, authenticated: bool, req_control: dict[str, str | None]) -> Entry | None:
        got = P.Fields(headers)
        control = P.response_control(got)
        why = P.storable("GET", status, req, got, control, req_control, authenticated=authenticated,
                         store_set_cookie=route.store_set_cookie, default_ttl=route.default_ttl)
        if why is not None:
            return None
        vary = P.vary_names(got) or ()
        age = P.delta_seconds((got.get("age") or "").split(",")[0].strip()) or 0
        return Entry(url, status, reason, P.stored_fields(headers, drop_set_cookie=True), vary,
                     P.vary_values(req, vary), request_time, response_time, age)

    async def _put(self, entry: Entry, body: bytes) -> bool:
        if len(body) > self.settings.max_object_size:
            return False
        digest = (await asyncio.to_thread(lambda: hashlib.sha256(body).digest()) if len(body) >= _HASH_IN_THREAD
                  else hashlib.sha256(body).digest())
        return self.store.put(entry, body, digest)

    @staticmethod
    def _response(status: int, reason: str, pairs: Sequence[tuple[str, str]], body: bytes) -> http.Response:
        headers = to_headers([(k, v) for k, v in pairs if k.lower() != "content-length"])
        now = time.time()
        resp = http.Response(b"HTTP/1.1", status, reason.encode("latin-1", "replace"), headers, body, None, now, now)
        if status not in (204, 304) and not 100 <= status < 200:
            resp.headers["Content-Length"] = str(len(body))
        return resp

    def _serve(self, flow: http.HTTPFlow, state: _State, entry: Entry, age: float, ttl: float, outcome: str, *,
               detail: str | None = None, fwd: str | None = None, fwd_status: int | None = None,
               hit: bool = True) -> None:
        """Answer from a stored response: 304, HEAD, a range or the whole body, with Age and Cache-Status."""
        body = self.store.read_body(entry)
        if body is None:  # purged between lookup and read: go upstream
            state.outcome, state.fwd = "miss", "uri-miss"
            return
        self.store.touch(entry)
        req = fields_of(flow.request.headers)
        stored = P.Fields(entry.headers)
        status, reason, pairs, payload = entry.status, entry.reason, list(entry.headers), body
        if state.client_conditionals:
            req = P.Fields(list(req.pairs) + list(state.client_conditionals.items()))
        if entry.status == 200 and P.not_modified_for_client(req, stored):
            status, reason, payload = 304, "Not Modified", b""
            pairs = [(k, v) for k, v in pairs if k.lower() in P.NOT_MODIFIED_FIELDS]
        elif entry.status == 200 and req.get_all("range") and flow.request.method.upper() == "GET" \
                and P.if_range_allows(req, stored):
            rng = P.parse_range(req.get("range"), len(body))
            if rng == "unsatisfiable":
                status, reason, payload = 416, "Range Not Satisfiable", b""
                pairs = [(k, v) for k, v in pairs if k.lower() not in ("content-type", "content-encoding")]
                pairs.append(("Content-Range", f"bytes */{len(body)}"))
            elif isinstance(rng, tuple):
                first, last = rng
                status, reason, payload = 206, "Partial Content", body[first:last + 1]
                pairs.append(("Content-Range", f"bytes {first}-{last}/{len(body)}"))
        pairs.append(("Age", str(int(max(0.0, age)))))
        resp = self._response(status, reason, pairs, payload)
        if flow.request.method.upper() == "HEAD":
            resp.raw_content = b""
            resp.headers["Content-Length"] = str(len(payload))
        resp.headers["Cache-Status"] = P.cache_status(hit=hit, fwd=fwd, fwd_status=fwd_status, ttl=ttl,
                                                      stored=outcome == "expired", collapsed=state.collapsed,
                                                      detail=detail)
        flow.response = resp
        state.served, state.outcome = True, outcome
        state.fwd = fwd
        flow.metadata[metadata.CACHE_STATUS] = outcome
        from_cache = outcome in ("hit", "stale", "updating", "revalidated")
        flow.metadata[metadata.CACHE_BYTES] = len(resp.raw_content or b"") if from_cache else 0

    def _answer_504(self, flow: http.HTTPFlow, state: _State) -> None:
        """§5.2.1.7 only-if-cached with nothing usable stored."""
        flow.response = self._response(504, "Gateway Timeout", [("Content-Type", "text/plain"),
                                                                 ("Cache-Control", "no-store")],
                                       b"only-if-cached: no stored response\n")
        flow.response.headers["Cache-Status"] = P.cache_status(detail="only-if-cached")
        state.served, state.outcome, state.fwd = True, "miss", None

    def _strip_client_conditionals(self, flow: http.HTTPFlow, state: _State) -> None:
        """On a storable miss, fetch the full response (to store it) and answer the client's
        own If-None-Match/If-Modified-Since from it afterwards, as nginx does."""
        if flow.request.method.upper() != "GET" or state.authenticated:
            return
        for name in _CONDITIONALS:
            if name in flow.request.headers:
                state.client_conditionals[name] = flow.request.headers[name]
                del flow.request.headers[name]

    def _purge(self, flow: http.HTTPFlow, url: str) -> None:
        ip_text = flow.metadata.get(metadata.CLIENT_IP, "")
        try:
            ip = ipaddress.ip_address(ip_text)
        except ValueError:
            ip = None
        nets = self.settings.purge_networks
        allowed = ip is not None and any(ip.version == n.version and ip in n for n in nets)
        if not nets:
            status, body = 405, {"error": "PURGE is not enabled (cache.purge_networks is empty)"}
        elif not allowed:
            status, body = 403, {"error": f"PURGE is not allowed from {ip_text}"}
        else:
            status, body = 200, {"purged": self.store.invalidate(url), "url": url}
        flow.metadata[metadata.BLOCKED_BY] = "cache:purge"
        flow.response = self._response(status, "", [("Content-Type", "application/json"),
                                                    ("Cache-Control", "no-store")],
                                       json.dumps(body).encode())
        flow.response.headers["Cache-Status"] = P.cache_status(fwd="bypass", detail="purge")

    # --- response side ----------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._flows.get(flow.id)
        if state is None or state.served or flow.response is None:
            return
        flow.response.headers["Cache-Status"] = P.cache_status(fwd=state.fwd, fwd_status=flow.response.status_code,
                                                               detail=state.detail)
        length = flow.response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_object_size:
            flow.response.stream = True
            state.may_store = False
            state.detail = "too-large"
            flow.response.headers["Cache-Status"] = P.cache_status(
                fwd=state.fwd, fwd_status=flow.response.status_code, detail="too-large")
            self._release(state, None)

    def error(self, flow: http.HTTPFlow) -> None:
        state = self._flows.pop(flow.id, None)
        if state is None:
            return
        self._release(state, None)
        self.store.count(state.outcome if state.outcome != "hit" else "miss")
        flow.metadata.setdefault(metadata.CACHE_STATUS, state.outcome)
        flow.metadata.setdefault(metadata.CACHE_BYTES, 0)

    async def finish(self, flow: http.HTTPFlow) -> None:
        """The store stage: store, invalidate, label the response (runs after moderation)."""
        state = self._flows.pop(flow.id, None)
        resp = flow.response
        if resp is None:
            return
        if state is None:
            if "cache-status" not in resp.headers:
                resp.headers["Cache-Status"] = P.cache_status(fwd="bypass", detail="not-cacheable-route")
            return
        try:
            await self._finish(flow, state, resp)
        except Exception:  # noqa: BLE001 - never fail a response because storing it failed
            log.exception("cache: storing %s failed", state.url)
        finally:
            self._release(state, None)
            flow.metadata[metadata.CACHE_STATUS] = state.outcome
            flow.metadata.setdefault(metadata.CACHE_BYTES, 0)
            self.store.count(state.outcome, flow.metadata.get(metadata.CACHE_BYTES, 0) if state.served else 0)

    async def _finish(self, flow: http.HTTPFlow, state: _State, resp: http.Response) -> None:
        if state.served:
            if flow.metadata.get(metadata.DO_NOT_CACHE):
                self.store.invalidate(state.url)  # moderation flagged what we had stored
            return
        status = resp.status_code
        if state.invalidate:
            if 200 <= status < 400:
                self._invalidate(flow, state, resp)
            resp.headers["Cache-Status"] = P.cache_status(fwd="method", fwd_status=status)
            return
        stored = False
        detail = state.detail
        if not state.may_store or resp.stream:
            detail = detail or ("too-large" if resp.stream else None)
        elif flow.metadata.get(metadata.DO_NOT_CACHE) or flow.metadata.get(metadata.USER):
            detail = "do-not-cache"  # flagged content, or a page made for a signed-in user
        else:
            pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.headers.fields
                     if k.lower() != b"cache-status"]
            req = fields_of(flow.request.headers)
            why = P.storable(flow.request.method.upper(), status, req, P.Fields(pairs), P.response_control(
                P.Fields(pairs)), state.req_control, authenticated=state.authenticated,
                store_set_cookie=state.route.store_set_cookie, default_ttl=state.route.default_ttl)
            body = resp.raw_content or b""
            if why is None and len(body) > self.settings.max_object_size:
                why = "too-large"
            if why is None:
                entry = self._entry_from(state.url, state.route, status, resp.reason, pairs, req,
                                         state.request_time, self.clock(), authenticated=state.authenticated,
                                         req_control=state.req_control)
                if entry is not None and await self._put(entry, body):
                    stored = True
                    self._release(state, entry)
            detail = detail or why
        ttl = None
        if stored:
            got = fields_of(resp.headers)
            ttl = P.freshness_lifetime(status, got, P.response_control(got), heuristic_max=self.settings.heuristic_max,
                                       default_ttl=state.route.default_ttl).lifetime
        resp.headers["Cache-Status"] = P.cache_status(fwd=state.fwd, fwd_status=status, stored=stored, ttl=ttl,
                                                      detail=detail)
        if "portico-cache-control" in resp.headers:
            del resp.headers["portico-cache-control"]  # meant for Portico alone
        if state.client_conditionals and status == 200 and \
                P.not_modified_for_client(P.Fields(list(state.client_conditionals.items())), fields_of(resp.headers)):
            keep = [(k, v) for k, v in resp.headers.fields
                    if k.decode("latin-1").lower() in (*P.NOT_MODIFIED_FIELDS, "cache-status", "x-request-id")]
            flow.response = http.Response(b"HTTP/1.1", 304, b"Not Modified", http.Headers(keep), b"", None,
                                          resp.timestamp_start, resp.timestamp_end)

    def _invalidate(self, flow: http.HTTPFlow, state: _State, resp: http.Response) -> None:
        """§4.4: a successful unsafe request invalidates its URI and same-origin Location/Content-Location."""
        route = state.route
        scheme, host = state.url.split("://", 1)[0], flow.metadata.get(metadata.ORIGINAL_HOST, "")
        targets = {state.url}
        for name in ("location", "content-location"):
            value = resp.headers.get(name)
            if value:
                target = P.same_origin_target(scheme, host, value)
                if target:
                    path = target.split("://", 1)[1]
                    path = path[path.find("/"):] if "/" in path else "/"
                    targets.add(P.cache_url(scheme, host, path, route.ignore_query_params, route.sort_query))
        for url in targets:
            self.store.invalidate(url)
