"""Portico's configuration: one YAML file -> frozen dataclasses, validated before any socket opens.

`load_config(path)` is the only entry point. Errors are `ConfigError`s whose message starts
with the file name and names the dotted key, the offending value and what is allowed:
`portico.yaml: routes[0].upstream: expected a URL like 'http://127.0.0.1:9000' ..., got 'ftp://x'`.
The CLI prints that one line and exits with status 2.

The sections mirror the libraries they configure: each library keeps its own settings
dataclass (`telemetry.store.StoreSettings`, `proto.server.GrpcSettings`, ...) and the
`to_*_settings()` functions here build them, so configuration never points upward.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from auth.access import AccessControl
from auth.ldap import LdapSettings
from proxy.schema import ConfigError, build, parse_hostport, parse_http_url, parse_size

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def _check_host_pattern(value: str) -> None:
    if value == "*":
        return
    bare = value[2:] if value.startswith("*.") else value
    if not bare or "*" in bare or "/" in bare or ":" in bare or " " in bare:
        raise ValueError("'*', an exact host like 'app.example.org' or a wildcard like '*.example.org'")


def _check_path_prefix(value: str) -> None:
    if not value.startswith("/") or "?" in value or "#" in value:
        raise ValueError("a path prefix starting with '/', like '/api/'")


def _check_public_url(value: str | None) -> None:
    from urllib.parse import urlsplit

    if value is None:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("the gateway's public origin, like 'https://www.example.org' (http or https, no query)")


@dataclass(frozen=True)
class RouteMatch:
    """Which requests a route takes: by Host (exact, `*.suffix`, or `*`) and path prefix."""

    host: str = field(default="*", metadata={"check": _check_host_pattern})
    path_prefix: str = field(default="/", metadata={"check": _check_path_prefix})


def _check_object_size(value: int) -> None:
    if not 0 < value <= 8 * 2**20:
        raise ValueError("a size from 1 byte to 8MiB (the engine streams larger bodies; they can't be stored)")


@dataclass(frozen=True)
class RouteCacheConfig:
    """A route's `cache:` switches; unset keys inherit the global `cache:` section."""

    enabled: bool | None = None
    default_ttl: timedelta | None = None  # for responses without freshness information
    ignore_query_params: tuple[str, ...] | None = None  # globs like 'utm_*'
    sort_query: bool | None = None
    store_set_cookie: bool | None = None  # store (without Set-Cookie) responses that set cookies


@dataclass(frozen=True)
class CacheConfig:
    """The shared HTTP cache (addons/cache.py; docs/cache.md). Off unless enabled."""

    enabled: bool = False
    path: Path = Path("./portico-cache")
    max_size: int = field(default=2**30, metadata={"parse": parse_size})
    max_object_size: int = field(default=8 * 2**20, metadata={"parse": parse_size, "check": _check_object_size})
    default_ttl: timedelta | None = None
    heuristic_max: timedelta = timedelta(days=1)
    ignore_query_params: tuple[str, ...] = ()
    sort_query: bool = False
    store_set_cookie: bool = False
    private_cookies: tuple[str, ...] = ("portico_session",)
    purge_networks: tuple[Network, ...] = ()
    stale_while_revalidate_max: timedelta = timedelta(days=1)
    stale_if_error_max: timedelta = timedelta(days=1)
    lock_timeout: timedelta = timedelta(seconds=5)
    revalidate_timeout: timedelta = timedelta(seconds=10)


@dataclass(frozen=True)
class Route:
    """One upstream module behind the gateway."""

    upstream: str = field(metadata={"parse": parse_http_url})
    match: RouteMatch = RouteMatch()
    name: str = ""
    strip_prefix: bool = False
    preserve_host: bool = True  # False: the upstream sees its own host in `Host`
    cache: RouteCacheConfig | None = None
    moderate: bool = False  # score this route's text responses against the moderation categories
    check_links: bool = False  # phishing-check the links in this route's HTML responses

    @property
    def label(self) -> str:
        """The route's name for logs and events (its name, else host+prefix)."""
        return self.name or f"{self.match.host}{self.match.path_prefix}"


