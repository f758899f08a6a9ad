"""Who may reach what: applies the `access_control:` rules (auth.access.decide) to each request.

Hooks: `http_connect`, `request`. Runs right after addons/auth.py.
Metadata read: LISTENER, ORIGINAL_HOST, ORIGINAL_PATH, CLIENT_IP, USER, GROUPS, REQUEST_ID.
Written: BLOCKED_BY.

Outcomes (see `AccessPolicy.decide`, also used by `portico access check`):
- `allow`: the request goes on;
- `login`: reverse listener: a browser (GET/HEAD asking for HTML) is sent with 302 to the
  login page with a same-origin `next`, other clients get 401 with a Basic challenge;
  forward listener: 407;
- `deny`: a 403 page naming the rule, and an `access.denied` event.

Portico's reserved prefix: `health`, `login` and `logout` are always reachable; the other
reserved endpoints (tracking pixel/click/redirect/beacon/snippet) are `bypass` unless a
rule naming their path (`paths`/`path_prefixes`) says otherwise; `<prefix>dashboard` goes
through the rules like any module. Fails closed: an unexpected error answers 503.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

from mitmproxy import http
from mitmproxy.proxy.mode_specs import RegularMode

from addons import metadata
from addons.pages import SERVER_HEADER, error_response, wants_json
from addons.recorder import Recorder
from auth.access import AccessControl, Decision, RequestInfo, Subject, decide, normalize_path, unclear_path

log = logging.getLogger("portico.acl")

ALWAYS_OPEN = ("health", "login", "logout")


@dataclass(frozen=True)
class AclSettings:
    control: AccessControl = AccessControl()
    reserved_prefix: str = "/_portico/"
    dashboard: str = "dashboard"
    realm: str = "Portico"


class AccessPolicy:
    """The rules plus Portico's reserved-prefix exceptions; pure (no I/O)."""

    def __init__(self, settings: AclSettings) -> None:
        self.settings = settings
        named = tuple(r if r.id else dataclasses.replace(r, id=f"rules[{i}]")
                      for i, r in enumerate(settings.control.rules))
        self.control = dataclasses.replace(settings.control, rules=named)
        # rules that name a path may govern Portico's own endpoints; everything else there is open
        self.reserved_control = AccessControl(
            default_policy="bypass", rules=tuple(r for r in named if r.paths or r.path_prefixes))

    def decide(self, request: RequestInfo, who: Subject | None) -> Decision:
        prefix = self.settings.reserved_prefix
        path = normalize_path(request.path)
        if (path + "/").startswith(prefix):
            rest = path[len(prefix):].strip("/")
            if rest in ALWAYS_OPEN:
                return Decision("allow", "bypass", "reserved",
                                f"{prefix}{rest} is Portico's own endpoint and always reachable")
            dashboard = prefix + self.settings.dashboard
            if not (path == dashboard or path.startswith(dashboard + "/")):
                d = decide(request, who, self.reserved_control)
                if d.rule == "default":
                    return Decision("allow", "bypass", "reserved",
                                    f"{path} is under Portico's reserved prefix and no rule names "
                                    "its path: bypass", d.trace)
                return d
        return decide(request, who, self.control)


