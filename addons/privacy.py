"""What may be kept of an address or a URL: network instead of address, no query strings.

Not an addon: a helper for `tracking.py`, `accesslog.py` and `snippet.py`.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from urllib.parse import parse_qsl


@lru_cache(maxsize=4096)  # a site sees few distinct clients at once; parsing costs ~15 us
def truncate_address(address: str, v4_prefix: int = 24, v6_prefix: int = 48) -> str:
    """'203.0.113.77' -> '203.0.113.0/24'; the full address only with /32 or /128; '' if unparsable."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    prefix = v4_prefix if ip.version == 4 else v6_prefix
    if prefix >= ip.max_prefixlen:
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def clean_path(path: str, allowlist: frozenset[str]) -> tuple[str, dict[str, str]]:
    """(path without query except allow-listed parameters, all query parameters)."""
    base, _, query = path.partition("?")
    if not query:
        return base, {}
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [f"{k}={v}" for k, v in pairs if k in allowlist]
    return (base + "?" + "&".join(kept)) if kept else base, dict(pairs)
