"""`portico demo`: the gateway in front of a small built-in module, ready in seconds.

The demo module is a real HTTP server on a loopback port (a thread): a few HTML pages with
internal and external links, a forum page that accepts posts, a members-only area, a
JSON API and a stylesheet, with the cache headers a real module would send. `prepare()`
writes nothing but a data directory; the configuration is built in memory from the same
YAML a user would write, so the demo exercises the real loader.
"""

from __future__ import annotations

import html
import json
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from proxy.config import PorticoConfig, parse_config

PAGE = """<!doctype html><html lang=en><head><meta charset=utf-8>
<meta name=viewport content="width=device-width,initial-scale=1">
<title>{title} · Demo org</title><link rel=stylesheet href="/static/style.css"></head>
<body><nav><a href="/">Home</a> · <a href="/about">About</a> · <a href="/forum">Forum</a> ·
<a href="/members/">Members</a> · <a href="/api/items">API</a></nav>
<main><h1>{title}</h1>{body}</main></body></html>"""

STYLE = "body{font:16px/1.5 system-ui,sans-serif;max-width:46em;margin:2em auto;padding:0 1em}nav a{margin-right:.3em}"


@dataclass
class DemoModule:
    """The demo upstream module; `start()` binds 127.0.0.1 on a free port."""

    posts: list[tuple[str, str]] = field(default_factory=lambda: [("ada", "Welcome to the forum!")])
    server: ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "DemoModule":
        module = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "demo-module/1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                return

            def do_GET(self) -> None:  # noqa: N802
                module.handle(self, "GET")

            def do_HEAD(self) -> None:  # noqa: N802
                module.handle(self, "HEAD")

            def do_POST(self) -> None:  # noqa: N802
                module.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), name="demo-module", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # --- pages -----------------------------------------------------------------------------

    def handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        path = urllib.parse.urlsplit(req.path).path
        user = req.headers.get("Remote-User")
        if path == "/" and method != "POST":
            body = ("<p>This module sits behind Portico. Every page you open is routed, cached when "
                    "allowed, and recorded as an event.</p><ul>"
                    "<li><a href='/about'>About us</a> (cacheable for 60 s: reload it to see a cache hit)</li>"
                    "<li><a href='/forum'>Forum</a> (posts are moderated)</li>"
                    "<li><a href='/members/'>Members area</a></li>"
                    "<li><a href='https://example.org/partners'>Our partners</a> (an external link)</li>"
                    "<li><a href='https://www.wikipedia.org/'>Wikipedia</a></li></ul>"
                    "<p><button type=button data-track=newsletter>Get our newsletter</button></p>")
            self._html(req, method, "Home", body, "public, max-age=10")
        elif path == "/about" and method != "POST":
            self._html(req, method, "About", f"<p>Demo org helps people find childcare and legal help.</p>"
                       f"<p>Served at {time.strftime('%H:%M:%S')}.</p>"
                       "<p>Read more at <a href='https://example.org/about'>example.org</a>.</p>",
                       "public, max-age=60")
        elif path == "/forum":
            if method == "POST":
                length = min(int(req.headers.get("Content-Length") or 0), 64 * 1024)
                form = urllib.parse.parse_qs(req.rfile.read(length).decode("utf-8", "replace"))
                message = (form.get("message") or [""])[0].strip()[:2000]
                if message:
                    self.posts.append((user or "anonymous", message))
                req.send_response(303)
                req.send_header("Location", "/forum")
                req.send_header("Content-Length", "0")
                req.end_headers()
                return
            items = "".join(f"<li><b>{html.escape(u)}</b>: {html.escape(m)}</li>" for u, m in self.posts)
            form = ("<form method=post action='/forum'><textarea name=message rows=3 cols=40></textarea>"
                    "<br><button>Post</button></form>")
            self._html(req, method, "Forum", f"<ul>{items}</ul>{form}", "no-cache")
        elif path.startswith("/members"):
            who = html.escape(user) if user else "member"
            self._html(req, method, "Members area", f"<p>Hello, {who}. Your enrolments and supplies are here.</p>",
                       "private, max-age=0")
        elif path == "/api/items":
            data = {"items": [{"id": 1, "name": "Childcare", "unit": "hours"},
                              {"id": 2, "name": "Legal Help", "unit": "sessions"}],
                    "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self._send(req, method, 200, json.dumps(data).encode(), "application/json", "public, max-age=30")
        elif path == "/static/style.css":
            self._send(req, method, 200, STYLE.encode(), "text/css", "public, max-age=86400, immutable")
        else:
            self._html(req, method, "Not found", "<p>No such page.</p>", "no-store", status=404)

    def _html(self, req: BaseHTTPRequestHandler, method: str, title: str, body: str, cache: str,
              status: int = 200) -> None:
        page = PAGE.format(title=html.escape(title), body=body).encode("utf-8")
        self._send(req, method, status, page, "text/html; charset=utf-8", cache)

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, method: str, status: int, body: bytes, ctype: str, cache: str) -> None:
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.send_header("Cache-Control", cache)
        req.end_headers()
        if method != "HEAD":
            req.wfile.write(body)