class Acl:
    """Applies `AccessPolicy` to every request; see the module docstring."""

    def __init__(self, settings: AclSettings, recorder: Recorder | None = None) -> None:
        self.settings = settings
        self.policy = AccessPolicy(settings)
        self.recorder = recorder or Recorder(None)
        self._addresses: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}

    def _address(self, ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The parsed client address (cached: parsing costs more than the rules themselves)."""
        if ip is None:
            return None
        parsed = self._addresses.get(ip)
        if parsed is None:
            try:
                parsed = ipaddress.ip_address(ip.strip("[]"))
            except ValueError:
                return None
            if len(self._addresses) >= 10_000:
                self._addresses.clear()
            self._addresses[ip] = parsed
        return parsed

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        self._guarded(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        self._guarded(flow)

    def _guarded(self, flow: http.HTTPFlow) -> None:
        try:
            self._apply(flow)
        except Exception:  # noqa: BLE001 - fail closed: a crashing hook would let it through
            rid = flow.metadata.get(metadata.REQUEST_ID)
            log.exception("access check failed unexpectedly for request %s; answering 503", rid)
            flow.metadata[metadata.BLOCKED_BY] = "acl:error"
            flow.response = error_response(503, "Access check unavailable",
                                           "The gateway could not check this request's access rules, so it "
                                           "did not let it through.", rid, json_body=wants_json(flow.request))

    def _apply(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        forward = isinstance(flow.client_conn.proxy_mode, RegularMode)
        if forward:
            host, path = req.pretty_host, ("/" if req.method == "CONNECT" else req.path)
        else:
            host = flow.metadata.get(metadata.ORIGINAL_HOST) or req.pretty_host
            path = flow.metadata.get(metadata.ORIGINAL_PATH) or req.path
            unclear = unclear_path(path)
            if unclear is not None:  # a backslash, a control character: no reading of it is safe to judge
                rid = flow.metadata.get(metadata.REQUEST_ID)
                log.info("request %s: %s %s refused: %s", rid, req.method, path.split("?", 1)[0][:200], unclear)
                flow.metadata[metadata.BLOCKED_BY] = "acl:unclear-path"
                flow.response = error_response(400, "Bad request", f"This address can't be checked against the "
                                               f"access rules: {unclear}.", rid, json_body=wants_json(req))
                return
        ip = flow.metadata.get(metadata.CLIENT_IP)
        if ip is None and flow.client_conn.peername:
            ip = flow.client_conn.peername[0]
        address = self._address(ip)
        user = flow.metadata.get(metadata.USER)
        who = Subject(user, tuple(flow.metadata.get(metadata.GROUPS, ()))) if user else None
        decision = self.policy.decide(RequestInfo(host=host, path=path, method=req.method, client_ip=address), who)
        if decision.outcome == "allow":
            return
        rid = flow.metadata.get(metadata.REQUEST_ID)
        if decision.outcome == "login":
            self._login_required(flow, forward, path, rid)
            return
        log.info("request %s: %s %s%s by %s from %s denied by %s", rid, req.method, host,
                 path.split("?", 1)[0], user or "anonymous", ip, decision.rule)
        self.recorder.submit([{"type": "access.denied", "time": time.time(), "attrs": {
            "rule": decision.rule, "user": user or "", "host": host, "path": path.split("?", 1)[0][:1024],
            "method": req.method, "listener": "forward" if forward else "reverse"}}])
        flow.metadata[metadata.BLOCKED_BY] = f"acl:deny:{decision.rule}"
        who_text = f"signed in as {user}" if user else "not signed in"
        flow.response = error_response(
            403, "Access denied",
            f"You ({who_text}) may not open this page: access rule '{decision.rule}' denies it. "
            "Ask an administrator if you need access.", rid, json_body=wants_json(req))
        flow.response.headers["X-Portico-Rule"] = decision.rule

    def _login_required(self, flow: http.HTTPFlow, forward: bool, path: str, rid: str | None) -> None:
        req = flow.request
        flow.metadata[metadata.BLOCKED_BY] = "acl:login"
        realm = self.settings.realm.replace("\\", "").replace('"', "")
        challenge = f'Basic realm="{realm}", charset="UTF-8"'
        if forward:
            flow.response = error_response(407, "Proxy authentication required",
                                           "Sign in to use this proxy.", rid)
            flow.response.headers["Proxy-Authenticate"] = challenge
            return
        accept = req.headers.get("accept", "")
        if req.method in ("GET", "HEAD") and "text/html" in accept and "authorization" not in req.headers:
            location = f"{self.settings.reserved_prefix}login?next={quote(path, safe='/')}"
            flow.response = http.Response.make(302, b"", {"Location": location, "Cache-Control": "no-store",
                                                          "Server": SERVER_HEADER, "X-Request-Id": rid or ""})
            return
        flow.response = error_response(401, "Authentication required",
                                       "Sign in first (HTTP Basic for API clients, or the login page "
                                       f"at {self.settings.reserved_prefix}login).", rid,
                                       json_body=wants_json(req))
        flow.response.headers["WWW-Authenticate"] = challenge