@dataclass(frozen=True)
class ForwardConfig:
    """The optional forward-proxy listener for users' browsing. Closed by default."""

    listen: tuple[str, int] = field(metadata={"parse": parse_hostport})
    allowed_clients: tuple[Network, ...] = LOOPBACK_NETWORKS
    connect_ports: tuple[int, ...] = (443,)
    allow_private_destinations: bool = False

    def __post_init__(self) -> None:
        for port in self.connect_ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"connect_ports: expected ports from 1 to 65535, got {port!r}")


@dataclass(frozen=True)
class TelemetryConfig:
    """Where and how events are stored (see telemetry.store.StoreSettings)."""

    enabled: bool = True
    path: Path = Path("./portico-data")
    partition: Literal["day", "week"] = "day"
    retention: dict[str, timedelta] = field(default_factory=dict)
    dimensions: tuple[str, ...] | None = None
    sync: bool = True


@dataclass(frozen=True)
class GrpcTlsConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class GrpcConfig:
    """The analytics API listener."""

    listen: str = field(default="127.0.0.1:50051", metadata={"check": lambda v: parse_hostport(v)})
    tokens_file: Path | None = None
    tls: GrpcTlsConfig | None = None


def _check_ipaddr(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("an IP address like '9.9.9.9' or '2620:fe::fe' (the address Portico dials)") from None


@dataclass(frozen=True)
class DnsResolverConfig:
    """One encrypted resolver (see addons.dns_resolver.ResolverSpec)."""

    protocol: Literal["dot", "doh"]
    address: str = field(metadata={"check": _check_ipaddr})
    port: int | None = None  # 853 for dot, 443 for doh
    server_name: str | None = None  # verified against the certificate (RFC 8310 strict)
    spki_pins: tuple[str, ...] = ()
    ca_file: Path | None = None
    path: str = field(default="/dns-query", metadata={"check": _check_path_prefix})
    timeout: timedelta = timedelta(seconds=2)
    name: str = ""

    def __post_init__(self) -> None:
        if not self.server_name and not self.spki_pins:
            raise ValueError("server_name: required (or spki_pins): strict DNS-over-TLS/HTTPS authenticates "
                             "the resolver by its certificate name or key pin")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port: expected a port from 1 to 65535, got {self.port!r}")


@dataclass(frozen=True)
class DnsConfig:
    """Encrypted DNS for upstream and forward-proxy names (addons/dnsguard.py)."""

    resolvers: tuple[DnsResolverConfig, ...] = ()
    plaintext_fallback: bool = False  # True: the system resolver answers when all encrypted ones fail
    min_ttl: timedelta = timedelta(seconds=5)
    max_ttl: timedelta = timedelta(hours=1)
    ipv6: bool = True
    doh_clients: Literal["allow", "log", "block"] = "log"  # forward-proxy clients running their own DoH
    doh_hosts: tuple[str, ...] = ()  # added to the built-in list of known DoH hosts

    def __post_init__(self) -> None:
        if not self.resolvers and not self.plaintext_fallback:
            raise ValueError("resolvers: expected at least one encrypted resolver (or plaintext_fallback: true)")


@dataclass(frozen=True)
class CategoryConfig:
    """A content category: domain/URL/phrase lists and what to do on a match."""

    name: str
    action: Literal["block", "warn", "log"] = "block"
    threshold: float = 10.0  # phrase score at or above which text content is in the category
    domains: tuple[str, ...] = ()  # plain, hosts-file or adblock `||domain^` lines
    url_patterns: tuple[str, ...] = ()  # regular expressions on the full URL
    phrases: dict[str, float] = field(default_factory=dict)  # phrase -> weight
    directory: Path | None = None  # domains*/urls*/phrases* files, reloaded on change
    file: Path | None = None  # a YAML file {domains: [...], url_patterns: [...], phrases: {...}}

    def __post_init__(self) -> None:
        import re

        for i, pattern in enumerate(self.url_patterns):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"url_patterns[{i}]: expected a regular expression, got {pattern!r} ({e})") from None


