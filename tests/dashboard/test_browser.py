"""The dashboard in a real headless Chromium (Debian's `chromium`) through the real gateway.

One browser for the module (starting Chromium is the slow part). Screenshots of the phone
and desktop layouts are saved under $PORTICO_ARTIFACTS/dashboard (default: pytest's tmp dir).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from addons import dashboard_query as dq
from proxy.cli import main
from tests.dashboard.conftest import DASH, PREFIX, USERS
from tests.dashboard.data import RANGE
from tests.tracking.cdp import Browser, chromium_path, open_page

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (apt-get install chromium)")

VIEWS = ["overview", "accounts", "enrolments", "outreach", "funnel", "map", "security"]


class Session:
    """A browser page driven from the test thread (the CDP client runs on its own loop)."""

    def __init__(self, browser: Browser) -> None:
        self.loop = asyncio.new_event_loop()
        self.page = self.run(open_page(browser))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def js(self, expression: str) -> Any:
        return self.run(self.page.evaluate(expression))

    def call(self, method: str, **params: Any) -> Any:
        return self.run(self.page.call(method, **params))

    def goto(self, url: str) -> None:
        self.run(self.page.navigate(url))

    def wait(self, expression: str, timeout: float = 15) -> Any:
        async def poll() -> Any:
            deadline = self.loop.time() + timeout
            while True:
                value = await self.page.evaluate(expression)
                if value:
                    return value
                if self.loop.time() > deadline:
                    raise AssertionError(f"timed out waiting for: {expression}")
                await asyncio.sleep(0.05)
        return self.run(poll())

    def settled(self) -> dict[str, str]:
        """Wait until no chart is loading; returns {chart id: state}."""
        self.wait("document.querySelector('[data-chart]') && [...document.querySelectorAll('[data-chart]')]"
                  ".every(c => c.dataset.state !== 'loading')")
        return self.js("Object.fromEntries([...document.querySelectorAll('[data-chart]')]"
                       ".map(c => [c.dataset.chart, c.dataset.state]))")

    def table(self, chart: str) -> list[list[str]]:
        """The data table of a chart: cells as text, numbers as their raw value."""
        return self.js(f"[...document.querySelectorAll('[data-chart=\"{chart}\"] table.data tbody tr')]"
                       ".map(tr => [...tr.children].map(td => td.dataset.value ?? td.textContent))")

    def click(self, selector: str) -> None:
        """A real mouse click, after scrolling the element into view."""
        self.js(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}}); true")
        self.run(self.page.click(selector))

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.run(self.page.close())
        self.loop.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(tmp_path_factory.mktemp("chromium"), "Mozilla/5.0 (X11; Linux x86_64) PorticoDashboardTest")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def admin(browser: Browser, dash: Any) -> Iterator[Session]:
    """A page logged in as ada (admin) through the real login form."""
    s = Session(browser)
    try:
        s.call("Page.enable")
        s.goto(dash.url + DASH + "?" + urlencode({"view": "overview", **RANGE}))
        assert s.js("location.pathname") == PREFIX + "login"
        s.js(f"document.getElementById('username').value = 'ada';"
             f"document.getElementById('password').value = {json.dumps(USERS['ada'][0])};"
             "document.querySelector('form').submit(); true")
        s.run(s.page.wait_event("Page.loadEventFired"))
        s.wait(f"location.pathname === {json.dumps(DASH)}")
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("PORTICO_ARTIFACTS")
    path = Path(root) / "dashboard" if root else tmp_path_factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def store_rows(dash: Any, **params: Any) -> list[Any]:
    q = dq.query_from_params({k: v if isinstance(v, list) else [v] for k, v in {**RANGE, **params}.items()})
    return dash.store.query(q).rows


def view_url(dash: Any, **params: Any) -> str:
    return dash.url + DASH + "?" + urlencode({**RANGE, **params}, doseq=True)


def test_non_admin_sees_403_in_the_browser(browser, dash):
    s = Session(browser)
    try:
        s.call("Network.enable")
        token = base64.b64encode(f"bob:{USERS['bob'][0]}".encode()).decode()
        s.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
        s.goto(dash.url + DASH)
        text = s.js("document.body.innerText")
        assert "403 Forbidden" in text and "admins" in text and "bob" in text
        assert s.js("typeof window.porticoDashboard") == "undefined"
    finally:
        s.close()


def test_login_returns_to_the_view_and_overview_numbers_match_the_store(admin, dash):
    assert parse_qs(admin.js("location.search.slice(1)"))["view"] == ["overview"]
    states = admin.settled()
    assert set(states.values()) == {"ready"}, states
    kpi = {k: float(v) for k, v in admin.js("Object.fromEntries([...document.querySelectorAll('[data-kpi]')]"
                                             ".map(e => [e.dataset.kpi, e.dataset.value]))").items()}
    assert kpi["requests"] == store_rows(dash, type="request", interval="none")[0].value == 600
    assert kpi["visitors"] == store_rows(dash, type="request", interval="none", metric="users")[0].value
    assert kpi["pageviews"] == 120
    by_cache = {r.keys["cache"]: r.value for r in store_rows(dash, type="request", interval="none", by="cache")}
    assert kpi["hit_ratio"] == pytest.approx(100 * (by_cache["hit"] + by_cache["stale"]) / 600)
    p95 = store_rows(dash, type="request", interval="none", metric="p95:duration_ms")[0].value
    assert kpi["p95_latency"] == pytest.approx(p95)
    # the time series (auto interval over 7 days = day) and the top paths
    series = [(r.bucket.isoformat().replace("+00:00", "Z"), r.value) for r in store_rows(dash, type="request")]
    assert [(b, float(v)) for b, v in admin.table("timeseries")] == [(b, float(v)) for b, v in series]
    paths = {r.keys["path"]: r.value for r in store_rows(dash, type="request", by="path", interval="none")}
    assert {p: float(v) for p, v in admin.table("paths")} == paths


def test_filters_and_interval_go_into_the_url_and_back(admin, dash):
    admin.goto(view_url(dash, view="overview"))
    admin.settled()
    admin.js("const f = document.getElementById('filters'); f.elements.interval.value = 'hour';"
             "f.elements.tz.value = 'Asia/Kathmandu'; f.elements.filter.value = 'browser=Firefox; status>=400'; true")
    admin.click("#filters button[type=submit]")
    admin.settled()
    params = parse_qs(admin.js("location.search.slice(1)"))
    assert params["interval"] == ["hour"] and params["tz"] == ["Asia/Kathmandu"]
    assert params["filter"] == ["browser=Firefox", "status>=400"]
    rows = store_rows(dash, type="request", interval="hour", tz="Asia/Kathmandu",
                      filter=["browser=Firefox", "status>=400"])
    table = admin.table("timeseries")
    assert len(table) == len(rows) == 7 * 24 + 1  # +05:45 buckets straddle the UTC range
    assert table[0][0] == dq.format_time(rows[0].bucket) == "2026-10-05T05:00:00+05:45"  # local hours
    assert sum(float(v) for _, v in table) == sum(r.value for r in rows) > 0
    # the bookmark reproduces the view: reload the URL, same form values and data
    admin.goto(admin.js("location.href"))
    admin.settled()
    assert admin.js("document.getElementById('filters').elements.filter.value") == "browser=Firefox; status>=400"
    assert admin.table("timeseries") == table
    # the series picker is state too
    admin.click("[data-series=p95_latency]")
    admin.wait("new URLSearchParams(location.search).get('series') === 'p95_latency'")
    admin.settled()
    assert admin.js("document.querySelector('[data-chart=timeseries] h2').textContent") == "p95 latency over time"


def test_csv_download_equals_portico_export(admin, dash, tmp_path):
    admin.goto(view_url(dash, view="accounts", org="acme", interval="day", tz="Europe/Berlin"))
    states = admin.settled()
    assert states["accounts"] == "ready"
    href = admin.js("document.querySelector('[data-chart=accounts] a.csv').href")
    params = parse_qs(urlsplit(href).query)
    assert params["preset"] == ["users"] and params["org"] == ["acme"] and params["tz"] == ["Europe/Berlin"]
    csv_text = admin.js(f"fetch({json.dumps(href)}).then(r => r.text())")
    out = tmp_path / "export.csv"
    assert main(["export", "users", f"--from={RANGE['from']}", f"--to={RANGE['to']}", "--org=acme",
                 "--interval=day", "--tz=Europe/Berlin", "-o", str(out), "--progress", "never",
                 "--server", dash.grpc]) == 0
    assert csv_text.encode() == out.read_bytes()
    # and the chart shows that data: per type totals equal the CSV's
    rows = store_rows(dash, preset="users", org="acme", interval="day", tz="Europe/Berlin")
    table = admin.table("accounts")
    assert sum(float(v) for r in table for v in r[1:]) == sum(r.value for r in rows) > 0


def test_every_view_renders_without_errors(admin, dash):
    for view in VIEWS:
        extra = {"step": ["signup.started", "signup.done"]} if view == "funnel" else {}
        admin.goto(view_url(dash, view=view, **extra))
        states = admin.settled()
        assert "error" not in states.values(), (view, states)
        assert "ready" in states.values(), (view, states)
        assert admin.js(f"document.querySelector('nav a[data-view={view}]').getAttribute('aria-current')") == "page"


def test_outreach_funnel_and_map_show_the_store_numbers(admin, dash):
    admin.goto(view_url(dash, view="outreach"))
    admin.settled()
    summary = {r[0]: [float(x) for x in r[1:6]] for r in admin.table("outreach_summary")}
    # sends, human opens, machine opens, human clicks, conversions (last touch)
    assert summary["autumn"] == [30, 13, 5, 6, 3]
    assert summary["winter"] == [30, 6, 3, 2, 2]
    admin.goto(view_url(dash, view="funnel", step=["signup.started", "signup.form", "signup.done"], within="1d"))
    admin.settled()
    assert [r[2:5] for r in admin.table("funnel")] == [["20", "12", "8"], ["12", "5", "7"], ["5", "5", "0"]]
    admin.goto(view_url(dash, view="map", geo_precision="0"))
    admin.settled()
    cells = store_rows(dash, type="request", by="geo_cell", interval="none", geo_precision="0")
    admin.wait("document.querySelector('.land') && document.querySelector('.land').getAttribute('d').length > 1000")
    assert admin.js("document.querySelectorAll('.map circle.dot').length") == len(cells) == 5


def test_map_box_filter_applies_to_the_url_and_the_data(admin, dash):
    admin.goto(view_url(dash, view="map", geo_precision="0"))
    admin.settled()
    admin.click(".maptools button:nth-child(4)")  # Draw box
    # drag over Europe: map x = lon + 180, y = 90 - lat in a 360 x 180 view box
    box = admin.js("(() => { const r = document.querySelector('.map svg').getBoundingClientRect();"
                   "return [r.left, r.top, r.width / 360, r.height / 180]; })()")
    left, top, sx, sy = box
    start = (left + (180 - 15) * sx, top + (90 - 60) * sy)
    end = (left + (180 + 30) * sx, top + (90 - 40) * sy)
    for kind, (x, y) in (("mousePressed", start), ("mouseMoved", end), ("mouseReleased", end)):
        admin.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
    admin.wait("new URLSearchParams(location.search).get('bbox')")
    admin.settled()
    bbox = [float(x) for x in parse_qs(admin.js("location.search.slice(1)"))["bbox"][0].split(",")]
    assert bbox == pytest.approx([40, -15, 60, 30], abs=1.0)
    assert admin.js("document.querySelectorAll('.map circle.dot').length") == 2  # Berlin and Paris
    # the other views are filtered by the same box
    admin.click("nav a[data-view=overview]")
    admin.settled()
    expected = store_rows(dash, type="request", interval="none", bbox=",".join(str(b) for b in bbox))[0].value
    assert float(admin.js("document.querySelector('[data-kpi=requests]').dataset.value")) == expected < 600


def test_bad_filter_shows_the_error_instead_of_empty_charts(admin, dash):
    admin.goto(view_url(dash, view="overview", filter="status>=lots"))
    states = admin.settled()
    assert states["timeseries"] == "error"
    text = admin.js("document.querySelector('[data-chart=timeseries] .status').textContent")
    assert "filter" in text and "needs a number" in text and "request id" in text
    admin.goto(view_url(dash, view="overview", filter="path=/nothing-like-this"))
    states = admin.settled()
    assert states["timeseries"] == "empty" and states["paths"] == "empty"


@pytest.mark.parametrize(("width", "height", "name"), [(360, 740, "phone"), (1280, 900, "desktop")])
def test_layouts_have_no_horizontal_overflow(admin, dash, artifacts, width, height, name):
    admin.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
               mobile=width < 600)
    try:
        for view in ("overview", "enrolments", "map"):
            admin.goto(view_url(dash, view=view))
            admin.settled()
            admin.js("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            widths = admin.js("[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]")
            assert widths[0] <= width and widths[1] <= width, (view, widths)
            admin.screenshot(artifacts / f"dashboard-{view}-{name}.png")
        if width < 600:  # axes shorten on a phone: day labels like 5/10, not "5 Oct"
            admin.goto(view_url(dash, view="overview"))
            admin.settled()
            labels = admin.js("Chart.getChart(document.querySelector('[data-chart=timeseries] canvas'))"
                              ".data.labels")
            assert labels[0] == "5/10"
    finally:
        admin.call("Emulation.clearDeviceMetricsOverride")


def test_enrolments_are_stacked_by_type_with_the_store_totals(admin, dash):
    admin.goto(view_url(dash, view="enrolments", org="globex"))
    admin.settled()
    headers = admin.js("[...document.querySelectorAll('[data-chart=enrolments] thead th')].map(t => t.textContent)")
    assert headers[1:] == ["enrolment.enrolled", "enrolment.unenrolled"]
    rows = store_rows(dash, preset="enrolments", org="globex")
    assert sum(float(v) for r in admin.table("enrolments") for v in r[1:]) == sum(r.value for r in rows) > 0
    totals = admin.js("Object.fromEntries([...document.querySelectorAll('[data-kpi^=\"supply:\"]')]"
                      ".map(e => [e.dataset.kpi.slice(7), Number(e.dataset.value)]))")
    for name, value in totals.items():
        expected = store_rows(dash, type="enrolment.enrolled", metric=f"sum:supplies.{name}", interval="none",
                              org="globex")
        assert value == sum(r.value for r in expected)
    assert set(totals) == {"Childcare", "Meals", "Transport"}


def test_page_is_light_and_everything_comes_from_the_gateway(admin, dash):
    admin.goto(view_url(dash, view="map"))
    admin.settled()
    resources = admin.js("performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation'))"
                         ".map(e => [e.name, e.encodedBodySize || 0])")
    assert all(name.startswith(dash.url + "/") for name, _ in resources), resources
    static = sum(size for name, size in resources if "/static/" in name or name.split("?")[0].endswith("/dashboard/"))
    assert static < 150_000, static  # gzip: Chart.js ~70 KB, map ~21 KB, our JS/CSS/HTML ~15 KB
