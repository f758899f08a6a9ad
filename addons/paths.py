"""Path matching shared by the addons that scope themselves to route prefixes (not an addon)."""

from __future__ import annotations


def prefix_matches(prefix: str, path: str) -> bool:
    """Segment-boundary prefix match on the path without query."""
    base = prefix.rstrip("/")
    if not base:
        return True
    return path == base or path.startswith(base + "/")
