"""Who may open the dashboard, through the real gateway and its auth addon."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from addons.dashboard import decide_access, login_location
from tests.dashboard.conftest import DASH, PREFIX
from tests.integration.harness import request


@pytest.mark.parametrize(("user", "groups", "verdict"), [
    (None, None, "anonymous"), ("", ("admins",), "anonymous"), ("ada", ("admins",), "admin"),
    ("ada", ["staff", "admins"], "admin"), ("bob", ("staff",), "forbidden"), ("bob", None, "forbidden"),
    ("eve", ("Admins",), "forbidden"),  # group names are exact
])
def test_access_decision(user, groups, verdict):
    assert decide_access(user, groups, ("admins",)).verdict == verdict


def test_login_location_keeps_the_full_path_and_query():
    loc = login_location("/_portico/", "/_portico/dashboard/?view=map&filter=org%3Dacme")
    assert parse_qs(urlsplit(loc).query)["next"] == ["/_portico/dashboard/?view=map&filter=org%3Dacme"]


def test_anonymous_page_request_is_sent_to_login_with_next(dash):
    status, headers, _ = dash.get("", {"view": "map"}, user=None, headers={"Accept": "text/html"})
    assert status == 302
    loc = urlsplit(headers["location"])
    assert loc.path == PREFIX + "login"
    assert parse_qs(loc.query)["next"] == [DASH + "?view=map"]
    # and the login page is really there (the auth addon answers it)
    assert request(dash.url, headers["location"])[0] == 200


def test_anonymous_api_request_gets_401(dash):
    status, _, _ = dash.get("api/query", {"type": "request"}, user=None, headers={"Accept": "application/json"})
    assert status == 401


def _flow(path, user=None, groups=None):
    from mitmproxy.test import tflow

    from addons import metadata
    f = tflow.tflow()
    f.request.path = path
    f.metadata[metadata.LISTENER] = "reverse"
    f.metadata[metadata.REQUEST_ID] = "rid-1"
    if user:
        f.metadata[metadata.USER] = user
        f.metadata[metadata.GROUPS] = groups or ()
    return f


@pytest.mark.parametrize(("path", "user", "groups", "status"), [
    (DASH + "?view=map", None, None, 302),       # no auth addon in front (or a bypass rule): still closed
    (DASH + "api/query?type=x", None, None, 401),
    (DASH, "bob", ("staff",), 403),
    (DASH + "api/query", "bob", ("staff",), 403),
    (DASH, "ada", ("admins",), 200),
    (DASH + "api/query?type=x", "ada", ("admins",), 503),  # telemetry.enabled: false -> no store
    ("/_portico/dashboardx", "ada", ("admins",), None),  # not ours
    ("/elsewhere", None, None, None),
])
def test_addon_answers_by_itself_when_no_acl_ran(path, user, groups, status):
    import asyncio

    from addons.dashboard import Dashboard, DashboardSettings
    f = _flow(path, user, groups)
    asyncio.run(Dashboard(DashboardSettings(), store=None).request(f))
    assert (f.response.status_code if f.response else None) == status
    if status == 302:
        assert f.response.headers["location"] == "/_portico/login?next=/_portico/dashboard/%3Fview%3Dmap"
    if status == 401:
        assert json.loads(f.response.content)["login"].startswith("/_portico/login?next=")
    if status == 503:
        assert "telemetry.enabled: false" in json.loads(f.response.content)["error"]["message"]


# One gateway per process at a time: mitmproxy's `ctx` is process-global, and a second
# master started beside the session gateway takes over its options. The disabled
# dashboard is covered in test_config.py (not in the pipeline), telemetry off above.


@pytest.mark.parametrize("path", ["", "static/dashboard.js", "api/query", "api/query.csv"])
def test_non_admin_is_refused_everywhere(dash, path):
    status, headers, body = dash.get(path, {"type": "request"} if "api" in path else None, user="bob")
    assert status == 403
    assert b"admins" in body  # says which group is needed


def test_admin_gets_the_page_with_strict_csp_and_no_external_assets(dash):
    status, headers, body = dash.get("")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"
    text = body.decode()
    assert "Signed in as <b>ada</b>" in text and "{{" not in text
    assert "http://" not in text and "https://" not in text


def test_wrong_password_is_not_an_admin(dash):
    import base64
    bad = {"Authorization": "Basic " + base64.b64encode(b"ada:nope").decode()}
    status, _, _ = dash.get("", user=None, headers=bad)
    assert status == 401


@pytest.mark.parametrize("name", ["../dashboard.py", "..%2F..%2Fauth.py", "vendor/../../dashboard.py", "index.html",
                                  "nope.js", ""])
def test_static_files_outside_the_directory_are_not_served(dash, name):
    assert dash.get("static/" + name)[0] == 404


def test_static_assets_are_gzipped_when_accepted_and_revalidate_with_etag(dash):
    import gzip
    status, headers, body = dash.get("static/vendor/chart.umd.min.js", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body).startswith(b"/*!\n * Chart.js v4.4.9")
    assert len(body) < 80_000
    status, _, _ = dash.get("static/vendor/chart.umd.min.js", headers={"If-None-Match": headers["etag"]})
    assert status == 304


def test_unknown_dashboard_path_and_post_are_refused(dash):
    assert dash.get("nothing-here")[0] == 404
    status, _, _ = request(dash.url, DASH, method="POST", headers={"Authorization": "Basic YWRhOmFkYS1wdw=="})
    assert status == 405