@dataclass(frozen=True)
class ForumRuleConfig:
    """Posts to `paths` are scored for profanity and heated language before they are forwarded."""

    name: str
    paths: tuple[str, ...]
    action: Literal["alert", "hold", "reject"] = "alert"
    threshold: float = 5.0
    fields: tuple[str, ...] = ()  # form/JSON fields to read; empty: every text field
    words: dict[str, float] = field(default_factory=dict)  # added to the built-in weighted list
    words_file: Path | None = None


@dataclass(frozen=True)
class ModerationConfig:
    """Content categories (all forward traffic; reverse routes with `moderate: true`) and forum rules."""

    categories: tuple[CategoryConfig, ...] = ()
    forum: tuple[ForumRuleConfig, ...] = ()
    max_scan_bytes: int = field(default=1_000_000, metadata={"parse": parse_size})
    reload_interval: timedelta = timedelta(seconds=2)
    continue_ttl: timedelta = timedelta(minutes=30)
    secret_file: Path | None = None  # signs warn-page "continue" links; random per process if unset
    secret_env: str | None = None


@dataclass(frozen=True)
class PhishingConfig:
    """Homograph, lookalike and blocklist checks on forward destinations and reverse-route links."""

    enabled: bool = True
    protected_domains: tuple[str, ...] = ()  # added to the built-in commonly targeted list
    homograph_action: Literal["block", "warn", "log"] = "block"
    lookalike_action: Literal["block", "warn", "log"] = "warn"
    blocklist_action: Literal["block", "warn", "log"] = "block"
    blocklist: tuple[str, ...] = ()
    blocklist_files: tuple[Path, ...] = ()
    allow: tuple[str, ...] = ()  # registrable domains never flagged
    max_edit_distance: int = 1


@dataclass(frozen=True)
class LoggingConfig:
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class AccessLogConfig:
    """The operators' access log (addons/accesslog.py)."""

    format: Literal["off", "common", "combined", "json"] = "off"
    path: str = "-"  # "-" = stdout, else a file rotated by size
    max_size: int = field(default=100 * 2**20, metadata={"parse": parse_size})
    backups: int = 5


def _check_goal_event(value: str) -> None:
    import re

    if value and not re.match(r"^[a-z0-9_.-]{1,64}$", value):
        raise ValueError("an event name of 1-64 characters a-z 0-9 _ . - like 'enrolment.enrolled'")


@dataclass(frozen=True)
class GoalConfig:
    """A conversion goal: an event sent from pages (`event`) or a visited path prefix (`path`)."""

    name: str
    event: str = field(default="", metadata={"check": _check_goal_event})
    path: str = ""

    def __post_init__(self) -> None:
        if bool(self.event) == bool(self.path):
            raise ValueError(f"event, path: set exactly one of them for goal {self.name!r}")
        if self.path and not self.path.startswith("/"):
            raise ValueError(f"path: expected a path starting with '/', got {self.path!r}")


def _at_least(low: int, what: str) -> Any:
    def check(value: int) -> None:
        if value < low:
            raise ValueError(f"{what} of at least {low}")
    return check


@dataclass(frozen=True)
class BeaconConfig:
    """Limits of the snippet's beacon endpoint (a zero or negative one would refuse every beacon)."""

    max_bytes: int = field(default=16 * 1024, metadata={"parse": parse_size,
                                                        "check": _at_least(256, "a size (bytes)")})
    max_events: int = field(default=50, metadata={"check": _at_least(1, "a number of events")})
    rate_per_minute: int = field(default=120, metadata={"check": _at_least(1, "a number of events a minute")})


def _check_prefix(bits: int) -> Any:
    def check(value: int) -> None:
        if not 0 <= value <= bits:
            raise ValueError(f"a prefix length from 0 to {bits} ({bits} keeps full addresses)")
    return check


