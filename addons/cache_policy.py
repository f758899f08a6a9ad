"""Pure HTTP caching decisions (RFC 9111, 5861, 9211, 9213): no I/O, no mitmproxy, no clock.

Everything here takes plain values (header lists, numbers, `now` as epoch seconds) and
returns plain values, so each rule is table-testable. The `Cache` addon only applies them.

Header arguments are anything with `get_all(name) -> list[str]` (mitmproxy's `Headers`
or `Fields` below, which wraps a list of (name, value) pairs as stored in the cache).

Section references are to RFC 9111 unless another RFC is named.
"""

from __future__ import annotations

import email.utils
import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

Pairs = list[tuple[str, str]]

HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
"""Status codes that are heuristically cacheable by default (RFC 9110 §15.1)."""

UNSAFE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authenticate", "proxy-authorization"})
"""Fields that describe one connection, never stored (§3.1)."""

TARGETED_FIELDS = ("portico-cache-control", "cdn-cache-control")
"""RFC 9213 targeted fields Portico obeys, most specific first, ahead of Cache-Control."""

DELTA_MAX = 2**31
"""§1.2.2: delta-seconds above this are taken as this value."""


class HeaderSource(Protocol):
    def get_all(self, name: str) -> list[str]: ...


class Fields:
    """Read-only view of stored (name, value) pairs with case-insensitive `get`/`get_all`."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.pairs: Pairs = [(str(k), str(v)) for k, v in pairs]

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.pairs if k.lower() == name]

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_all(name))


def header(headers: HeaderSource, name: str) -> str | None:
    """All values of a field joined by ', ' (RFC 9110 §5.3), or None when absent."""
    values = headers.get_all(name)
    return ", ".join(values) if values else None


# --- Cache-Control -------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_cache_control(values: Iterable[str]) -> dict[str, str | None]:
    """Cache-Control values -> {directive: argument or None} (§5.2).

    Names are lower-cased; quoted arguments are unquoted (commas inside quotes kept);
    the first occurrence of a directive wins; unknown directives are kept (and ignored
    by callers): a cache must not bypass because of them.
    """
    out: dict[str, str | None] = {}
    for value in values:
        i, n = 0, len(value)
        while i < n:
            while i < n and value[i] in " \t,":
                i += 1
            m = _TOKEN.match(value, i)
            if not m:
                # garbage: skip to the next comma
                j = value.find(",", i)
                i = n if j < 0 else j + 1
                continue
            name = m.group(0).lower()
            i = m.end()
            while i < n and value[i] in " \t":
                i += 1
            arg: str | None = None
            if i < n and value[i] == "=":
                i += 1
                while i < n and value[i] in " \t":
                    i += 1
                if i < n and value[i] == '"':
                    i += 1
                    chars = []
                    while i < n and value[i] != '"':
                        if value[i] == "\\" and i + 1 < n:
                            i += 1
                        chars.append(value[i])
                        i += 1
                    i += 1
                    arg = "".join(chars)
                else:
                    m2 = _TOKEN.match(value, i)
                    arg = m2.group(0) if m2 else ""
                    i = m2.end() if m2 else i
            j = value.find(",", i)
            i = n if j < 0 else j + 1
            out.setdefault(name, arg)
    return out


_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_INT = re.compile(r"-?\d{1,15}(?:\.\d{1,3})?")


def parse_targeted(value: str) -> dict[str, str | None] | None:
    """An RFC 9213 targeted field (a Structured Field Dictionary, RFC 8941) -> directives.

    Returns None when the value is not a valid dictionary: RFC 9213 §2.1 says the cache
    then ignores the field (and falls back to the next one / Cache-Control).
    Booleans `?1` become a bare directive; `?0` drops it; parameters are ignored.
    """
    out: dict[str, str | None] = {}
    text = value.strip(" \t")
    if not text:
        return None
    for member in _split_sf(text):
        member = member.strip(" \t")
        if not member:
            return None
        head = member.split(";", 1)[0].strip()
        key, eq, raw = head.partition("=")
        if not _SF_KEY.fullmatch(key):
            return None
        if not eq:
            out[key] = None
            continue
        raw = raw.strip()
        if _SF_INT.fullmatch(raw):
            out[key] = raw
        elif raw == "?1":
            out[key] = None
        elif raw == "?0":
            out.pop(key, None)
        elif len(raw) >= 2 and raw[0] == raw[-1] == '"':
            out[key] = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        elif re.fullmatch(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*", raw):
            out[key] = raw
        else:
            return None
    return out


def _split_sf(text: str) -> list[str]:
    parts, buf, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


@dataclass(frozen=True)
class ResponseControl:
    """The directives that govern a stored response, and where they came from."""

    directives: dict[str, str | None]
    source: str  # "portico-cache-control", "cdn-cache-control", "cache-control" or "none"


def response_control(headers: HeaderSource) -> ResponseControl:
    """RFC 9213: the first valid targeted field wins over Cache-Control."""
    for name in TARGETED_FIELDS:
        values = headers.get_all(name)
        if values:
            parsed = parse_targeted(", ".join(values))
            if parsed is not None:
                return ResponseControl(parsed, name)
    values = headers.get_all("cache-control")
    return ResponseControl(parse_cache_control(values), "cache-control" if values else "none")


def request_control(headers: HeaderSource) -> dict[str, str | None]:
    """Request directives; `Pragma: no-cache` counts only without Cache-Control (§5.4)."""
    values = headers.get_all("cache-control")
    if values:
        return parse_cache_control(values)
    pragma = ",".join(headers.get_all("pragma")).lower()
    return {"no-cache": None} if "no-cache" in [p.strip() for p in pragma.split(",")] else {}


def delta_seconds(value: str | None) -> int | None:
    """A delta-seconds argument (§1.2.2): digits only, else None (invalid)."""
    if value is None or not value.isdigit():
        return None
    return min(int(value), DELTA_MAX)


def http_date(value: str | None) -> float | None:
    """An HTTP-date (any of the three RFC 9110 formats) -> epoch seconds, or None."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        from datetime import timezone

        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def format_http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


