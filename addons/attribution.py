"""Campaign attribution: the signed first-party cookie and goal matching.

Not an addon: a helper for `outreach.py` (sets the cookie on a campaign click),
`tracking.py` (path goals) and `snippet.py` (event goals sent by the page).

The cookie `portico_attr` holds `first~last~unix-time~signature`: the first and the last
campaign this browser arrived from, signed so a visitor can't credit a campaign by
writing the cookie. Campaign names are `[A-Za-z0-9_.-]{1,64}`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie

from addons.signing import sign, verify

COOKIE = "portico_attr"
CAMPAIGN_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Goal:
    """A conversion: an event type sent from the page (`event`) or a visited path prefix (`path`)."""

    name: str
    event: str = ""
    path: str = ""

    def matches_path(self, path: str) -> bool:
        if not self.path:
            return False
        base = self.path.rstrip("/")
        return path == self.path or path == base or path.startswith(base + "/")


@dataclass(frozen=True, slots=True)
class Attribution:
    first: str
    last: str
    since: int  # unix time of the first touch


def make_cookie_value(secret: bytes, first: str, last: str, since: int) -> str:
    sig = sign(secret, "attr", {"f": first, "l": last, "t": str(since)})
    return f"{first}~{last}~{since}~{sig}"


def read_cookie_value(secret: bytes, value: str, window: float, now: float | None = None) -> Attribution | None:
    """The attribution in a cookie value, or None when absent, forged or older than `window` s."""
    parts = value.split("~")
    if len(parts) != 4 or not all(CAMPAIGN_RE.match(p) for p in parts[:2]) or not parts[2].isdigit():
        return None
    first, last, since, sig = parts
    if not verify(secret, "attr", {"f": first, "l": last, "t": since, "s": sig}):
        return None
    if (now if now is not None else time.time()) - int(since) > window:
        return None
    return Attribution(first, last, int(since))


def from_cookie_header(secret: bytes, cookie_header: str, window: float) -> Attribution | None:
    """The attribution from a request's Cookie header (None when there is none)."""
    if COOKIE not in cookie_header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except Exception:  # noqa: BLE001 - a malformed Cookie header means "no attribution"
        return None
    morsel = jar.get(COOKIE)
    return read_cookie_value(secret, morsel.value, window) if morsel else None


def set_cookie_header(secret: bytes, campaign: str, previous: Attribution | None, max_age: int,
                      secure: bool, now: float | None = None) -> str:
    """The Set-Cookie value after a click on `campaign` (first touch kept, last replaced)."""
    ts = int(now if now is not None else time.time())
    first, since = (previous.first, previous.since) if previous else (campaign, ts)
    value = make_cookie_value(secret, first, campaign, since)
    return (f"{COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"
            + ("; Secure" if secure else ""))


def goals_for_path(goals: Sequence[Goal], path: str) -> list[Goal]:
    return [g for g in goals if g.matches_path(path)]


def goals_for_event(goals: Sequence[Goal], event_type: str) -> list[Goal]:
    return [g for g in goals if g.event and g.event == event_type]
