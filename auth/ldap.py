"""Authenticate against OpenLDAP or Active Directory: search-then-bind, groups, caches.

`LdapDirectory(settings).authenticate(username, password)` returns an `Identity` or raises
`InvalidCredentials` (401/407) or `DirectoryUnavailable` (503). The two are never confused:
an outage, a timeout, a refused service account or a TLS failure is always
`DirectoryUnavailable`, so a broken directory never looks like a wrong password and never
lets anyone through.

How a login works:
1. input checks (`auth.identity.check_login_input`): an empty password never reaches a bind;
2. the credential cache (HMAC of user+password, short TTL) may answer at once;
3. with a pooled service-account connection: search `users_base_dn` with the user filter
   (the name RFC 4515-escaped), size limit 2: zero hits -> `unknown_user`, two ->
   `ambiguous_user`; if a disabled filter is set, a base search on the entry refuses
   disabled accounts;
4. bind as the found DN on a separate pooled connection (never the service one);
5. groups: a search with the group filter (AD: the in-chain rule; OpenLDAP: nested groups
   resolved level by level), or the entry's `memberOf`; cached per user with a TTL.

Connections: `pool_size` service connections and as many bind connections, opened lazily
against `urls` in order (a URL that just failed is tried last for 30 s); a connection that
fails mid-operation is dropped and the operation retried once on a fresh one, which is how
the pool reconnects after a directory restart. Every socket has the connect/response
timeouts. Blocking by design: async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.ciDict import CaseInsensitiveDict

from auth import ldapfilters
from auth.cache import Clock, CredentialCache, TtlCache
from auth.errors import AccountDisabled, DirectoryUnavailable, InvalidCredentials
from auth.identity import Identity, check_login_input
from auth.secretfile import read_secret

log = logging.getLogger("portico.auth.ldap")

T = TypeVar("T")

# LDAP result codes we act on (RFC 4511 appendix A)
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4
_NO_SUCH_OBJECT = 32
_INVALID_CREDENTIALS = 49

_FAILED_URL_PENALTY = 30.0  # seconds a failed URL is tried last
_MAX_NESTING = 8  # levels of nested groups followed client-side (OpenLDAP)


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


@dataclass(frozen=True)
class LdapSettings:
    """Where the directory is and how to query it. Fields left `None` take the preset's value.

    See docs/auth.md for every field; `proxy/config.py` builds this from `auth.ldap:`.
    """

    urls: tuple[str, ...]
    base_dn: str
    preset: Literal["openldap", "activedirectory"] = "openldap"
    bind_dn: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    users_base_dn: str | None = None
    groups_base_dn: str | None = None
    user_filter: str | None = None
    username_attribute: str | None = None
    display_name_attribute: str | None = None
    mail_attribute: str | None = None
    group_filter: str | None = None
    group_name_attribute: str | None = None
    group_search_mode: Literal["filter", "memberof"] | None = None
    member_of_attribute: str = "memberOf"
    nested_groups: bool = True
    disabled_filter: str | None = None
    start_tls: bool = False
    ca_file: str | None = None
    validate_certs: bool = True
    allow_plaintext: bool = False
    connect_timeout: float = 5.0
    response_timeout: float = 10.0
    pool_size: int = 4
    auth_cache_ttl: float = 60.0
    auth_cache_size: int = 10_000
    group_cache_ttl: float = 300.0

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            object.__setattr__(self, "urls", (self.urls,))
        object.__setattr__(self, "urls", tuple(self.urls))
        if not self.urls:
            raise ValueError("urls: give at least one URL like 'ldaps://ldap.example.org'")
        for i, url in enumerate(self.urls):
            parts = urlsplit(url)
            if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
                raise ValueError(f"urls[{i}]: expected 'ldap://host[:port]' or "
                                 f"'ldaps://host[:port]', got {url!r}")
            try:
                parts.port
            except ValueError:
                raise ValueError(f"urls[{i}]: bad port in {url!r}") from None
            if parts.scheme == "ldap" and not self.start_tls and not self.allow_plaintext \
                    and not _is_loopback(parts.hostname):
                raise ValueError(f"urls[{i}]: {url!r} would send passwords in clear text; use "
                                 "ldaps://, set start_tls: true, or allow_plaintext: true")
        if self.preset not in ldapfilters.PRESETS:
            raise ValueError(f"preset: expected one of {', '.join(ldapfilters.PRESETS)}, "
                             f"got {self.preset!r}")
        if not self.base_dn:
            raise ValueError("base_dn: required, like 'dc=example,dc=org'")
        if self.bind_dn and not (self.password_file or self.password_env):
            raise ValueError("bind_dn: needs password_file or password_env for the service account")
        if self.user_filter is not None:
            ldapfilters.check_filter_template(self.user_filter, ("username",))
        if self.group_filter is not None:
            ldapfilters.check_filter_template(self.group_filter, ("dn", "username"))
        if self.disabled_filter:
            ldapfilters.check_filter_template(self.disabled_filter, ())
        for name in ("connect_timeout", "response_timeout"):
            _positive(name, getattr(self, name))
        if self.pool_size < 1:
            raise ValueError(f"pool_size: expected at least 1, got {self.pool_size!r}")
        if self.ca_file is not None and not self.validate_certs:
            raise ValueError("ca_file: set but validate_certs is false; remove one of them")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _Resolved:
    """LdapSettings with the preset applied: what the directory actually uses."""

    users_base_dn: str
    groups_base_dn: str
    user_filter: str
    username_attribute: str
    display_name_attribute: str
    mail_attribute: str
    group_filter: str
    group_filter_nested_server_side: bool
    group_name_attribute: str
    group_search_mode: str
    disabled_filter: str
    attributes: tuple[str, ...] = field(default=())


def resolve_settings(s: LdapSettings) -> _Resolved:
    """Apply the preset to unset fields (pure; exposed for tests and `describe`)."""
    p = ldapfilters.PRESETS[s.preset]
    if s.group_filter is not None:
        group_filter, server_side = s.group_filter, False
    elif s.nested_groups and p.nested_group_filter:
        group_filter, server_side = p.nested_group_filter, True
    else:
        group_filter, server_side = p.group_filter, False
    r = _Resolved(
        users_base_dn=s.users_base_dn or s.base_dn,
        groups_base_dn=s.groups_base_dn or s.base_dn,
        user_filter=s.user_filter or p.user_filter,
        username_attribute=s.username_attribute or p.username_attribute,
        display_name_attribute=s.display_name_attribute or p.display_name_attribute,
        mail_attribute=s.mail_attribute or p.mail_attribute,
        group_filter=group_filter,
        group_filter_nested_server_side=server_side,
        group_name_attribute=s.group_name_attribute or p.group_name_attribute,
        group_search_mode=s.group_search_mode or p.group_search_mode,
        disabled_filter=p.disabled_filter if s.disabled_filter is None else s.disabled_filter,
    )
    attrs = [r.username_attribute, r.display_name_attribute, r.mail_attribute]
    if r.group_search_mode == "memberof":
        attrs.append(s.member_of_attribute)
    if s.preset == "activedirectory":
        attrs.append("userAccountControl")
    object.__setattr__(r, "attributes", tuple(dict.fromkeys(attrs)))
    return r


@dataclass(frozen=True)
class RefreshReport:
    """What `LdapDirectory.refresh_groups` did; `gone` feeds `user.left` events."""

    refreshed: int
    changed: tuple[str, ...]
    gone: tuple[str, ...]
    failed: int


class _ServiceBindRefused(Exception):
    pass


class _NotLdap(Exception):
    """The peer answered with bytes ldap3 cannot decode: whatever listens there is not LDAP."""


_DECODER_ERRORS = (KeyError, IndexError, ValueError, TypeError)


def _garbled_answer(e: BaseException) -> bool:
    """True if `e` is ldap3 failing to decode what the peer sent.

    ldap3's BER decoder raises bare KeyError, IndexError, ValueError or TypeError on bytes that
    are not LDAP (a URL pointing at another service; in CI once, a connection that reached
    itself and read back its own bind request). Such a server is unusable, like one refusing
    connections, and the next URL must be tried. The same exception types raised by our own
    code are bugs and must not pass for an outage, hence the check of where it was raised.
    """
    if not isinstance(e, _DECODER_ERRORS):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("ldap3.")


def _not_ldap(url: str, e: BaseException) -> _NotLdap:
    return _NotLdap(f"{url} answered with something that is not LDAP "
                    f"({type(e).__name__}: {_describe(e)}); check that the URL names an LDAP port")


class _Pool:
    """Up to `size` open connections; opened lazily against the URLs in order."""

    def __init__(self, directory: LdapDirectory, size: int, service: bool) -> None:
        self._dir = directory
        self._service = service
        self._idle: queue.LifoQueue[ldap3.Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self.size = size

    @contextmanager
    def connection(self) -> Iterator[_Lease]:
        wait = self._dir.settings.connect_timeout + self._dir.settings.response_timeout
        if not self._slots.acquire(timeout=wait):
            raise DirectoryUnavailable(f"all {self.size} LDAP connections stayed busy for {wait:.0f} s")
        lease: _Lease | None = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._dir._open(service=self._service)
            lease = _Lease(conn)
            yield lease
        finally:
            if lease is not None:
                if lease.broken:
                    _close_quietly(lease.conn)
                else:
                    self._idle.put(lease.conn)
            self._slots.release()

    def close(self) -> None:
        while True:
            try:
                _close_quietly(self._idle.get_nowait())
            except queue.Empty:
                return


@dataclass
class _Lease:
    conn: ldap3.Connection
    broken: bool = False


def _close_quietly(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except Exception:  # noqa: BLE001 - closing a dead socket may fail in many ways
        pass


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _first(attrs: Any, name: str) -> str | None:
    value = attrs.get(name) if attrs else None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None or value == "":
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _all(attrs: Any, name: str) -> list[str]:
    value = attrs.get(name) if attrs else None
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value]


@dataclass(frozen=True)
class _Entry:
    dn: str
    attributes: Any  # ldap3's CaseInsensitiveDict: attribute names are case-insensitive
    groups: tuple[str, ...] = ()


class LdapDirectory:
    """An OpenLDAP / Active Directory user backend (implements `auth.identity.Authenticator`).

    Args:
        settings: where and how; see `LdapSettings`.
        clock: monotonic seconds, injectable so cache tests need not sleep.

    Raises:
        AuthConfigError: the service account password cannot be read.
    """

    def __init__(self, settings: LdapSettings, *, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.resolved = resolve_settings(settings)
        self._password: str | None = None
        if settings.bind_dn:
            self._password = read_secret("ldap.password_file/password_env", settings.password_file,
                                         settings.password_env)
        self._clock = clock
        self.credentials = CredentialCache(settings.auth_cache_ttl, settings.auth_cache_size, clock)
        self.groups = TtlCache[Identity](settings.group_cache_ttl, settings.auth_cache_size, clock)
        self._service_pool = _Pool(self, settings.pool_size, service=True)
        self._bind_pool = _Pool(self, settings.pool_size, service=False)
        self._failed_urls: dict[str, float] = {}
        self._failed_lock = threading.Lock()
        validate = ssl.CERT_REQUIRED if settings.validate_certs else ssl.CERT_NONE
        self._tls = ldap3.Tls(validate=validate, ca_certs_file=settings.ca_file)

    # --- public API --------------------------------------------------------------------

    def authenticate(self, username: str, password: str) -> Identity:
        """Check a login; see the module docstring for the steps.

        Raises:
            InvalidCredentials: unknown user, wrong password, ambiguous name, empty password,
                malformed input; `AccountDisabled` for disabled accounts.
            DirectoryUnavailable: no server answered, timeout, TLS or service-account failure.
        """
        check_login_input(username, password)
        cached = self.credentials.get(username, password)
        if cached is not None:
            return self._with_current_groups(cached)
        entry = self._find_user(username)
        self._bind_as(username, entry.dn, password)
        identity = self._identity(entry)
        self.groups.put(identity.username, identity)
        self.credentials.put(username, password, identity)
        return identity

    def lookup(self, username: str) -> Identity | None:
        """The current identity of `username` (service account, no password); None if the
        user no longer exists, is ambiguous or is disabled.

        Raises:
            DirectoryUnavailable: as for `authenticate`.
        """
        try:
            check_login_input(username, "x")
            entry = self._find_user(username)
        except InvalidCredentials:
            return None
        return self._identity(entry)

    def refresh_groups(self, older_than: float | None = None) -> RefreshReport:
        """Fetch again the groups of every cached user fetched more than `older_than` seconds
        ago (default: half the group TTL), so logins keep hitting a fresh cache.

        Call it periodically from the gateway (e.g. every `group_cache_ttl / 2` seconds in
        `asyncio.to_thread`). Users that vanished or were disabled are dropped from both
        caches and listed in `gone`; users whose groups changed are listed in `changed`.
        Never raises for a single user; `failed` counts users that could not be refreshed
        (directory down): their entries age out, and then logins fail closed with 503.
        """
        age = self.settings.group_cache_ttl / 2 if older_than is None else older_than
        refreshed = failed = 0
        changed: list[str] = []
        gone: list[str] = []
        for key in self.groups.older_than(age):
            name = str(key)
            try:
                current = self.lookup(name)
            except DirectoryUnavailable as e:
                failed += 1
                log.warning("group refresh of %r failed: %s", name, e)
                continue
            if current is None:
                self.groups.pop(name)
                self.credentials.forget_user(name)
                gone.append(name)
                continue
            previous = self.groups_cached(name)
            self.groups.put(name, current)
            self.credentials.update_user(current)
            refreshed += 1
            if previous is not None and previous.groups != current.groups:
                changed.append(name)
        return RefreshReport(refreshed, tuple(changed), tuple(gone), failed)

    def groups_cached(self, username: str) -> Identity | None:
        """The cached identity of `username` regardless of age (for refresh comparisons)."""
        return self.groups.peek(username)

    def check(self) -> None:
        """Health check: open and bind a service connection, run a base search.

        Raises:
            DirectoryUnavailable: with every URL's error.
        """
        def probe(conn: ldap3.Connection) -> None:
            conn.search(self.resolved.users_base_dn, "(objectClass=*)", ldap3.BASE,
                        attributes=[], size_limit=1, time_limit=self._time_limit())
            self._expect_success(conn, f"base search of {self.resolved.users_base_dn!r}")

        self._with_connection(self._service_pool, "health check", probe)

    def close(self) -> None:
        """Close pooled connections (new calls reopen them)."""
        self._service_pool.close()
        self._bind_pool.close()

    # --- steps -------------------------------------------------------------------------

    def _with_current_groups(self, identity: Identity) -> Identity:
        fresh = self.groups.get(identity.username)
        if fresh is not None:
            return fresh
        current = self.lookup(identity.username)
        if current is None:
            self.credentials.forget_user(identity.username)
            self.groups.pop(identity.username)
            raise InvalidCredentials(identity.username, "unknown_user", "no longer in the directory")
        self.groups.put(current.username, current)
        self.credentials.update_user(current)
        return current

    def _find_user(self, username: str) -> _Entry:
        r = self.resolved
        search_filter = ldapfilters.fill_filter(r.user_filter, username=username)

        def search(conn: ldap3.Connection) -> _Entry:
            conn.search(r.users_base_dn, search_filter, ldap3.SUBTREE, attributes=list(r.attributes),
                        size_limit=2, time_limit=self._time_limit())
            code = conn.result.get("result")
            entries = [e for e in conn.response or () if e.get("type") == "searchResEntry"]
            if code == _SIZE_LIMIT_EXCEEDED or len(entries) > 1:
                log.warning("user search for %r matched more than one entry under %r; refusing",
                            username, r.users_base_dn)
                raise InvalidCredentials(username, "ambiguous_user", "more than one directory entry")
            if code == _NO_SUCH_OBJECT:
                raise DirectoryUnavailable(f"users_base_dn {r.users_base_dn!r} does not exist on "
                                           f"{self._url_of(conn)}; check ldap.base_dn/users_base_dn")
            self._expect_success(conn, f"user search under {r.users_base_dn!r}")
            if not entries:
                raise InvalidCredentials(username, "unknown_user")
            entry = _Entry(entries[0]["dn"], CaseInsensitiveDict(entries[0].get("attributes") or {}))
            self._check_enabled(conn, username, entry)
            groups = self._fetch_groups(conn, username, entry)
            return _Entry(entry.dn, entry.attributes, tuple(groups))

        return self._with_connection(self._service_pool, "user search", search)

    def _check_enabled(self, conn: ldap3.Connection, username: str, entry: _Entry) -> None:
        if self.settings.preset == "activedirectory" and ldapfilters.uac_disabled(
                entry.attributes.get("userAccountControl")):
            raise AccountDisabled(username, "userAccountControl ACCOUNTDISABLE")
        disabled = self.resolved.disabled_filter
        if not disabled:
            return
        conn.search(entry.dn, disabled, ldap3.BASE, attributes=[], size_limit=1,
                    time_limit=self._time_limit())
        self._expect_success(conn, f"disabled check of {entry.dn!r}")
        if any(e.get("type") == "searchResEntry" for e in conn.response or ()):
            raise AccountDisabled(username, f"matches disabled_filter {disabled}")

    def _fetch_groups(self, conn: ldap3.Connection, username: str, entry: _Entry) -> list[str]:
        r = self.resolved
        if r.group_search_mode == "memberof":
            return [ldapfilters.rdn_value(dn) for dn in _all(entry.attributes,
                                                               self.settings.member_of_attribute)]
        names: set[str] = set()
        seen: set[str] = set()
        frontier = [entry.dn]
        client_side_nesting = self.settings.nested_groups and not r.group_filter_nested_server_side
        for _ in range(_MAX_NESTING if client_side_nesting else 1):
            filters = [ldapfilters.fill_filter(r.group_filter, username=username, dn=dn)
                       for dn in frontier]
            conn.search(r.groups_base_dn, ldapfilters.any_of(filters), ldap3.SUBTREE,
                        attributes=[r.group_name_attribute], time_limit=self._time_limit())
            self._expect_success(conn, f"group search under {r.groups_base_dn!r}")
            frontier = []
            for e in conn.response or ():
                if e.get("type") != "searchResEntry" or e["dn"].lower() in seen:
                    continue
                seen.add(e["dn"].lower())
                frontier.append(e["dn"])
                names.add(_first(e.get("attributes"), r.group_name_attribute)
                          or ldapfilters.rdn_value(e["dn"]))
            if not frontier or "{dn}" not in r.group_filter:
                break
        return sorted(names)

    def _bind_as(self, username: str, dn: str, password: str) -> None:
        def bind(conn: ldap3.Connection) -> None:
            conn.authentication = ldap3.SIMPLE
            conn.user, conn.password = dn, password
            try:
                conn.bind(read_server_info=False)
            finally:
                conn.password = None  # the password must not outlive this call
            code = conn.result.get("result")
            if code == _SUCCESS and conn.bound:
                return
            if code == _INVALID_CREDENTIALS:
                if self.settings.preset == "activedirectory":
                    reason = ldapfilters.ad_bind_reason(conn.result.get("message", ""))
                    if reason == "disabled":
                        raise AccountDisabled(username, "AD bind data 533")
                    raise InvalidCredentials(username, reason)
                raise InvalidCredentials(username, "bad_password")
            raise DirectoryUnavailable(
                f"LDAP bind as {dn!r} to {self._url_of(conn)} failed: "
                f"{conn.result.get('description')} {conn.result.get('message', '')}".rstrip())

        self._with_connection(self._bind_pool, "user bind", bind)

    def _identity(self, entry: _Entry) -> Identity:
        r = self.resolved
        attrs = entry.attributes
        username = _first(attrs, r.username_attribute)
        if username is None:
            raise DirectoryUnavailable(f"entry {entry.dn!r} has no {r.username_attribute!r}; "
                                       "check ldap.username_attribute (and read access of the "
                                       "service account)")
        return Identity(username=username, groups=entry.groups,
                        display_name=_first(attrs, r.display_name_attribute),
                        email=_first(attrs, r.mail_attribute), dn=entry.dn, source="ldap")

    # --- connections -------------------------------------------------------------------

    def _time_limit(self) -> int:
        # ldap3 packs the receive timeout into SO_RCVTIMEO as whole seconds on Linux
        return max(1, math.ceil(self.settings.response_timeout))

    def _expect_success(self, conn: ldap3.Connection, what: str) -> None:
        code = conn.result.get("result")
        if code != _SUCCESS:
            raise DirectoryUnavailable(f"LDAP {what} on {self._url_of(conn)} failed: "
                                       f"{conn.result.get('description')} "
                                       f"{conn.result.get('message', '')}".rstrip())

    @staticmethod
    def _url_of(conn: ldap3.Connection) -> str:
        s = conn.server
        return f"{'ldaps' if s.ssl else 'ldap'}://{s.host}:{s.port}"

    def _with_connection(self, pool: _Pool, what: str, op: Callable[[ldap3.Connection], T]) -> T:
        """Run `op` on a pooled connection; retry once on a fresh one if it broke."""
        last: BaseException | None = None
        for _attempt in range(2):
            with pool.connection() as lease:
                try:
                    return op(lease.conn)
                except (InvalidCredentials, DirectoryUnavailable):
                    raise
                except (LDAPException, OSError, ssl.SSLError, *_DECODER_ERRORS) as e:
                    if isinstance(e, _DECODER_ERRORS):
                        if not _garbled_answer(e):
                            raise
                        e = _not_ldap(self._url_of(lease.conn), e)
                    lease.broken = True
                    last = e
                    log.info("LDAP %s on %s failed (%s); reconnecting", what,
                             self._url_of(lease.conn), _describe(e))
        raise DirectoryUnavailable(f"LDAP {what} failed twice, last: {_describe(last)}") from last

    def _ordered_urls(self) -> list[str]:
        now = self._clock()
        with self._failed_lock:
            recent = {u for u, t in self._failed_urls.items() if now - t < _FAILED_URL_PENALTY}
        return ([u for u in self.settings.urls if u not in recent]
                + [u for u in self.settings.urls if u in recent])

    def _open(self, service: bool) -> ldap3.Connection:
        """Open (and for the service pool, bind) a connection to the first URL that works."""
        errors: list[str] = []
        for url in self._ordered_urls():
            try:
                conn = self._open_url(url, service)
            except (LDAPException, OSError, ssl.SSLError, _ServiceBindRefused, _NotLdap) as e:
                errors.append(f"{url}: {_describe(e)}")
                with self._failed_lock:
                    self._failed_urls[url] = self._clock()
                continue
            with self._failed_lock:
                self._failed_urls.pop(url, None)
            return conn
        message = "no LDAP server answered: " + "; ".join(errors)
        log.warning("%s", message)
        raise DirectoryUnavailable(message)

    def _open_url(self, url: str, service: bool) -> ldap3.Connection:
        s = self.settings
        server = ldap3.Server(url, tls=self._tls, connect_timeout=s.connect_timeout,
                              get_info=ldap3.NONE)
        conn = ldap3.Connection(server, auto_bind=ldap3.AUTO_BIND_NONE, raise_exceptions=False,
                                receive_timeout=self._time_limit(), read_only=True,
                                client_strategy=ldap3.SYNC)
        try:
            conn.open(read_server_info=False)
            if s.start_tls and not server.ssl:
                if not conn.start_tls(read_server_info=False):
                    raise _ServiceBindRefused(f"StartTLS refused: {conn.result.get('description')}")
            if service and s.bind_dn:
                conn.authentication = ldap3.SIMPLE
                conn.user, conn.password = s.bind_dn, self._password
                try:
                    ok = conn.bind(read_server_info=False)
                finally:
                    conn.password = None
                if not ok:
                    raise _ServiceBindRefused(
                        f"service account bind as {s.bind_dn!r} refused: "
                        f"{conn.result.get('description')}; check ldap.bind_dn and its password")
        except BaseException as e:
            _close_quietly(conn)
            if _garbled_answer(e):
                raise _not_ldap(url, e) from e
            raise
        return conn