# --- freshness and age (§4.2) ------------------------------------------------------------

@dataclass(frozen=True)
class Freshness:
    lifetime: float  # seconds
    heuristic: bool = False
    explicit: bool = False  # s-maxage, max-age or Expires present


def freshness_lifetime(status: int, headers: HeaderSource, control: ResponseControl, *,
                       heuristic_max: float = 86400.0, default_ttl: float | None = None) -> Freshness:
    """§4.2.1 for a shared cache: s-maxage, then max-age, then Expires - Date, else heuristics.

    `default_ttl` (a configured TTL for responses without freshness information, like
    nginx's `proxy_cache_valid`) replaces the Last-Modified heuristic when set. Heuristics
    apply only to heuristically cacheable status codes or `public` responses (§4.2.2).
    """
    d = control.directives
    s_maxage = delta_seconds(d.get("s-maxage")) if "s-maxage" in d else None
    if s_maxage is not None:
        return Freshness(float(s_maxage), explicit=True)
    max_age = delta_seconds(d.get("max-age")) if "max-age" in d else None
    if max_age is not None:
        return Freshness(float(max_age), explicit=True)
    if "max-age" in d or "s-maxage" in d:
        return Freshness(0.0, explicit=True)  # invalid value: treat as stale (§4.2.1)
    if control.source in TARGETED_FIELDS:
        # RFC 9213 §2.1: a valid targeted field replaces Cache-Control *and* Expires.
        return _heuristic(status, headers, d, heuristic_max, default_ttl)
    expires_values = headers.get_all("expires")
    if expires_values:
        expires = http_date(expires_values[0]) if len(expires_values) == 1 else None
        date = http_date(header(headers, "date"))
        if expires is None:
            return Freshness(0.0, explicit=True)  # invalid Expires ("0") means already expired (§5.3)
        return Freshness(max(0.0, expires - date) if date is not None else 0.0, explicit=True)
    return _heuristic(status, headers, d, heuristic_max, default_ttl)


def _heuristic(status: int, headers: HeaderSource, d: dict[str, str | None], heuristic_max: float,
               default_ttl: float | None) -> Freshness:
    if status not in HEURISTIC_STATUSES and "public" not in d:
        return Freshness(0.0)
    if default_ttl is not None:
        return Freshness(float(default_ttl), heuristic=True)
    last_modified = http_date(header(headers, "last-modified"))
    date = http_date(header(headers, "date"))
    if last_modified is None or date is None or date <= last_modified:
        return Freshness(0.0)
    return Freshness(min(0.1 * (date - last_modified), heuristic_max), heuristic=True)


@dataclass(frozen=True)
class Times:
    """What §4.2.3 needs of a stored response."""

    request_time: float
    response_time: float
    date: float | None
    age: int


