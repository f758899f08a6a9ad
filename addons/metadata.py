"""The `flow.metadata` keys that Portico's addons share (no addon imports another).

Values are plain data (str, int, tuple); never secrets (passwords, tokens, cookies).
"""

REQUEST_ID = "portico.request_id"
"""str: the id of this request, also sent upstream and shown on error pages (X-Request-Id)."""

CLIENT_IP = "portico.client_ip"
"""str: the client's address, after walking X-Forwarded-For through trusted proxies."""

LISTENER = "portico.listener"
"""str: "reverse" or "forward": which of Portico's listeners took the request."""

ORIGINAL_HOST = "portico.original_host"
"""str: the Host the client asked for (lower case, no port), before routing rewrote anything."""

ORIGINAL_PATH = "portico.original_path"
"""str: the request path (with query) as the client sent it, before prefix stripping."""

ROUTE = "portico.route"
"""str: the label of the route that took the request (see proxy.config.Route.label)."""

UPSTREAM = "portico.upstream"
"""str: the upstream base URL the request was sent to."""

BLOCKED_BY = "portico.blocked_by"
"""str: which addon answered the request itself instead of the upstream, and why (e.g. "router:no-route")."""

USER = "portico.user"
"""str: the authenticated user name (set by the auth addon)."""

GROUPS = "portico.groups"
"""tuple[str, ...]: the authenticated user's groups (set by the auth addon)."""

STARTED = "portico.started"
"""float: time.monotonic() when the request headers arrived."""

DO_NOT_CACHE = "portico.do_not_cache"
"""str: set (to the reason) by moderation/phishing/auth addons: the cache must not store this response."""

CACHE_STATUS = "portico.cache_status"
"""str: the cache outcome: hit, miss, stale, revalidated, bypass, expired, updating (set by the cache addon)."""

CACHE_BYTES = "portico.cache_bytes"
"""int: response body bytes served from the cache (0 on a miss)."""

DNS_RESOLUTION = "portico.dns"
"""str: how the upstream name was resolved: dot, doh, plaintext, cached, static (set by the DNS guard)."""

DNS_RESOLVER = "portico.dns_resolver"
"""str: which resolver answered (its name or URL)."""

VISITOR = "portico.visitor"
"""str: the cookieless visitor id (addons/visitor.py), set by the endpoint (beacon, click, pixel,
outbound redirect) that visited; tracking reads it and visits the other flows itself."""

SESSION = "portico.session"
"""str: the visitor's session id (30 minutes idle)."""

REQUEST_RECORDED = "portico.request_recorded"
"""bool: the tracking addon has recorded this flow's `request` event (exactly one per flow)."""

ACCESS_LOGGED = "portico.access_logged"
"""bool: the access log has written this flow's line (exactly one per flow)."""

GUARD_CONTINUED = "portico.guard_continued"
"""bool: the client presented a valid warn-page continue link for this URL and user (moderation/phishing)."""