def demo_config_text(port: int, module_url: str, data_dir: Path, grpc_port: int = 50051) -> str:
    """The YAML a user would write for the demo."""
    return f"""
listen: 127.0.0.1:{port}
routes:
  - name: demo-api
    match: {{host: "*", path_prefix: /api/}}
    upstream: {module_url}
  - name: demo-site
    match: {{host: "*", path_prefix: /}}
    upstream: {module_url}
telemetry: {{path: {json.dumps(str(data_dir / 'events'))}}}
grpc: {{listen: 127.0.0.1:{grpc_port}}}
cache: {{enabled: true, path: {json.dumps(str(data_dir / 'cache'))}}}
dashboard: {{admin_groups: [demo-admins]}}
auth:
  backend: file
  users_file: {json.dumps(str(data_dir / 'users.yaml'))}
  accounts: {{group_pattern: '^(?P<org>[a-z0-9]+)-(?P<role>admins|members)$', roles: {{admins: admin, members: member}}}}
access_control:
  default_policy: bypass
  rules:
    - {{id: members, path_prefixes: [/members/], groups: [members], policy: authenticated}}
    - {{id: members-only, path_prefixes: [/members/], policy: deny}}
    - {{id: dashboard, path_prefixes: [/_portico/dashboard], policy: authenticated}}
"""


DEMO_USERS = (("alice", "alice-demo", ("members", "demo-members")), ("bob", "bob-demo", ("demo-admins",)))
"""The demo's users.yaml: alice may open /members/, bob may not (he gets the 403 page)."""


def ensure_demo_users(path: Path) -> None:
    """Write the demo users (scrypt hashes) unless the file exists; passwords are printed at start."""
    if path.exists():
        return
    from auth.users import UsersFile

    users = UsersFile(path, must_exist=False)
    for name, password, groups in DEMO_USERS:
        users.add(name, password, display_name=name.title(), email=f"{name}@demo.example", groups=groups)


def prepare(port: int, data_dir: str | Path, grpc_port: int = 50051) -> tuple[PorticoConfig, DemoModule]:
    """Start the demo module and build the gateway's configuration for it."""
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    ensure_demo_users(data / "users.yaml")
    module = DemoModule().start()
    config = parse_config(demo_config_text(port, module.url, data, grpc_port), data / "demo.yaml")
    return config, module


BATCH_WAIT = 10.0  # seconds at most for the tracking batch (BatchRecorder: 0.5 s) to reach the store


def warm_up(gateway_url: str, out: TextIO, store: Any = None) -> None:
    """A first visitor: a few requests through the gateway so the log shows traffic, cache
    hits (the Cache-Status header) and recorded events at once."""
    served = 0
    for path in ("/", "/about", "/about", "/api/items", "/api/items", "/nope"):
        start = time.monotonic()
        try:
            with urllib.request.urlopen(gateway_url + path, timeout=5) as resp:  # noqa: S310 - loopback
                status, cache = resp.status, resp.headers.get("Cache-Status", "-")
        except urllib.error.HTTPError as e:
            status, cache = e.code, e.headers.get("Cache-Status", "-")
        except OSError as e:
            print(f"  warm-up {path}: {e}", file=out)
            continue
        served += 1
        print(f"  GET {path:<12} -> {status} ({(time.monotonic() - start) * 1000:.0f} ms)  cache: {cache}", file=out)
    if store is not None:
        try:
            # request events reach the store in batches (addons/eventbatch.py): wait for the
            # newest batch (one event per request served) before counting, a few seconds at most
            deadline = time.monotonic() + BATCH_WAIT
            while True:
                store.flush(timeout=5)
                events = store.stats().events
                if events >= served or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            print(f"\n{events} events recorded so far. Try:\n"
                  "  .venv/bin/portico query --type request --by path --interval none\n"
                  "  .venv/bin/portico events list --limit 5\n"
                  "  dashboard: sign in as bob, then open /_portico/dashboard/", file=out, flush=True)
        except Exception as e:  # noqa: BLE001 - a hint only; the demo keeps running
            print(f"  (could not read the event store: {e})", file=out)


def print_welcome(gateway: Any, module: DemoModule, out: TextIO) -> None:
    url = f"http://127.0.0.1:{gateway.listen_port}"
    print(f"\nPortico demo is running.\n  Open:     {url}/\n  Health:   {url}/_portico/health\n"
          f"  Module:   {module.url} (the demo upstream, behind the gateway)\n"
          f"  Data:     {gateway.config.telemetry.path}\n"
          f"  gRPC API: 127.0.0.1:{gateway.grpc_port}  (try: portico stats)\n"
          f"  Sign in:  {url}/_portico/login  as "
          + ", ".join(f"{n} / {p}" for n, p, _ in DEMO_USERS) + " (only alice may open /members/; bob may open the dashboard)\n"
          "  Stop:     Ctrl-C\n\nA first visitor is browsing:", file=out, flush=True)
    threading.Thread(target=warm_up, args=(url, out, gateway.store), daemon=True, name="demo-warm-up").start()