def times_of(headers: HeaderSource, request_time: float, response_time: float) -> Times:
    age = delta_seconds((header(headers, "age") or "").split(",")[0].strip())
    return Times(request_time, response_time, http_date(header(headers, "date")), age or 0)


def current_age(t: Times, now: float) -> float:
    """§4.2.3 age calculation."""
    date = t.date if t.date is not None else t.response_time
    apparent_age = max(0.0, t.response_time - date)
    response_delay = max(0.0, t.response_time - t.request_time)
    corrected_age_value = t.age + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = max(0.0, now - t.response_time)
    return corrected_initial_age + resident_time


# --- storing (§3) --------------------------------------------------------------------------

def storable(method: str, status: int, request_headers: HeaderSource, response_headers: HeaderSource,
             control: ResponseControl, req_control: dict[str, str | None], *, authenticated: bool,
             store_set_cookie: bool, default_ttl: float | None) -> str | None:
    """Why this response may not be stored in a shared cache (§3, §3.5), or None if it may.

    `authenticated`: the request carried Authorization or a Portico session. Such responses
    are shared only when `public`, `s-maxage` or `must-revalidate` allow it (§3.5).
    """
    d = control.directives
    if method != "GET":
        return "method"
    if status < 200 or status in (206, 304):
        return "status"
    if "no-store" in req_control:
        return "request-no-store"
    if "no-store" in d:
        return "no-store"
    if "private" in d:
        return "private"
    if authenticated and not ({"public", "s-maxage", "must-revalidate"} & d.keys()):
        return "authenticated"
    vary = vary_names(response_headers)
    if vary is None:
        return "vary-star"
    if response_headers.get_all("set-cookie") and not store_set_cookie:
        return "set-cookie"
    if ({"public", "max-age", "s-maxage", "no-cache"} & d.keys() or response_headers.get_all("expires")
            or status in HEURISTIC_STATUSES or default_ttl is not None):
        return None
    return "no-freshness"


def stored_fields(headers: Pairs, *, drop_set_cookie: bool) -> Pairs:
    """The fields to store: no hop-by-hop fields, no fields named in Connection (§3.1)."""
    named = {v.strip().lower() for k, val in headers if k.lower() == "connection" for v in val.split(",")}
    skip = HOP_BY_HOP | named | {"portico-cache-control", "cache-status", "age"} | (
        {"set-cookie"} if drop_set_cookie else set())
    return [(k, v) for k, v in headers if k.lower() not in skip]


def stored_age_fields(headers: Pairs) -> Pairs:
    """Fields kept for age computation but not replayed: the upstream's Age (§4.2.3)."""
    return [(k, v) for k, v in headers if k.lower() == "age"]


# --- reuse (§4) ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Reuse:
    """How a stored response may answer a request."""

    action: str  # "fresh", "stale-ok" (max-stale), "swr", "revalidate"
    ttl: float  # lifetime - age (negative when stale)
    age: float


def decide_reuse(freshness: Freshness, age: float, control: ResponseControl, req: dict[str, str | None], *,
                 swr_cap: float, sie_cap: float) -> Reuse:
    """§4.2, §4.2.4, §5.2.1 (request directives), RFC 5861 §3 (stale-while-revalidate).

    - response `no-cache` (unqualified or not) -> always revalidate;
    - request `no-cache` or `max-age=0` -> revalidate (unless `immutable` and fresh:
      RFC 8246 lets the cache skip reload-style `max-age=0`);
    - fresh and meets `max-age`/`min-fresh` -> fresh;
    - stale: `must-revalidate`/`proxy-revalidate`/`s-maxage` forbid serving stale;
      request `max-stale` allows it; `stale-while-revalidate` within its (capped) window -> swr.
    """
    d = control.directives
    ttl = freshness.lifetime - age
    fresh = ttl > 0
    if "no-cache" in d:
        return Reuse("revalidate", ttl, age)
    if "no-cache" in req:
        return Reuse("revalidate", ttl, age)
    if "max-age" in req:
        limit = delta_seconds(req.get("max-age")) or 0  # invalid counts as 0
        reload = limit == 0 and fresh and "immutable" in d
        if (age > limit or limit == 0) and not reload:
            return Reuse("revalidate", ttl, age)
    min_fresh = delta_seconds(req.get("min-fresh")) if "min-fresh" in req else None
    if fresh:
        if min_fresh is not None and ttl < min_fresh:
            return Reuse("revalidate", ttl, age)
        return Reuse("fresh", ttl, age)
    if {"must-revalidate", "proxy-revalidate", "s-maxage"} & d.keys():
        return Reuse("revalidate", ttl, age)
    if "max-stale" in req:
        limit = delta_seconds(req.get("max-stale"))
        if req.get("max-stale") is None or (limit is not None and -ttl <= limit):
            return Reuse("stale-ok", ttl, age)
    swr = delta_seconds(d.get("stale-while-revalidate")) if "stale-while-revalidate" in d else None
    if swr is not None and -ttl <= min(float(swr), swr_cap):
        return Reuse("swr", ttl, age)
    return Reuse("revalidate", ttl, age)


