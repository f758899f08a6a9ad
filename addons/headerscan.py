"""Read several headers of a mitmproxy message in one pass.

Not an addon: a helper for the tracking addons, which run on every response; it also
holds the identity header names Forwarded and Auth both need.

Why: `Headers.get(name)` goes through `Mapping.get` -> `__getitem__` -> `get_all`, which
lower-cases and compares every field for every lookup (~2-4 us each in py-spy). The
tracking hooks need five to eight headers per flow; one loop over the raw fields costs
about as much as one `get`. Values are decoded as mitmproxy decodes them (UTF-8 with
surrogateescape) and repeated fields are folded with ", " as `Headers.get` folds them.
"""

from __future__ import annotations

from mitmproxy.http import Headers

IDENTITY_HEADERS = (
    "remote-user", "remote-groups", "remote-name", "remote-email",
    "x-remote-user", "x-remote-groups",
    "x-forwarded-user", "x-forwarded-groups", "x-forwarded-email", "x-forwarded-preferred-username",
    "x-auth-request-user", "x-auth-request-email", "x-auth-request-groups",
    "x-auth-request-preferred-username", "x-authenticated-user", "x-user", "x-portico-user",
    "x-portico-groups",
)
"""Headers upstream modules may trust as "who is this": never accepted from clients
(Forwarded strips them from every request; Auth strips the names configured in
`auth.headers` that are not among them)."""


def header_key(name: bytes) -> bytes:
    """A header name as CGI/WSGI servers read it: case and `_`/`-` don't matter
    (`Remote_User` and `remote-user` both reach the application as REMOTE_USER)."""
    return name.lower().replace(b"_", b"-")


def scan_headers(headers: Headers, wanted: frozenset[bytes]) -> dict[bytes, str]:
    """{lower-case name: value} of the `wanted` (lower-case bytes) headers present."""
    found: dict[bytes, bytes] = {}
    for name, value in headers.fields:
        key = name.lower()
        if key in wanted:
            prev = found.get(key)
            found[key] = value if prev is None else prev + b", " + value
    return {k: v.decode("utf-8", "surrogateescape") for k, v in found.items()}


def names(*header_names: str) -> frozenset[bytes]:
    """The `wanted` set for `scan_headers` (lower-cased, as bytes)."""
    return frozenset(n.lower().encode() for n in header_names)
