"""Who is asking: login page, HTTP Basic, session cookie, forward-proxy authentication.

Hooks: `running`, `done`, `http_connect`, `request`, `response`, `error`,
`client_disconnected`.
Metadata read: LISTENER, CLIENT_IP, REQUEST_ID. Written: USER, GROUPS (with USER set, the
cache never shares the response), BLOCKED_BY.

Reverse listener:
- `<prefix>login`: GET shows the login page (addons/static/login.html), POST checks the
  form and sets the signed session cookie, then 303s back to `next` if it is same-origin
  (`auth.sessions.safe_redirect_target`), else to `/`. `<prefix>logout` clears the cookie.
- Any other request: `Authorization: Basic` (API clients) is checked against the
  backend, else the session cookie is verified (and re-signed now and then for the
  inactivity timeout). An expired or forged cookie is cleared and the request continues
  anonymous: addons/acl.py decides whether that is enough.
- A known user's request goes upstream with `Remote-User`, `Remote-Groups`,
  `Remote-Email`, `Remote-Name` (names configurable); the Basic credentials and the
  session cookie are removed first. addons/forwarded.py already removed any client copy
  of those headers.

Forward listener: `Proxy-Authorization: Basic` is required (407 otherwise); the result is
cached per client connection (keyed by an HMAC of the header), and identity headers are
never sent to third-party sites.

Outcomes are never confused: bad credentials (and bans) -> 401/407 with one generic
message that does not tell whether the user exists; directory unavailable, regulation
store broken or any unexpected error -> 503 with the request id, never a pass. Backend
calls run in `asyncio.to_thread`. Events (through addons/recorder.py): `auth.login`
(success/failure + reason), `auth.logout`, and the account events of addons/accounts.py.
A background task refreshes LDAP group memberships and checks that known users still
exist (`user.left`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import html
import logging
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mitmproxy import connection, http
from mitmproxy.proxy.mode_specs import RegularMode

from addons import metadata
from addons.accounts import AccountLedger, AccountMapping
from addons.pages import SERVER_HEADER, error_response, wants_json
from addons.headerscan import IDENTITY_HEADERS, header_key
from addons.recorder import Recorder
from auth.cache import CredentialCache
from auth.errors import (Banned, DirectoryUnavailable, InvalidCredentials, RegulationStoreError,
                         SessionError, SessionExpired)
from auth.identity import Authenticator, Identity
from auth.revocation import RevocationStoreError, RevokedSessions
from auth.sessions import Session, SessionManager, safe_redirect_target
from auth.throttle import Regulator

log = logging.getLogger("portico.auth")

LOGIN_TEMPLATE = string.Template(
    (Path(__file__).parent / "static" / "login.html").read_text(encoding="utf-8"))
GENERIC_FAILURE = ("Sign-in failed: the username or password is wrong, or there were too many "
                   "failed attempts (then wait a few minutes).")
_MAX_FORM_BYTES = 16 * 1024
_LOGIN_CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
              "frame-ancestors 'none'; base-uri 'none'")


@dataclass(frozen=True)
class AuthSettings:
    """How the Auth addon behaves; built by proxy/auth_setup.py from the `auth:` section."""

    reserved_prefix: str = "/_portico/"
    cookie_name: str = "portico_session"
    header_user: str = "Remote-User"
    header_groups: str = "Remote-Groups"
    header_email: str = "Remote-Email"
    header_name: str = "Remote-Name"
    realm: str = "Portico"
    basic: bool = True  # accept `Authorization: Basic` on the reverse listener
    forward_auth: bool = True  # require `Proxy-Authorization` on the forward listener
    group_refresh_interval: float = 150.0  # seconds; 0: off (LDAP backend only)
    directory_check_interval: float = 3600.0  # seconds between `user.left` checks; 0: off
    login_event_interval: float = 300.0  # Basic/proxy: one auth.login per user per interval
    credential_cache_ttl: float = 60.0  # file backend: successful Basic logins remembered (HMAC keyed)


def parse_basic(value: str) -> tuple[str, str] | None:
    """(user, password) from a `Basic <base64>` header value, or None if malformed."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _header_value(value: str) -> str:
    """A directory value made safe for an HTTP header (no CR/LF/control characters)."""
    return "".join(c if c.isprintable() else " " for c in value)[:1024]