@dataclass(frozen=True)
class TrackingConfig:
    """Request/referrer/outreach/client tracking (addons/tracking.py and friends; docs/tracking.md)."""

    enabled: bool = True
    html_routes: tuple[str, ...] = ("*",)  # route names (labels) whose HTML gets the snippet and link rewriting
    inject_snippet: bool = True
    rewrite_outbound: bool = True
    internal_hosts: tuple[str, ...] = ()  # other hosts of the organisation (internal referrers/links)
    query_allowlist: tuple[str, ...] = ()  # query parameters kept in stored paths
    ipv4_prefix: int = field(default=24, metadata={"check": _check_prefix(32)})
    ipv6_prefix: int = field(default=48, metadata={"check": _check_prefix(128)})
    pseudonymise_users: bool = False
    secret_file: Path | None = None
    secret_env: str | None = None
    geoip_db: Path | None = None
    access_log: AccessLogConfig = AccessLogConfig()
    goals: tuple[GoalConfig, ...] = ()
    attribution_window: timedelta = timedelta(days=30)
    secure_cookie: bool = False
    click_selectors: tuple[str, ...] = ("[data-track]",)
    respect_dnt: bool = True
    respect_gpc: bool = True
    recipients: bool = False  # recipient-level outreach tracking (pseudonyms)
    machine_window: timedelta = timedelta(seconds=10)
    session_timeout: timedelta = timedelta(minutes=30)
    bot_follow_timeout: timedelta = timedelta(seconds=15)
    count_bots_as_visitors: bool = False
    beacon: BeaconConfig = BeaconConfig()

    def __post_init__(self) -> None:
        for i, sel in enumerate(self.click_selectors):
            if not sel.strip() or any(c in sel for c in "\"<>"):
                raise ValueError(f"click_selectors[{i}]: expected a CSS selector without quotes or <>, got {sel!r}")
        if self.secret_file is not None and self.secret_env is not None:
            raise ValueError("secret_file, secret_env: set one of them, not both")


