"""Cookieless visitor ids (daily salts) and sessions (30 minutes idle).

Not an addon: one `Visitors` object is shared by `tracking.py`, `snippet.py` and
`outreach.py` (built in proxy/tracking_setup.py), so a beacon, a click and the page
request of the same person carry the same visitor and session ids.

- Visitor id = keyed BLAKE2b(daily salt, site | client address | User-Agent), 16 hex chars. The
  salt is 32 random bytes made per UTC day and kept in `<dir>/<YYYY-MM-DD>.salt` (mode
  0600) so several gateway processes agree; today's and yesterday's are kept, older ones
  are deleted, so yesterday's ids can't be recomputed after tomorrow and an address can't
  be linked across days. No raw address is ever stored.
- A session ends after `session_timeout` without a request; one continued across
  midnight keeps its session id (yesterday's salt finds it).
- Sessions also remember whether the visitor looked like a browser (fetched something
  other than HTML, or sent a beacon) and their campaign attribution (server-side
  fallback when the attribution cookie is refused).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

VISITOR_IDS = 50_000  # visitor ids remembered per (salt, site, address, User-Agent)
_SALT_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})\.salt$")


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


class Salts:
    """Today's and yesterday's salts, persisted in `directory`; older files deleted."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.clock = clock
        self._day = ""
        self._today = b""
        self._yesterday: bytes | None = None
        self._lock = threading.Lock()
        self._day_span = (0.0, 0.0)  # [start, end) of self._day in epoch seconds

    def current(self) -> tuple[bytes, bytes | None]:
        """(today's salt, yesterday's salt or None); rotates when the UTC day changes."""
        now = self.clock()
        start, end = self._day_span
        if not start <= now < end:  # formatting the day costs more than the hash: only at midnight
            day = utc_day(now)
            with self._lock:
                if day != self._day:
                    self._rotate(day)
                first = now - now % 86400
                self._day_span = (first, first + 86400)
        return self._today, self._yesterday

    def at(self, when: float) -> tuple[bytes, bytes | None]:
        """`current()` for a request seen at `when` and visited now: one captured just before
        midnight and visited just after gets the day it came in (its id in yesterday's salt)."""
        today, yesterday = self.current()
        if when < self._day_span[0] and yesterday is not None:
            return yesterday, None
        return today, yesterday

    def _rotate(self, day: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        yday = (datetime.strptime(day, "%Y-%m-%d") - timedelta(days=1)).strftime("%Y-%m-%d")
        self._today = self._read_or_create(day)
        self._yesterday = self._read(yday)
        for entry in self.directory.iterdir():
            m = _SALT_NAME.match(entry.name)
            if m and m.group(1) not in (day, yday):
                entry.unlink(missing_ok=True)  # older salts: ids of those days can't be recomputed
        self._day = day

    def _read(self, day: str) -> bytes | None:
        try:
            text = (self.directory / f"{day}.salt").read_text(encoding="ascii").strip()
        except OSError:
            return None
        return bytes.fromhex(text) if len(text) == 64 else None

    def _read_or_create(self, day: str) -> bytes:
        path = self.directory / f"{day}.salt"
        existing = self._read(day)
        if existing is not None:
            return existing
        salt = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its salt
            time.sleep(0.01)
            return self._read(day) or salt
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(salt.hex())
        return salt


def visitor_hash(salt: bytes, site: str, address: str, user_agent: str) -> str:
    # keyed BLAKE2b is a MAC in its own right (RFC 7693) and costs a fraction of HMAC-SHA256
    # through OpenSSL (0.5 vs 1.4-7 us), on every request
    data = f"{site}|{address}|{user_agent}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, key=salt, digest_size=8).hexdigest()


@dataclass
class Session:
    visitor: str
    session: str
    started: float
    last_seen: float
    hits: int = 0
    pageviews: int = 0
    browser_seen: bool = False  # fetched an asset or sent a beacon: looks like a real browser
    campaign_first: str = ""
    campaign_last: str = ""
    goals_done: set[str] = field(default_factory=set)
    # session.start recorded: by addons/tracking.py, for the first flow it records in the
    # session, which is not always the flow whose visit() started it (an email click, a
    # beacon or an outbound redirect answered by Portico can start one first)
    announced: bool = False


@dataclass(frozen=True, slots=True)
class Visit:
    visitor: str
    session: str
    new_session: bool
    state: Session = field(compare=False)


class Visitors:
    """Visitor ids and in-memory sessions (bounded; the least recently seen go first)."""

    def __init__(self, salts: Salts, session_timeout: float = 1800.0, max_sessions: int = 200_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.salts = salts
        self.session_timeout = session_timeout
        self.max_sessions = max_sessions
        self.clock = clock
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        # (salt, site, address, User-Agent) -> today's id: a visitor sends many requests, and
        # the hash is the larger part of `visit`; in memory only, bounded, keyed by the salt
        self._ids: dict[tuple[bytes, str, str, str], str] = {}
        # called before each `visit`: whoever captured flows to visit later (tracking)
        # visits them first, so sessions see requests in the order they came
        self.catch_up: list[Callable[[], None]] = []

    def visitor_id(self, site: str, address: str, user_agent: str) -> str:
        return self._today_id(self.salts.current()[0], site, address, user_agent)

    def _today_id(self, today: bytes, site: str, address: str, user_agent: str) -> str:
        """visitor_hash under today's salt, remembered (bounded) per (salt, site, address, UA)."""
        key = (today, site, address, user_agent)
        vid = self._ids.get(key)
        if vid is None:
            if len(self._ids) >= VISITOR_IDS:
                self._ids.clear()  # also drops the ids of an old salt
            vid = self._ids[key] = visitor_hash(today, site, address, user_agent)
        return vid

    def visit(self, site: str, address: str, user_agent: str) -> Visit:
        """The visitor and session for one request now; starts a session when none is live."""
        for catch_up in self.catch_up:
            catch_up()
        return self.visit_at(self.clock(), site, address, user_agent)

    def visit_at(self, now: float, site: str, address: str, user_agent: str) -> Visit:
        """`visit` for a request seen at `now` (this clock) and not visited then: called in
        the order the requests came, after every earlier one. `now` must be on the salts'
        clock too (both are `time.time` outside tests): it picks the day's salt."""
        today, yesterday = self.salts.at(now)
        vid = self._today_id(today, site, address, user_agent)
        state = self.sessions.get(vid)
        if state is None and yesterday is not None:
            old = self.sessions.pop(visitor_hash(yesterday, site, address, user_agent), None)
            if old is not None:  # a session running across midnight continues under today's id
                old.visitor = vid
                state = old
        new = state is None or now - state.last_seen > self.session_timeout
        if new:
            prev = state
            state = Session(vid, secrets.token_hex(8), now, now)
            if prev is not None:  # attribution outlives the session
                state.campaign_first, state.campaign_last = prev.campaign_first, prev.campaign_last
        assert state is not None
        state.last_seen = now
        state.hits += 1
        self.sessions[vid] = state
        self.sessions.move_to_end(vid)
        while len(self.sessions) > self.max_sessions:
            self.sessions.popitem(last=False)
        return Visit(vid, state.session, new, state)

    def expired(self) -> list[Session]:
        """Remove and return sessions idle for longer than the timeout (oldest first)."""
        now = self.clock()
        out = []
        while self.sessions:
            vid, state = next(iter(self.sessions.items()))
            if now - state.last_seen <= self.session_timeout:
                break
            del self.sessions[vid]
            out.append(state)
        return out