def _origin(flow: http.HTTPFlow) -> tuple[str, bool]:
    """The origin the client used (`https://host[:port]`) and whether it is https."""
    proto = flow.request.headers.get("x-forwarded-proto", "")
    secure = proto == "https" if proto else flow.client_conn.tls_established
    host = flow.request.host_header or flow.request.pretty_host
    return f"{'https' if secure else 'http'}://{host}", secure


def _cross_site(req: http.Request, origin: str) -> str | None:
    """Why this request looks sent by another site (None: ours, or no way to tell).

    `Origin: null` counts as another site (a sandboxed page, or a POST another site
    redirected here); without Origin, `Sec-Fetch-Site: cross-site` or a Referer from
    elsewhere do. A client sending none of them (curl, an old browser) is let through.
    """
    claimed = req.headers.get("origin")
    if claimed is not None:
        if claimed == "null" or claimed.rstrip("/").lower() != origin.lower():
            return f"Origin {claimed[:100]!r}"
        return None
    if req.headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "Sec-Fetch-Site: cross-site"
    referer = req.headers.get("referer")
    if referer:
        try:
            parts = urlsplit(referer)
            ref_origin = f"{parts.scheme}://{parts.netloc}".lower()
        except ValueError:
            ref_origin = ""
        if ref_origin != origin.lower():
            return f"Referer from {ref_origin or 'an unreadable address'}"
    return None


def _without_names(fields: tuple[tuple[bytes, bytes], ...],
                   names: frozenset[bytes]) -> tuple[tuple[bytes, bytes], ...]:
    """The header fields but those named in `names` (lower case, `-`), whatever their case or
    `_` spelling (CGI/WSGI servers read `Remote_User` as `Remote-User`)."""
    return tuple(f for f in fields if header_key(f[0]) not in names)


def _client_ip(flow: http.HTTPFlow) -> str | None:
    ip = flow.metadata.get(metadata.CLIENT_IP)
    if ip is None and flow.client_conn.peername:
        ip = flow.client_conn.peername[0]
    return ip


def _is_forward(flow: http.HTTPFlow) -> bool:
    return isinstance(flow.client_conn.proxy_mode, RegularMode)