def _check_time_zone(value: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("an IANA time zone like 'UTC', 'Europe/Berlin' or 'Asia/Kathmandu'") from None


def _check_dashboard_range(value: str) -> None:
    import re

    if not re.fullmatch(r"-\d+[hdw]", value):
        raise ValueError("a relative start like '-24h', '-7d' or '-4w'")


@dataclass(frozen=True)
class DashboardConfig:
    """The analytics dashboard under `<reserved_prefix>dashboard/` (addons/dashboard.py; docs/dashboard.md)."""

    enabled: bool = True
    admin_groups: tuple[str, ...] = ("admins",)  # users in any of these groups may open it
    default_tz: str = field(default="UTC", metadata={"check": _check_time_zone})
    default_range: str = field(default="-7d", metadata={"check": _check_dashboard_range})
    max_csv_rows: int = 100_000  # a dashboard CSV beyond this asks the user for `portico export`

    def __post_init__(self) -> None:
        if not self.admin_groups or any(not g.strip() for g in self.admin_groups):
            raise ValueError(f"admin_groups: expected one or more group names, got {list(self.admin_groups)!r}")
        if not 1 <= self.max_csv_rows <= 10_000_000:
            raise ValueError(f"max_csv_rows: expected 1..10000000, got {self.max_csv_rows!r}")


def _check_header_name(value: str) -> None:
    import re

    if not re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$", value):
        raise ValueError("an HTTP header name like 'Remote-User'")


def _check_cookie_name(value: str) -> None:
    import re

    if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", value):
        raise ValueError("a cookie name of 1-64 characters A-Z a-z 0-9 _ . -")


@dataclass(frozen=True)
class AuthSessionConfig:
    """The signed session cookie (auth.sessions). Keys: `secret_file`/`secret_env` (one key per
    line / whitespace-separated, newest first), else generated in `<telemetry.path>/session.key`."""

    secret_file: Path | None = None
    secret_env: str | None = None
    cookie_name: str = field(default="portico_session", metadata={"check": _check_cookie_name})
    absolute_lifetime: timedelta = timedelta(hours=12)
    inactivity_timeout: timedelta = timedelta(hours=1)
    refresh_after: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        if self.secret_file is not None and self.secret_env is not None:
            raise ValueError("secret_file, secret_env: set one of them, not both")
        if self.absolute_lifetime.total_seconds() <= 0 or self.inactivity_timeout.total_seconds() <= 0:
            raise ValueError("absolute_lifetime, inactivity_timeout: expected positive durations")
        if self.refresh_after >= self.inactivity_timeout:
            raise ValueError(f"refresh_after: expected less than inactivity_timeout "
                             f"({self.inactivity_timeout}), got {self.refresh_after}")


@dataclass(frozen=True)
class AuthHeadersConfig:
    """Names of the identity headers the upstream receives."""

    user: str = field(default="Remote-User", metadata={"check": _check_header_name})
    groups: str = field(default="Remote-Groups", metadata={"check": _check_header_name})
    email: str = field(default="Remote-Email", metadata={"check": _check_header_name})
    name: str = field(default="Remote-Name", metadata={"check": _check_header_name})


@dataclass(frozen=True)
class RegulationConfig:
    """Brute-force regulation (auth.throttle.RegulationSettings); `max_retries: 0` turns it off."""

    max_retries: int = 3
    address_max_retries: int = 20
    find_time: timedelta = timedelta(minutes=2)
    ban_time: timedelta = timedelta(minutes=5)
    ipv6_prefix: int = 64


@dataclass(frozen=True)
class AccountGroupConfig:
    """An explicit group -> org/project/role row."""

    org: str
    project: str | None = None
    role: str | None = None


@dataclass(frozen=True)
class AccountsConfig:
    """Groups -> org/project/role for user.joined/role_changed/left events (addons/accounts.py)."""

    group_pattern: str | None = None  # e.g. '^(?P<org>[a-z0-9]+)-(?P<role>admins|members)$'
    groups: dict[str, AccountGroupConfig] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)  # e.g. {admins: admin, members: member}
    default_project: str = "default"
    default_role: str = "member"
    check_interval: timedelta = timedelta(hours=1)  # how often known users are looked up (user.left); 0: off

    def __post_init__(self) -> None:
        if self.group_pattern is not None:
            import re

            try:
                compiled = re.compile(self.group_pattern)
            except re.error as e:
                raise ValueError(f"group_pattern: invalid regular expression {self.group_pattern!r}: {e}") from None
            if "org" not in compiled.groupindex:
                raise ValueError(f"group_pattern: {self.group_pattern!r} needs a named group (?P<org>...)")


@dataclass(frozen=True)
class AuthConfig:
    """Authentication (addons/auth.py; docs/auth.md): a directory or a users file, sessions,
    identity headers, regulation and account events."""

    backend: Literal["ldap", "file"]
    ldap: LdapSettings | None = None
    users_file: Path | None = None
    session: AuthSessionConfig = AuthSessionConfig()
    headers: AuthHeadersConfig = AuthHeadersConfig()
    regulation: RegulationConfig = RegulationConfig()
    accounts: AccountsConfig = AccountsConfig()
    realm: str = "Portico"
    basic: bool = True  # accept HTTP Basic from API clients on the reverse listener
    forward_proxy_auth: bool = True  # require Proxy-Authorization on the forward listener
    group_refresh_interval: timedelta | None = None  # default: half of ldap.group_cache_ttl; 0: off

    def __post_init__(self) -> None:
        if self.backend == "ldap" and self.ldap is None:
            raise ValueError("ldap: required with backend 'ldap' (urls, base_dn, bind_dn, password_file...)")
        if self.backend == "file" and self.users_file is None:
            raise ValueError("users_file: required with backend 'file' (make one with `portico users add`)")


