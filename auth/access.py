"""Ordered access rules (Authelia's `access_control` shape) and the pure `decide` function.

    access_control:
      default_policy: deny
      rules:
        - {id: health, domains: ["*"], paths: ["^/healthz$"], policy: bypass}
        - {id: admin, domains: [admin.example.org], groups: [admins], policy: authenticated}
        - {id: admin-others, domains: [admin.example.org], policy: deny}
        - {id: office, networks: [10.0.0.0/8], methods: [GET, HEAD], policy: bypass}
        - {domains: ["*.example.org"], policy: authenticated}

Policies: `bypass` (no login needed), `authenticated` (any logged-in user), `deny`.
A group requirement is a rule with `groups:`/`users:` (its *subject*): it only matches
users in one of those groups (or named), so "admins only" is an `authenticated` rule
with `groups: [admins]` followed by a `deny` for everyone else on that domain.

Evaluation: the first rule whose every given criterion matches wins (lists inside one
criterion are alternatives). Criteria: `domains` (exact, `*.suffix` for any depth of
subdomain but not the apex itself, or `*`), `domain_regex` (full match), `paths` (regexes
matched from the start of the normalised path, query excluded), `path_prefixes`,
`methods`, `networks` (client CIDRs), `users`, `groups`. An anonymous request that reaches
a rule with a subject gets `login` (the rule may apply once we know who it is), as in
Authelia. No rule matches -> `default_policy` (deny unless configured otherwise).

Outcomes: `allow`, `login` (401/redirect to the login page), `deny` (403).

Paths: the gateway forwards the path as the client sent it, and upstreams read paths
differently (Tomcat drops `;params`, IIS and Express ignore case, IIS trims trailing dots,
Express does not resolve `..`, nginx does). So a request is judged under each reading
(`path_readings`): the path with percent-encoded unreserved characters decoded (`%2F` kept
as a character of its segment, and read as `/`), with and without dot segments resolved,
with and without `;params`, with and without case; the strictest outcome wins (deny, then login, then
allow), so `/admin;x/s`, `/ADMIN/s`, `/admin/..%2Fs` and `/x/../admin/s` all meet the
`/admin/` rule. A `path_prefixes` entry ending in `/` also covers the path without it
(`/admin/` covers `/admin`); with regex rules, a path ending in `/` is also read without it.
Paths no reading can make safe (a backslash or `#`, a control character, `%u`, a bad or
overlong percent-encoding) are refused before any rule (`unclear_path`; docs/auth.md).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

Policy = Literal["bypass", "authenticated", "deny"]
Outcome = Literal["allow", "login", "deny"]
POLICIES: tuple[str, ...] = ("bypass", "authenticated", "deny")
_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
            "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT"}
_HOST_RE = re.compile(r"^(\*|\*\.[a-z0-9.-]+|[a-z0-9.-]+|\[[0-9a-f:.]+\])$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _compile(patterns: tuple[str, ...], name: str, flags: int = 0) -> tuple[re.Pattern[str], ...]:
    out = []
    for i, p in enumerate(patterns):
        try:
            out.append(re.compile(p, flags))
        except re.error as e:
            raise ValueError(f"{name}[{i}]: invalid regular expression {p!r}: {e}") from None
    return tuple(out)


@dataclass(frozen=True)
class AccessRule:
    """One rule; see the module docstring. Empty criteria match everything."""

    policy: Policy
    id: str | None = None
    domains: tuple[str, ...] = ()
    domain_regex: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    path_prefixes: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    networks: tuple[Network | str, ...] = ()
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    _domain_res: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False, compare=False)
    _path_res: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False, compare=False)
    # the same, for readings where case does not matter (IIS, Express)
    _path_res_ci: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False, compare=False)
    _prefixes_ci: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    _nets: tuple[Network, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy: expected one of {', '.join(POLICIES)}, got {self.policy!r}")
        for i, d in enumerate(self.domains):
            if not _HOST_RE.match(d.lower()):
                raise ValueError(f"domains[{i}]: expected 'app.example.org', '*.example.org' or "
                                 f"'*', got {d!r} (use domain_regex for patterns)")
        object.__setattr__(self, "domains", tuple(d.lower().rstrip(".") for d in self.domains))
        object.__setattr__(self, "_domain_res", _compile(self.domain_regex, "domain_regex",
                                                          re.IGNORECASE))
        object.__setattr__(self, "_path_res", _compile(self.paths, "paths"))
        object.__setattr__(self, "_path_res_ci", _compile(self.paths, "paths", re.IGNORECASE))
        object.__setattr__(self, "_prefixes_ci", tuple(p.lower() for p in self.path_prefixes))
        for i, p in enumerate(self.path_prefixes):
            if not p.startswith("/"):
                raise ValueError(f"path_prefixes[{i}]: expected a path starting with '/', got {p!r}")
        methods = tuple(m.upper() for m in self.methods)
        for i, m in enumerate(methods):
            if m not in _METHODS:
                raise ValueError(f"methods[{i}]: expected an HTTP method like GET or POST, got {m!r}")
        object.__setattr__(self, "methods", methods)
        nets = []
        for i, n in enumerate(self.networks):
            try:
                nets.append(n if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                            else ipaddress.ip_network(n, strict=False))
            except ValueError:
                raise ValueError(f"networks[{i}]: expected a CIDR like '10.0.0.0/8', got {n!r}") from None
        object.__setattr__(self, "_nets", tuple(nets))
        if self.policy == "bypass" and (self.users or self.groups):
            raise ValueError("policy: 'bypass' cannot have users/groups (a bypass needs no login, "
                             "so nobody is known); use 'authenticated'")

    @property
    def has_subject(self) -> bool:
        return bool(self.users or self.groups)


@dataclass(frozen=True)
class AccessControl:
    """`default_policy` plus the ordered rules. Rules without `id` are named `rules[i]`."""

    default_policy: Policy = "deny"
    rules: tuple[AccessRule, ...] = ()
    # a rule's path has capitals: a lower-case path can still match it differently ignoring case
    _case_matters: bool = field(default=False, init=False, repr=False, compare=False)
    _regex_rules: bool = field(default=False, init=False, repr=False, compare=False)  # some rule has paths:

    def __post_init__(self) -> None:
        object.__setattr__(self, "_case_matters", any(
            p != p.lower() for r in self.rules for p in (*r.path_prefixes, *r.paths)))
        object.__setattr__(self, "_regex_rules", any(r.paths for r in self.rules))
        if self.default_policy not in POLICIES:
            raise ValueError(f"default_policy: expected one of {', '.join(POLICIES)}, "
                             f"got {self.default_policy!r}")
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.id is not None:
                if rule.id in seen:
                    raise ValueError(f"rules[{i}].id: {rule.id!r} is used by an earlier rule")
                seen.add(rule.id)


@dataclass(frozen=True)
class RequestInfo:
    """What the rules look at. `path` may be raw (with query); `decide` normalises it."""

    host: str
    path: str = "/"
    method: str = "GET"
    client_ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None = None


@dataclass(frozen=True)
class Subject:
    """Who is asking, as far as the rules care (an `auth.identity.Identity` fits too)."""

    username: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """The outcome, which rule decided (`rules[i]`, its id, or `default`), and why.

    `trace` lists, for every rule before the deciding one, why it did not match: what
    `portico access check` prints.
    """

    outcome: Outcome
    policy: Policy
    rule: str
    reason: str
    trace: tuple[str, ...] = ()


_UNRESERVED = re.compile(r"%([0-9A-Fa-f]{2})")


def normalize_host(host: str) -> str:
    """Lower-case, port and trailing dot removed: `App.Example.org.:8443` -> `app.example.org`."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _decoded(raw: str, slash: bool = False) -> str:
    """No query/fragment; percent-encoded unreserved characters decoded (RFC 3986 6.2.2.2:
    equivalent either way). `%2F` only with `slash` (nginx's reading): in the RFC reading
    it stays a character of its segment, or `/admin/..%2Fx` would resolve out of `/admin/`
    while Express or Flask still route it there."""
    path = raw.split("?", 1)[0].split("#", 1)[0] or "/"
    keep = "-._~/" if slash else "-._~"

    def decode(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch.isalnum() and ch.isascii() or ch in keep else "%" + m.group(1).upper()

    path = _UNRESERVED.sub(decode, path)
    return path if path.startswith("/") else "/" + path


def _resolved(path: str) -> str:
    """Dot segments removed (RFC 3986 5.2.4), `//` collapsed."""
    out: list[str] = []
    segments = path.split("/")
    for seg in segments[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg not in (".", ""):
            out.append(seg)
    trailing = segments[-1] in ("", ".", "..") and len(out) > 0
    return "/" + "/".join(out) + ("/" if trailing else "")


def normalize_path(raw: str) -> str:
    """The path as an RFC 3986 origin server sees it: no query/fragment, unreserved
    characters percent-decoded, dot segments removed, `//` collapsed."""
    return _resolved(_decoded(raw))


_PARAMS = re.compile(r";[^/]*")
# what can make upstreams read a path differently: without any, the RFC 3986 reading is the only one
_SUSPECT = re.compile(r"[%;]|//|\.(?:/|$)|(?:^|/)\.")
_TRAILING_DOTS = re.compile(r"(?:[. ]|%20)+(?=/|$)")
# a backslash or `#` (IIS and Go's file server read them as separators), a control character
# (cuts a path short), `%u0061` and other `%` without two hex digits (IIS decodes `%uNNNN`),
# an overlong UTF-8 lead byte (`%c0%ae` is `.` to lax decoders)
_UNCLEAR = re.compile(r"[\\#\x00-\x1f\x7f]|%(?:5[cC]|[01][0-9A-Fa-f]|7[fF]|[cC][01])|%(?![0-9A-Fa-f]{2})")


def unclear_path(raw: str) -> str | None:
    """Why no reading of this path is safe to judge (then the request is refused), or None."""
    m = _UNCLEAR.search(raw.split("?", 1)[0])
    if m is None:
        return None
    return f"the path contains {m.group(0)!r}, which some servers read as a separator, decode oddly or cut the path at"


def path_readings(raw: str, case_matters: bool = True, regex_rules: bool = True) -> list[tuple[str, bool]]:
    """The ways upstreams may read `raw` (see the module docstring), the RFC 3986 one first:
    (path, whether case is ignored). Without `case_matters` (no rule path has capitals),
    ignoring case is left out for paths without capitals: it would change nothing. With
    `regex_rules` (some rule has `paths:`), a path ending in `/` is also read without it
    (Express and Spring serve `/admin` for `/admin/`; a prefix rule covers both already)."""
    paths = [normalize_path(raw)]
    if _SUSPECT.search(raw.split("?", 1)[0]) is not None:  # else the RFC 3986 reading is the only one
        decoded = _decoded(raw)
        bases = [decoded, _PARAMS.sub("", decoded)] if ";" in decoded else [decoded]
        if "%2F" in decoded:
            bases.append(_decoded(raw, slash=True))
        for base in bases:
            for path in (_resolved(base), base):
                for reading in (path, _TRAILING_DOTS.sub("", path)):
                    if reading not in paths:
                        paths.append(reading)
    if regex_rules:
        for path in paths[:]:
            bare = path.rstrip("/") or "/"
            if bare not in paths:
                paths.append(bare)
    readings = [(path, False) for path in paths]
    readings += [(path, True) for path in paths if case_matters or path != path.lower()]
    return readings


def _domain_matches(rule: AccessRule, host: str) -> bool:
    for d in rule.domains:
        if d == "*" or d == host or (d.startswith("*.") and host.endswith(d[1:])):
            return True
    return any(r.fullmatch(host) for r in rule._domain_res)  # noqa: SLF001


def _mismatch(rule: AccessRule, host: str, path: str, method: str,
              ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, fold_case: bool = False) -> str | None:
    if (rule.domains or rule.domain_regex) and not _domain_matches(rule, host):
        return f"host {host!r} not in domains"
    path_res = rule._path_res_ci if fold_case else rule._path_res  # noqa: SLF001
    if rule.paths and not any(r.match(path) for r in path_res):
        return f"path {path!r} matches none of paths"
    prefixes = rule._prefixes_ci if fold_case else rule.path_prefixes  # noqa: SLF001
    if fold_case:
        path = path.lower()
    if prefixes and not any(path.startswith(p) or (p[-1:] == "/" and path == p[:-1]) for p in prefixes):
        return f"path {path!r} has none of path_prefixes"
    if rule.methods and method not in rule.methods:
        return f"method {method} not in {', '.join(rule.methods)}"
    if rule._nets and (ip is None or not any(ip in n for n in rule._nets)):  # noqa: SLF001
        return f"client {ip} not in networks"
    return None


def _subject_matches(rule: AccessRule, who: Subject) -> bool:
    return who.username in rule.users or any(g in rule.groups for g in who.groups)


def _apply(policy: Policy, rule: str, who: Subject | None, trace: list[str], why: str) -> Decision:
    if policy == "bypass":
        return Decision("allow", policy, rule, f"{why}: bypass (no login needed)", tuple(trace))
    if policy == "deny":
        return Decision("deny", policy, rule, f"{why}: deny", tuple(trace))
    if who is None:
        return Decision("login", policy, rule, f"{why}: authenticated, and not logged in",
                        tuple(trace))
    return Decision("allow", policy, rule, f"{why}: authenticated as {who.username!r}", tuple(trace))


def decide(request: RequestInfo, who: Subject | None, control: AccessControl) -> Decision:
    """The access decision for `request` by `who` (None: not logged in). Pure: no I/O.

    `who` may be an `auth.identity.Identity` (anything with `username` and `groups`).
    """
    host = normalize_host(request.host)
    method = request.method.upper()
    ip = request.client_ip
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            ip = None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    readings = path_readings(request.path, control._case_matters, control._regex_rules)  # noqa: SLF001
    chosen = _decide_path(host, readings[0][0], method, ip, who, control)
    for path, fold_case in readings[1:]:  # another upstream's reading of the same bytes: the strictest wins
        other = _decide_path(host, path, method, ip, who, control, fold_case)
        if _STRICTNESS[other.outcome] > _STRICTNESS[chosen.outcome]:
            how = " ignoring case" if fold_case else ""
            chosen = dataclasses.replace(other, reason=f"{other.reason} (the path read as {path!r}{how}, "
                                                       "as some upstreams read it)")
    return chosen


_STRICTNESS = {"allow": 0, "login": 1, "deny": 2}


def _decide_path(host: str, path: str, method: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
                 who: Subject | None, control: AccessControl, fold_case: bool = False) -> Decision:
    trace: list[str] = []
    for i, rule in enumerate(control.rules):
        name = rule.id or f"rules[{i}]"
        why_not = _mismatch(rule, host, path, method, ip, fold_case)
        if why_not:
            trace.append(f"{name}: {why_not}")
            continue
        if rule.has_subject:
            if who is None:
                return Decision("login", rule.policy, name,
                                f"rule {name} depends on who you are: log in first", tuple(trace))
            if not _subject_matches(rule, who):
                trace.append(f"{name}: {who.username!r} is not in users "
                             f"{list(rule.users)} / groups {list(rule.groups)}")
                continue
        return _apply(rule.policy, name, who, trace, f"rule {name} matched")
    return _apply(control.default_policy, "default", who, trace, "no rule matched, default_policy")
