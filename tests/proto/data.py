"""Deterministic sample events for the gRPC and CLI tests (users, enrolments, requests)."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any

START = datetime(2026, 11, 1, tzinfo=timezone.utc)
ORGS = ("acme", "globex", "initech")
PROJECTS = ("food", "shelter")
NEEDS = ("Legal Help", "Housing", "Food")
SUPPLIES = ("Childcare", "Transport")
CITIES = {"berlin": (52.52, 13.40), "paris": (48.86, 2.35)}


def sample_events(n: int, seed: int = 7, days: int = 10) -> list[dict[str, Any]]:
    """`n` events in JSON form spread over `days` days from START, every 4th a request."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        t = START + timedelta(seconds=rng.randrange(days * 86400), microseconds=rng.randrange(1_000_000))
        lat, lon = CITIES[rng.choice(sorted(CITIES))]
        attrs: dict[str, Any] = {"org": rng.choice(ORGS), "project": rng.choice(PROJECTS),
                                 "user": f"u{rng.randrange(50)}", "lat": lat, "lon": lon}
        kind = i % 4
        if kind == 0:
            etype = rng.choice(("user.joined", "user.left", "user.role_changed"))
        elif kind == 1:
            etype = rng.choice(("enrolment.enrolled", "enrolment.unenrolled"))
            attrs["needs"] = rng.sample(NEEDS, rng.randrange(1, 3))
            attrs["supplies"] = {rng.choice(SUPPLIES): rng.randrange(1, 5)}
        elif kind == 2:
            etype = "signup"
        else:
            etype = "request"
            attrs["status"] = rng.choice((200, 200, 404, 500))
            attrs["ms"] = round(rng.uniform(1, 300), 3)
        events.append({"id": f"ev-{seed}-{i:06d}", "time": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                       "type": etype, "attrs": attrs})
    return events


def jsonl(events: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)