@dataclass(frozen=True)
class PorticoConfig:
    """The whole validated configuration."""

    listen: tuple[str, int] = field(default=("127.0.0.1", 8080), metadata={"parse": parse_hostport})
    routes: tuple[Route, ...] = ()
    reserved_prefix: str = field(default="/_portico/", metadata={"check": _check_path_prefix})
    # where clients reach the gateway (tracked URLs from gRPC); default http://<listen host>:<port>
    public_url: str | None = field(default=None, metadata={"check": _check_public_url})
    trusted_proxies: tuple[Network, ...] = ()
    max_request_body: int = field(default=10 * 2**20, metadata={"parse": parse_size})
    shutdown_grace: timedelta = timedelta(seconds=10)
    forward: ForwardConfig | None = None
    telemetry: TelemetryConfig = TelemetryConfig()
    grpc: GrpcConfig = GrpcConfig()
    logging: LoggingConfig = LoggingConfig()
    cache: CacheConfig = CacheConfig()
    dns: DnsConfig | None = None
    moderation: ModerationConfig | None = None
    phishing: PhishingConfig | None = None
    tracking: TrackingConfig = TrackingConfig()
    auth: AuthConfig | None = None
    access_control: AccessControl | None = None
    dashboard: DashboardConfig = DashboardConfig()
    source: Path | None = field(default=None, metadata={"internal": True})

    def __post_init__(self) -> None:
        if not self.reserved_prefix.endswith("/"):
            raise ValueError(f"reserved_prefix: expected a prefix ending in '/', got {self.reserved_prefix!r}")
        seen: dict[tuple[str, str], int] = {}
        for i, route in enumerate(self.routes):
            prefix = route.match.path_prefix
            if (prefix.rstrip("/") + "/").startswith(self.reserved_prefix):
                raise ValueError(
                    f"routes[{i}].match.path_prefix: {prefix!r} is inside the reserved prefix "
                    f"{self.reserved_prefix!r}; choose another prefix or change reserved_prefix"
                )
            key = (route.match.host.lower(), prefix.rstrip("/") or "/")
            if key in seen:
                raise ValueError(
                    f"routes[{i}].match: same host and path_prefix as routes[{seen[key]}] ({key[0]} {key[1]})"
                )
            seen[key] = i


def load_config(path: str | os.PathLike[str]) -> PorticoConfig:
    """Read, parse and validate a Portico YAML file.

    Raises:
        ConfigError: the file is missing, not YAML, or invalid; the message starts with the file name.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read configuration: {e.strerror or e}") from None
    return parse_config(text, path)


def parse_config(text: str, source: Path | None = None) -> PorticoConfig:
    """Validate configuration text (for tests and `check-config`)."""
    name = str(source) if source else "<config>"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{name}:{where}: not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if isinstance(data, dict) and "source" in data:
        raise ConfigError(f"{name}: source: unknown key")
    try:
        config: PorticoConfig = build(PorticoConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None
    if source is not None:
        object.__setattr__(config, "source", source)
    return config


def read_secret(key: str, file: Path | None, env: str | None) -> str | None:
    """Read a secret named by `<key>_file` or `<key>_env`; the value is never put in messages.

    Raises:
        ConfigError: the file can't be read or the variable is unset/empty.
    """
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"{key}_file: cannot read {str(file)!r}: {e.strerror or e}") from None
        if not value:
            raise ConfigError(f"{key}_file: {str(file)!r} is empty")
        return value
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"{key}_env: environment variable {env!r} is not set or empty")
        return value
    return None


def describe(config: PorticoConfig) -> dict[str, Any]:
    """A short summary for `check-config` and the start-up log (no secrets)."""
    return {
        "listen": f"{config.listen[0]}:{config.listen[1]}",
        "routes": [f"{r.match.host}{r.match.path_prefix} -> {r.upstream}" for r in config.routes],
        "forward": f"{config.forward.listen[0]}:{config.forward.listen[1]}" if config.forward else None,
        "telemetry": str(config.telemetry.path),
        "grpc": config.grpc.listen,
    }
