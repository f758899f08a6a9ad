"""Deterministic seed events for the dashboard tests: one week of every kind the views show."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

START = datetime(2026, 10, 5, tzinfo=timezone.utc)  # a Monday, well before "now" in tests
END = START + timedelta(days=7)
RANGE = {"from": "2026-10-05T00:00:00Z", "to": "2026-10-12T00:00:00Z"}
CITIES = [(52.52, 13.40), (48.86, 2.35), (40.71, -74.01), (-33.87, 151.21), (35.68, 139.69)]


def _t(rng: random.Random, day: int | None = None) -> str:
    d = rng.randrange(7) if day is None else day
    return (START + timedelta(days=d, seconds=rng.randrange(86400))).isoformat()


def seed_events(n_requests: int = 600) -> list[dict[str, Any]]:
    rng = random.Random(9)
    out: list[dict[str, Any]] = []
    for i in range(n_requests):
        lat, lon = rng.choice(CITIES)
        out.append({"id": f"req-{i:05d}", "type": "request", "time": _t(rng), "attrs": {
            "path": rng.choice(["/", "/about", "/news", "/api/items", "/login"]),
            "status": rng.choice([200] * 12 + [304, 404, 403, 500, 502]),
            "cache": rng.choice(["hit", "miss", "miss", "stale", "bypass"]),
            "resp_bytes": rng.randrange(200, 50_000), "duration_ms": round(rng.uniform(1, 900), 2),
            "browser": rng.choice(["Firefox", "Chrome", "Safari"]), "os": rng.choice(["Linux", "Android", "iOS"]),
            "device": rng.choice(["desktop", "mobile", "tablet"]), "route": rng.choice(["site", "api"]),
            "ref_class": rng.choice(["direct", "search", "social", "internal"]),
            "visitor": f"v{rng.randrange(40)}", "lat": lat, "lon": lon, "bot": False}})
    for i in range(120):
        out.append({"id": f"pv-{i}", "type": "pageview", "time": _t(rng),
                    "attrs": {"url": "/", "visitor": f"v{rng.randrange(40)}"}})
    for i in range(60):
        t = rng.choice(["user.joined"] * 3 + ["user.left", "user.role_changed"])
        out.append({"id": f"acc-{i}", "type": t, "time": _t(rng), "attrs": {
            "user": f"u{i}", "org": rng.choice(["acme", "globex"]), "project": rng.choice(["alpha", "beta"])}})
    for i in range(50):
        t = rng.choice(["enrolment.enrolled"] * 3 + ["enrolment.unenrolled"])
        supplies = {k: rng.randrange(1, 10) for k in rng.sample(["Childcare", "Meals", "Transport"], 2)}
        out.append({"id": f"enr-{i}", "type": t, "time": _t(rng), "attrs": {
            "org": rng.choice(["acme", "globex"]), "project": rng.choice(["alpha", "beta"]),
            "supplies": supplies, "needs": rng.sample(["Legal Help", "Housing", "Language"], 2)}})
    for camp in ("autumn", "winter"):
        for i in range(30):
            out.append({"id": f"sent-{camp}-{i}", "type": "email_sent", "time": _t(rng, 0), "attrs": {"campaign": camp}})
        for i in range(18 if camp == "autumn" else 9):
            out.append({"id": f"open-{camp}-{i}", "type": "email_open", "time": _t(rng), "attrs": {
                "campaign": camp, "machine": i % 4 == 0, "visitor": f"m{i}"}})
        for i in range(7 if camp == "autumn" else 3):
            out.append({"id": f"click-{camp}-{i}", "type": "link_click", "time": _t(rng), "attrs": {
                "campaign": camp, "machine": i == 0, "visitor": f"m{i}"}})
    for i in range(5):
        out.append({"id": f"conv-{i}", "type": "conversion", "time": _t(rng), "attrs": {
            "goal": "signup", "campaign_first": "autumn", "campaign_last": "winter" if i < 2 else "autumn"}})
    # funnel: 20 users start, 12 view, 5 convert (in order, within a day)
    for u in range(20):
        t0 = START + timedelta(days=u % 6, hours=u)
        out.append({"id": f"f1-{u}", "type": "signup.started", "time": t0.isoformat(), "attrs": {"user": f"p{u}"}})
        if u < 12:
            out.append({"id": f"f2-{u}", "type": "signup.form", "time": (t0 + timedelta(minutes=5)).isoformat(),
                        "attrs": {"user": f"p{u}"}})
        if u < 5:
            out.append({"id": f"f3-{u}", "type": "signup.done", "time": (t0 + timedelta(minutes=9)).isoformat(),
                        "attrs": {"user": f"p{u}"}})
    for i in range(24):
        t = rng.choice(["moderation.blocked", "moderation.warned", "moderation.alert", "phishing.detected",
                        "access.denied"])
        out.append({"id": f"sec-{i}", "type": t, "time": _t(rng), "attrs": {
            "action": rng.choice(["block", "warn"]), "kind": rng.choice(["lookalike", "list"]),
            "rule": rng.choice(["staff-only", "default"])}})
    return out