def stale_if_error_allows(control: ResponseControl, req: dict[str, str | None], ttl: float, sie_cap: float) -> bool:
    """RFC 5861 §4: a stale response may answer when the upstream failed or sent 5xx."""
    d = control.directives
    if ttl > 0:
        return True
    if {"must-revalidate", "proxy-revalidate", "s-maxage", "no-cache"} & d.keys():
        return False
    windows = [delta_seconds(x.get("stale-if-error")) for x in (d, req) if "stale-if-error" in x]
    windows = [w for w in windows if w is not None]
    return bool(windows) and -ttl <= min(max(windows), sie_cap)


# --- Vary and keys (§4.1, §2) ----------------------------------------------------------------

def vary_names(headers: HeaderSource) -> tuple[str, ...] | None:
    """Lower-cased field names in Vary, sorted; None for `Vary: *` (never matches)."""
    names: set[str] = set()
    for value in headers.get_all("vary"):
        for name in value.split(","):
            name = name.strip().lower()
            if name == "*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


def vary_values(request_headers: HeaderSource, names: Sequence[str]) -> tuple[str, ...]:
    """The request's values for the Vary-named fields, normalised (§4.1: whitespace, combining)."""
    out = []
    for name in names:
        values = request_headers.get_all(name)
        if not values:
            out.append("\x00")  # absent differs from empty
        else:
            out.append(",".join(p.strip() for v in values for p in v.split(",")))
    return tuple(out)


def normalize_query(query: str, ignore: Sequence[str] = (), sort: bool = False) -> str:
    """Drop query parameters matching any `ignore` glob (`utm_*`), optionally sort the rest."""
    if not query or (not ignore and not sort):
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if ignore:
        pairs = [(k, v) for k, v in pairs if not any(fnmatch.fnmatchcase(k, pat) for pat in ignore)]
    if sort:
        pairs = sorted(pairs)
    return urlencode(pairs)


def cache_url(scheme: str, host: str, path: str, ignore: Sequence[str] = (), sort: bool = False) -> str:
    """The URL part of the cache key: scheme://host/path?normalised-query (host lower, no port)."""
    path_only, _, query = path.partition("?")
    query = normalize_query(query, ignore, sort)
    return f"{scheme}://{host.lower()}{path_only or '/'}" + (f"?{query}" if query else "")