class Auth:
    """Authenticates requests; see the module docstring.

    Args:
        settings: names, prefix and intervals.
        backend: `auth.ldap.LdapDirectory` or `auth.users.UsersFile` (blocking; run in threads).
        sessions: signs and verifies the session cookie.
        regulator: brute-force regulation (None: off).
        recorder: where `auth.*` and `user.*` events go (may wrap no store).
        mapping / ledger: groups -> org/project/role and the "seen" state (None: no account events).
        clock: wall-clock seconds.
    """

    def __init__(self, settings: AuthSettings, backend: Authenticator, sessions: SessionManager,
                 regulator: Regulator | None, recorder: Recorder, mapping: AccountMapping | None = None,
                 ledger: AccountLedger | None = None, clock: Callable[[], float] = time.time,
                 revoked: RevokedSessions | None = None) -> None:
        self.settings = settings
        self.revoked = revoked   # logged-out session ids (None: logout only clears the cookie)
        self.backend = backend
        self.sessions = sessions
        self.regulator = regulator
        self.recorder = recorder
        self.mapping = mapping if mapping is not None and mapping.enabled else None
        self.ledger = ledger if self.mapping is not None else None
        self._clock = clock
        self._conns: dict[str, tuple[bytes, Identity]] = {}  # forward: client conn id -> identity
        self._conn_key = secrets.token_bytes(32)
        self._cookies: dict[str, str] = {}  # flow id -> Set-Cookie value for the response
        self._recent: dict[str, float] = {}  # username -> last fresh login (Basic/proxy)
        self._gone: set[str] = set()  # users the directory no longer knows: sessions refused
        self._task: asyncio.Task[None] | None = None
        self._cookie_prefix = settings.cookie_name.encode() + b"="
        self._header_names = frozenset(header_key(n.encode()) for n in (
            settings.header_user, settings.header_groups, settings.header_email, settings.header_name))
        # the configured names Forwarded does not already strip from every request
        self._unusual_header_names = self._header_names - {h.encode() for h in IDENTITY_HEADERS}
        self._header_pairs: dict[Identity, tuple[tuple[bytes, bytes], ...]] = {}
        self._verified: dict[str, Session] = {}  # token -> verified session (signature checked)
        # backends without their own credential cache (users.yaml: scrypt costs ~0.1 s) get
        # one here, so API clients sending Basic on every request don't pay it every time
        self._credentials = (None if hasattr(backend, "credentials")
                             else CredentialCache(settings.credential_cache_ttl))
        prefix = settings.reserved_prefix
        self.login_path = prefix + "login"
        self.logout_path = prefix + "logout"

    # --- lifecycle ----------------------------------------------------------------------

    def running(self) -> None:
        if self._task is None and (self._refresh_interval() or self._check_interval()):
            self._task = asyncio.get_running_loop().create_task(self._maintain(), name="auth-maintenance")

    async def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
            self._task = None
        for closable in (self.backend, self.regulator, self.ledger, self.revoked):
            close = getattr(closable, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as e:  # noqa: BLE001 - shutting down
                    log.warning("closing %s failed: %s", type(closable).__name__, e)

    def _refresh_interval(self) -> float:
        return self.settings.group_refresh_interval if hasattr(self.backend, "refresh_groups") else 0.0

    def _check_interval(self) -> float:
        return self.settings.directory_check_interval if self.ledger is not None else 0.0

    async def _maintain(self) -> None:
        """Refresh group caches and look for users who left, until cancelled."""
        refresh, check = self._refresh_interval(), self._check_interval()
        next_refresh = time.monotonic() + refresh
        next_check = time.monotonic() + check
        while True:
            await asyncio.sleep(max(0.05, min(next_refresh if refresh else float("inf"),
                                              next_check if check else float("inf")) - time.monotonic()))
            now = time.monotonic()
            try:
                if refresh and now >= next_refresh:
                    next_refresh = now + refresh
                    report = await asyncio.to_thread(self.backend.refresh_groups)  # type: ignore[attr-defined]
                    self._gone.update(report.gone)
                    for name in report.gone:
                        await self._user_gone(name)
                if check and now >= next_check:
                    next_check = now + check
                    await self.check_directory()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop must survive a bad round
                log.warning("auth maintenance round failed: %s: %s", type(e).__name__, e)

    async def check_directory(self) -> list[str]:
        """Look up every user the ledger knows; emit `user.left` for those gone. Returns them."""
        if self.ledger is None:
            return []
        gone = []
        for name in await asyncio.to_thread(self.ledger.usernames):
            try:
                current = await asyncio.to_thread(self.backend.lookup, name)
            except DirectoryUnavailable as e:
                log.warning("directory check stopped: %s", e)
                break
            if current is None:
                gone.append(name)
                await self._user_gone(name)
            else:
                await self._observe(current)
        return gone

    async def _user_gone(self, name: str) -> None:
        self._gone.add(name)
        self._recent.pop(name, None)
        if self.ledger is not None:
            self.recorder.submit(await asyncio.to_thread(self.ledger.forget, name, self._clock()))

    async def _observe(self, identity: Identity) -> None:
        if self.ledger is None or self.mapping is None:
            return
        memberships = self.mapping.memberships(identity.groups)
        self.recorder.submit(await asyncio.to_thread(self.ledger.observe, identity.username,
                                                     memberships, self._clock()))

    # --- hooks --------------------------------------------------------------------------

    def client_disconnected(self, client: connection.Client) -> None:
        self._conns.pop(client.id, None)

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not _is_forward(flow) or not self.settings.forward_auth:
            return
        await self._guarded(flow, self._proxy_auth)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if _is_forward(flow):
            if self.settings.forward_auth:
                await self._guarded(flow, self._proxy_auth)
            return
        await self._guarded(flow, self._reverse)

    def response(self, flow: http.HTTPFlow) -> None:
        cookie = self._cookies.pop(flow.id, None)
        if cookie is not None and flow.response is not None:
            flow.response.headers.add("Set-Cookie", cookie)

    def error(self, flow: http.HTTPFlow) -> None:
        self._cookies.pop(flow.id, None)

    async def _guarded(self, flow: http.HTTPFlow, step: Callable[[http.HTTPFlow], Any]) -> None:
        """Run `step`; any unexpected error answers 503 (a crashing hook would let it through)."""
        try:
            await step(flow)
        except Exception:  # noqa: BLE001 - fail closed
            rid = flow.metadata.get(metadata.REQUEST_ID)
            log.exception("auth failed unexpectedly for request %s; answering 503", rid)
            self._answer(flow, error_response(
                503, "Authentication unavailable",
                "The gateway could not check who you are, so it did not let the request through. "
                "Try again shortly; quote the request id to an operator if it persists.",
                rid, json_body=wants_json(flow.request)), "auth:error")

    # --- reverse listener ---------------------------------------------------------------

    async def _reverse(self, flow: http.HTTPFlow) -> None:
        path = flow.request.path.split("?", 1)[0]
        if path == self.login_path:
            await self._login(flow)
            return
        if path == self.logout_path:
            self._logout(flow)
            return
        identity: Identity | None = None
        token = self._take_session_cookie(flow)
        header = flow.request.headers.get("authorization", "")
        if self.settings.basic and header[:6].lower() == "basic ":
            creds = parse_basic(header)
            if creds is None:
                self._fail(flow, "basic", "", "malformed_header")
                return
            identity = await self._authenticate(flow, creds[0], creds[1], "basic")
            if identity is None:
                return
            del flow.request.headers["authorization"]
        elif token:
            identity = self._from_cookie(flow, token)
        if identity is not None:
            self._identify(flow, identity, upstream_headers=True)
        else:
            self._strip_identity_headers(flow)

    def _strip_identity_headers(self, flow: http.HTTPFlow) -> None:
        """Drop client-sent copies of the identity headers Portico sets (their configured names,
        which Forwarded's fixed list may not know; `_` spellings too): an anonymous request
        must not reach the upstream claiming to be someone."""
        if not self._unusual_header_names:
            return
        fields = flow.request.headers.fields
        kept = _without_names(fields, self._unusual_header_names)
        if len(kept) != len(fields):
            flow.request.headers.fields = kept
            log.info("request %s: removed client-supplied identity headers", flow.metadata.get(metadata.REQUEST_ID))

    def _verify(self, token: str) -> Session:
        """`SessionManager.verify` with a small cache of verified tokens: the signature of a
        token never changes, so a hit only re-checks the two expiry times (same rules)."""
        now = self._clock()
        hit = self._verified.get(token)
        if hit is not None and now < hit.expires_at and \
                now < hit.last_seen + self.sessions.settings.inactivity_timeout:
            return hit
        session = self.sessions.verify(token, now=now)
        if len(self._verified) >= 10_000:
            self._verified.clear()
        self._verified[token] = session
        return session

    def _from_cookie(self, flow: http.HTTPFlow, token: str) -> Identity | None:
        try:
            session = self._verify(token)
        except SessionExpired as e:
            self._verified.pop(token, None)
            log.info("request %s: session expired (%s)", flow.metadata.get(metadata.REQUEST_ID), e.reason)
            self._cookies[flow.id] = self._clear_cookie(flow)
            return None
        except SessionError as e:
            log.warning("request %s from %s: session cookie refused: %s",
                        flow.metadata.get(metadata.REQUEST_ID), _client_ip(flow), e)
            self._cookies[flow.id] = self._clear_cookie(flow)
            return None
        identity = session.identity
        if self.revoked is not None and self.revoked.is_revoked(session.session_id):
            log.info("request %s from %s: session of %r was logged out; refused",
                     flow.metadata.get(metadata.REQUEST_ID), _client_ip(flow), identity.username)
            self._verified.pop(token, None)
            self._cookies[flow.id] = self._clear_cookie(flow)
            return None
        if identity.username in self._gone:
            self._cookies[flow.id] = self._clear_cookie(flow)
            return None
        fresh = self._fresh_groups(identity)
        renewed = self.sessions.touch(session)
        if renewed is not None:
            self._cookies[flow.id] = self._session_cookie(flow, renewed, session.expires_at)
        return fresh

    def _fresh_groups(self, identity: Identity) -> Identity:
        """The session's identity with the groups of a fresh directory cache entry, if any
        (LDAP: refreshed in the background), so group changes apply within the cache TTL."""
        cache = getattr(self.backend, "groups", None)
        get = getattr(cache, "get", None)
        if get is None:
            return identity
        current = get(identity.username)
        if isinstance(current, Identity) and current.groups != identity.groups:
            return current
        return identity

    def _take_session_cookie(self, flow: http.HTTPFlow) -> str | None:
        """The session token, removed from the request's `Cookie` header(s) on the way.

        Works on the raw header fields: this runs on every request, and one pass over a
        few byte strings is several times cheaper than mitmproxy's cookie parsing."""
        fields = flow.request.headers.fields
        name = self._cookie_prefix
        if not any(k.lower() == b"cookie" and name in v for k, v in fields):
            return None
        token: str | None = None
        kept: list[tuple[bytes, bytes]] = []
        for k, v in fields:
            if k.lower() != b"cookie" or name not in v:
                kept.append((k, v))
                continue
            parts = []
            for part in v.split(b";"):
                stripped = part.strip()
                if stripped.startswith(name):
                    token = stripped[len(name):].decode("latin-1") if token is None else token
                elif stripped:
                    parts.append(stripped)
            if parts:
                kept.append((k, b"; ".join(parts)))
        flow.request.headers.fields = tuple(kept)
        return token

    def _identify(self, flow: http.HTTPFlow, identity: Identity, *, upstream_headers: bool) -> None:
        flow.metadata[metadata.USER] = identity.username
        flow.metadata[metadata.GROUPS] = tuple(identity.groups)
        if not upstream_headers:
            return
        pairs = self._header_pairs.get(identity)
        if pairs is None:
            s = self.settings
            values = ((s.header_user, identity.username), (s.header_groups, ",".join(identity.groups)),
                      (s.header_email, identity.email), (s.header_name, identity.display_name))
            pairs = tuple((n.encode(), _header_value(v).encode("utf-8")) for n, v in values if v)
            if len(self._header_pairs) > 10_000:
                self._header_pairs.clear()
            self._header_pairs[identity] = pairs
        # replace any copy of our header names (Forwarded strips the usual ones; names are configurable)
        flow.request.headers.fields = _without_names(flow.request.headers.fields, self._header_names) + pairs

    # --- login and logout ---------------------------------------------------------------

    async def _login(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        origin, _ = _origin(flow)
        if req.method in ("GET", "HEAD"):
            nxt = safe_redirect_target(req.query.get("next"), origin)
            self._answer(flow, self._page(flow, 200, nxt), "auth:login-page")
            return
        if req.method != "POST":
            self._answer(flow, error_response(405, "Method not allowed", "Use GET or POST.",
                                              flow.metadata.get(metadata.REQUEST_ID)), "auth:login")
            return
        if self._refused_cross_site(flow, origin, "login", "This login form was posted from another site; "
                                    "open the login page here and try again."):
            return
        if len(req.raw_content or b"") > _MAX_FORM_BYTES:
            self._answer(flow, error_response(413, "Login form too large", "The form is too large.",
                                              flow.metadata.get(metadata.REQUEST_ID)), "auth:login")
            return
        form = parse_qs((req.raw_content or b"").decode("utf-8", "replace"), keep_blank_values=True)
        username = (form.get("username") or [""])[0]
        password = (form.get("password") or [""])[0]
        nxt = safe_redirect_target((form.get("next") or [""])[0], origin)
        identity = await self._authenticate(flow, username, password, "form", nxt)
        if identity is None:
            return
        try:
            token = self.sessions.issue(identity)
        except SessionError as e:
            log.error("login of %r: cannot issue a session: %s", identity.username, e)
            self._answer(flow, error_response(
                503, "Cannot start a session", str(e), flow.metadata.get(metadata.REQUEST_ID)), "auth:login")
            return
        self._identify(flow, identity, upstream_headers=False)
        response = http.Response.make(303, b"", {"Location": nxt, "Cache-Control": "no-store",
                                                 "Server": SERVER_HEADER})
        self._answer(flow, response, "auth:login")
        self._cookies[flow.id] = self._session_cookie(flow, token,
                                                      self._clock() + self.sessions.settings.absolute_lifetime)

    def _refused_cross_site(self, flow: http.HTTPFlow, origin: str, what: str, advice: str) -> bool:
        """Answer 403 (and log why) when another site sent this login or logout."""
        elsewhere = _cross_site(flow.request, origin)
        if elsewhere is None:
            return False
        rid = flow.metadata.get(metadata.REQUEST_ID)
        log.info("request %s: %s refused: sent from another site (%s)", rid, what, elsewhere)
        self._answer(flow, error_response(403, f"Cross-site {what} refused", advice, rid), f"auth:{what}-csrf")
        return True

    def _logout(self, flow: http.HTTPFlow) -> None:
        # another site must not be able to end a user's session
        if self._refused_cross_site(flow, _origin(flow)[0], "logout",
                                    "This logout came from another site; use the logout link on this site."):
            return
        token = flow.request.cookies.get(self.settings.cookie_name)
        user = None
        if token:
            try:
                session = self.sessions.verify(token)
            except SessionError:
                session = None
            if session is not None:
                user = session.identity.username
                self._verified.pop(token, None)
                if self.revoked is not None:
                    try:   # a copy of the token must stop working too, not only this cookie
                        self.revoked.revoke(session.session_id, session.expires_at)
                    except RevocationStoreError as e:
                        log.error("logout of %r: the session could not be revoked, a copy of its token "
                                  "stays valid until it expires: %s", user, e)
        if user is not None:
            self.recorder.submit([{"type": "auth.logout", "time": self._clock(), "attrs": {"user": user}}])
            log.info("logout of %r", user)
        response = http.Response.make(303, b"", {"Location": self.login_path, "Cache-Control": "no-store",
                                                 "Server": SERVER_HEADER})
        self._answer(flow, response, "auth:logout")
        self._cookies[flow.id] = self._clear_cookie(flow)

    def _page(self, flow: http.HTTPFlow, status: int, nxt: str, *, message: str = "",
              error: bool = False, username: str = "") -> http.Response:
        rid = flow.metadata.get(metadata.REQUEST_ID)
        block = (f'<p class="{"error" if error else "info"}" role="alert">{html.escape(message)}</p>'
                 if message else "")
        body = LOGIN_TEMPLATE.safe_substitute(
            realm=html.escape(self.settings.realm), message=block, action=html.escape(self.login_path),
            next=html.escape(nxt), username=html.escape(username[:256]),
            request_id=f" · request {html.escape(rid)}" if rid else "")
        headers = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
                   "Content-Security-Policy": _LOGIN_CSP, "X-Frame-Options": "DENY",
                   "Referrer-Policy": "same-origin", "Server": SERVER_HEADER}
        if rid:
            headers["X-Request-Id"] = rid
        return http.Response.make(status, body.encode("utf-8"), headers)

    # --- credentials --------------------------------------------------------------------

    def _check_and_authenticate(self, username: str, password: str, ip: str | None) -> Identity:
        """Blocking: regulation check, then the backend (one thread hop for both)."""
        if self.regulator is not None:
            self.regulator.check(username, ip)
        if self._credentials is None:
            return self.backend.authenticate(username, password)
        identity = self._credentials.get(username, password)
        if identity is None:
            identity = self.backend.authenticate(username, password)
            self._credentials.put(username, password, identity)
        return identity

    async def _authenticate(self, flow: http.HTTPFlow, username: str, password: str, via: str,
                            nxt: str = "/") -> Identity | None:
        """The identity, or None after answering 401/407/503 (and recording why)."""
        ip = _client_ip(flow)
        rid = flow.metadata.get(metadata.REQUEST_ID)
        try:
            identity = await asyncio.to_thread(self._check_and_authenticate, username, password, ip)
        except Banned as e:
            log.warning("login of %r from %s (%s) refused: %s", username[:64], ip, via, e)
            self._fail(flow, via, username, "banned", nxt)
            return None
        except InvalidCredentials as e:
            log.info("login of %r from %s (%s) failed: %s", username[:64], ip, via, e.reason)
            if self.regulator is not None:
                try:
                    bans = await asyncio.to_thread(self.regulator.record_failure, username, ip)
                except RegulationStoreError as store_error:
                    return self._unavailable(flow, via, username, str(store_error))
                for ban in bans:
                    log.warning("regulation: %s banned until %.0f after %d failures",
                                ban.subject, ban.until, ban.failures)
            self._fail(flow, via, username, e.reason, nxt)
            return None
        except (DirectoryUnavailable, RegulationStoreError) as e:
            return self._unavailable(flow, via, username, str(e))
        now = self._clock()
        fresh = via == "form" or now - self._recent.get(identity.username, 0.0) >= self.settings.login_event_interval
        if fresh:
            self._recent[identity.username] = now
            self._gone.discard(identity.username)
            self.recorder.submit([{"type": "auth.login", "time": now, "attrs": {
                "user": identity.username, "outcome": "success", "method": via,
                "source": identity.source}}])
            log.info("login of %r from %s (%s) succeeded; request %s", identity.username, ip, via, rid)
            if self.regulator is not None:
                try:
                    await asyncio.to_thread(self.regulator.record_success, identity.username)
                except RegulationStoreError as e:
                    log.warning("regulation: could not clear failures of %r: %s", identity.username, e)
            await self._observe(identity)
        return identity

    def _unavailable(self, flow: http.HTTPFlow, via: str, username: str, why: str) -> None:
        rid = flow.metadata.get(metadata.REQUEST_ID)
        log.error("login of %r (%s) impossible, directory/regulation unavailable: %s; request %s",
                  username[:64], via, why, rid)
        self._event_failure(username, via, "directory_unavailable")
        self._answer(flow, error_response(
            503, "Sign-in unavailable",
            "The user directory cannot be reached right now, so nobody can sign in. "
            "Try again in a minute; quote the request id to an operator if it persists.",
            rid, json_body=wants_json(flow.request) or via != "form"), "auth:directory-unavailable")
        return None

    def _event_failure(self, username: str, via: str, reason: str) -> None:
        self.recorder.submit([{"type": "auth.login", "time": self._clock(), "attrs": {
            "user": username[:64], "outcome": "failure", "reason": reason, "method": via}}])

    def _fail(self, flow: http.HTTPFlow, via: str, username: str, reason: str, nxt: str = "/") -> None:
        """Answer a failed login the same way whatever the reason (no user enumeration)."""
        self._event_failure(username, via, reason)
        rid = flow.metadata.get(metadata.REQUEST_ID)
        if via == "form":
            response = self._page(flow, 401, nxt, message=GENERIC_FAILURE, error=True, username=username)
        elif via == "proxy":
            response = error_response(407, "Proxy authentication required",
                                      "Sign in to use this proxy. " + GENERIC_FAILURE, rid)
            response.headers["Proxy-Authenticate"] = self.challenge()
        else:
            response = error_response(401, "Authentication required", GENERIC_FAILURE, rid,
                                      json_body=wants_json(flow.request))
            response.headers["WWW-Authenticate"] = self.challenge()
        self._answer(flow, response, f"auth:{reason}")

    def challenge(self) -> str:
        realm = self.settings.realm.replace("\\", "").replace('"', "")
        return f'Basic realm="{realm}", charset="UTF-8"'

    # --- forward listener ---------------------------------------------------------------

    async def _proxy_auth(self, flow: http.HTTPFlow) -> None:
        header = flow.request.headers.get("proxy-authorization", "")
        digest = hmac.new(self._conn_key, header.encode("utf-8", "surrogateescape"),
                          hashlib.sha256).digest() if header else b""
        cached = self._conns.get(flow.client_conn.id)
        if cached is not None and (not header or hmac.compare_digest(digest, cached[0])):
            identity = cached[1]
        elif not header:
            response = error_response(407, "Proxy authentication required",
                                      "Sign in to use this proxy.", flow.metadata.get(metadata.REQUEST_ID))
            response.headers["Proxy-Authenticate"] = self.challenge()
            self._answer(flow, response, "auth:proxy-required")
            return
        else:
            creds = parse_basic(header)
            if creds is None:
                self._fail(flow, "proxy", "", "malformed_header")
                return
            found = await self._authenticate(flow, creds[0], creds[1], "proxy")
            if found is None:
                self._conns.pop(flow.client_conn.id, None)
                return
            identity = found
            self._conns[flow.client_conn.id] = (digest, identity)
        if "proxy-authorization" in flow.request.headers:
            del flow.request.headers["proxy-authorization"]
        self._identify(flow, identity, upstream_headers=False)

    # --- helpers ------------------------------------------------------------------------

    def _answer(self, flow: http.HTTPFlow, response: http.Response, blocked_by: str) -> None:
        flow.metadata[metadata.BLOCKED_BY] = blocked_by
        rid = flow.metadata.get(metadata.REQUEST_ID)
        if rid and "x-request-id" not in response.headers:
            response.headers["X-Request-Id"] = rid
        flow.response = response

    def _session_cookie(self, flow: http.HTTPFlow, token: str, expires_at: float) -> str:
        _, secure = _origin(flow)
        max_age = max(0, int(expires_at - self._clock()))
        return (f"{self.settings.cookie_name}={token}; Path=/; Max-Age={max_age}; HttpOnly; "
                f"SameSite=Lax" + ("; Secure" if secure else ""))

    def _clear_cookie(self, flow: http.HTTPFlow) -> str:
        _, secure = _origin(flow)
        return (f"{self.settings.cookie_name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
                + ("; Secure" if secure else ""))