def normalize_absolute_url(url: str, ignore: Sequence[str] = (), sort: bool = False) -> str:
    """An absolute URL as a user types it (purge) -> the same form as `cache_url`."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an absolute http(s) URL like 'https://app.example.org/page', got {url!r}")
    path = parts.path or "/"
    return cache_url(parts.scheme, parts.hostname, path + (f"?{parts.query}" if parts.query else ""), ignore, sort)


def same_origin_target(base_scheme: str, base_host: str, reference: str) -> str | None:
    """Location/Content-Location -> (scheme, host, path) URL if same origin (§4.4), else None."""
    reference = reference.strip()
    if not reference:
        return None
    if reference.startswith("//"):
        reference = f"{base_scheme}:{reference}"
    if reference.startswith("/"):
        return cache_url(base_scheme, base_host, reference.split("#", 1)[0])
    parts = urlsplit(reference)
    if parts.scheme and parts.hostname:
        if parts.scheme != base_scheme or parts.hostname.lower() != base_host.lower():
            return None
        return cache_url(parts.scheme, parts.hostname, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    return None


# --- validation (§4.3) -----------------------------------------------------------------------

def _etags(value: str) -> list[str]:
    return [t.strip() for t in re.findall(r'(?:W/)?"[^"]*"|\*', value)]


def weak_match(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def conditional_headers(stored: HeaderSource) -> dict[str, str]:
    """Validators to send upstream when revalidating a stored response (§4.3.1)."""
    out = {}
    etag = header(stored, "etag")
    if etag:
        out["If-None-Match"] = etag
    last_modified = header(stored, "last-modified")
    if last_modified:
        out["If-Modified-Since"] = last_modified
    return out


def has_validator(stored: HeaderSource) -> bool:
    return bool(stored.get_all("etag") or stored.get_all("last-modified"))


def not_modified_for_client(request_headers: HeaderSource, stored: HeaderSource) -> bool:
    """§4.3.2: should a client's conditional GET/HEAD get 304 from this stored response?

    If-None-Match is evaluated with weak comparison; If-Modified-Since only without it,
    against Last-Modified (or Date when there is none).
    """
    inm = header(request_headers, "if-none-match")
    if inm is not None:
        etag = header(stored, "etag")
        if inm.strip() == "*":
            return True
        return bool(etag) and any(weak_match(t, etag.strip()) for t in _etags(inm))
    ims = http_date(header(request_headers, "if-modified-since"))
    if ims is None:
        return False
    reference = http_date(header(stored, "last-modified")) or http_date(header(stored, "date"))
    return reference is not None and reference <= ims


NOT_MODIFIED_FIELDS = ("cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified",
                       "cdn-cache-control")
"""Fields a 304 carries from the selected representation (RFC 9110 §15.4.5)."""


def merge_not_modified(stored: Pairs, fresh: Pairs) -> Pairs:
    """§3.2 / §4.3.4: update stored fields with the 304's, except Content-Length and framing."""
    skip = HOP_BY_HOP | {"content-length", "portico-cache-control", "cache-status"}
    incoming = [(k, v) for k, v in fresh if k.lower() not in skip]
    names = {k.lower() for k, _ in incoming}
    return [(k, v) for k, v in stored if k.lower() not in names] + incoming


def validator_mismatch(stored: HeaderSource, not_modified: HeaderSource) -> bool:
    """§4.3.4: a 304 whose strong ETag differs from the stored one doesn't select it."""
    new = header(not_modified, "etag")
    old = header(stored, "etag")
    return bool(new and old and not new.startswith("W/") and new.strip() != old.strip())


# --- ranges (RFC 9110 §14) --------------------------------------------------------------------

def parse_range(value: str | None, length: int) -> tuple[int, int] | str | None:
    """One byte range -> (first, last) inclusive; "unsatisfiable"; or None to send the whole body
    (no/invalid Range, or several ranges, which a server may answer in full)."""
    if not value:
        return None
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if not dash:
        return None
    first_s, last_s = first_s.strip(), last_s.strip()
    if first_s == "":
        if not last_s.isdigit():
            return None
        n = int(last_s)
        if n == 0:
            return "unsatisfiable"
        return (max(0, length - n), length - 1) if length else "unsatisfiable"
    if not first_s.isdigit() or (last_s and not last_s.isdigit()):
        return None
    first = int(first_s)
    last = int(last_s) if last_s else length - 1
    if last_s and last < first:
        return None
    if first >= length:
        return "unsatisfiable"
    return first, min(last, length - 1)


def if_range_allows(request_headers: HeaderSource, stored: HeaderSource) -> bool:
    """RFC 9110 §13.1.5: If-Range must match the stored validator strongly, else send it all."""
    value = header(request_headers, "if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"'):
        etag = header(stored, "etag")
        return bool(etag) and etag.strip() == value
    lm = header(stored, "last-modified")
    return bool(lm) and http_date(lm) == http_date(value)


# --- Cache-Status (RFC 9211) ------------------------------------------------------------------

def cache_status(*, hit: bool = False, fwd: str | None = None, fwd_status: int | None = None,
                 stored: bool = False, ttl: float | None = None, collapsed: bool = False,
                 detail: str | None = None, name: str = "portico") -> str:
    """One Cache-Status list member, e.g. `portico; hit; ttl=42` or `portico; fwd=miss; stored`."""
    parts = [name]
    if hit:
        parts.append("hit")
    if fwd:
        parts.append(f"fwd={fwd}")
    if fwd_status is not None:
        parts.append(f"fwd-status={fwd_status}")
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if ttl is not None:
        parts.append(f"ttl={int(ttl) if ttl >= 0 else -int(-ttl + 0.999)}")
    if detail:
        parts.append(f'detail="{detail}"' if not re.fullmatch(r"[A-Za-z*][A-Za-z0-9_\-.:/*]*", detail)
                     else f"detail={detail}")
    return "; ".join(parts)
