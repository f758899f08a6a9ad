"""Build the tracking addons from the `tracking:` section (called by proxy/pipeline.py).

`tracking_addons(config, store)` returns two lists: the endpoint addons (outreach pixel and
click, outbound redirect, snippet JS and beacon, and the HTML editor), which go *before*
Endpoints so they can answer under the reserved prefix, and the recording addons
(tracking, access log), which must see every flow last, however it ended. proxy/pipeline.py
joins both lists and Endpoints into one chain entry (addons/bundle.py `chain_entry`): the
recorders run as `after_chain` parts, at the flow's next update, once every addon has run.
The addons share one `Visitors` (salts + sessions) and one `Recorder` (the store), built here.

Files under `telemetry.path`: `tracking.secret` (HMAC key for signed URLs and pseudonyms,
0600, made on first start unless `tracking.secret_file`/`secret_env` names one),
`salts/` (daily visitor salts) and `outreach-seen/` (LMDB: which e-mail opens and clicks
were seen, so first/repeat survives restarts). With telemetry disabled and no configured secret only the
access log runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from addons.accesslog import AccessLog, AccessLogSettings
from addons.attribution import Goal
from addons.bundle import Bundle
from addons.firstseen import FirstSeenError
from addons.geoip import GeoIP, GeoIPError
from addons.htmledit import HtmlEdit
from addons.outbound import Outbound, OutboundSettings
from addons.outreach import Outreach, OutreachSettings
from addons.outreachlinks import make_tracked_urls
from addons.eventbatch import BatchRecorder
from addons.signing import SecretError, load_or_create_secret
from addons.snippet import Snippet, SnippetSettings
from addons.tracking import Tracking, TrackingSettings
from addons.visitor import Salts, Visitors
from proxy.config import PorticoConfig, read_secret
from proxy.schema import ConfigError

log = logging.getLogger("portico.tracking")


def secret_path(config: PorticoConfig) -> Path:
    return Path(config.telemetry.path) / "tracking.secret"


def load_secret(config: PorticoConfig, create: bool = True) -> bytes | None:
    """The tracking secret: `secret_file`/`secret_env`, else `<telemetry.path>/tracking.secret`.

    Raises:
        ConfigError: the configured file/variable can't be read, or the generated one can't be made.
    """
    t = config.tracking
    configured = read_secret("tracking.secret", t.secret_file, t.secret_env)
    if configured is not None:
        if len(configured) < 16:
            raise ConfigError("tracking.secret: the secret is shorter than 16 characters; use a long random value")
        return configured.encode()
    path = secret_path(config)
    if not create and not path.exists():
        return None
    try:
        return load_or_create_secret(path)
    except SecretError as e:
        raise ConfigError(f"tracking.secret_file: {e}") from None


def tracked_url_maker(config: PorticoConfig, base_url: str) -> Callable[..., Any]:
    """`make_tracked_urls` bound to this gateway's secret, prefix and recipient policy
    (for the gRPC outreach service: proto/ gets the callable, it never imports addons/)."""
    secret = load_secret(config)
    assert secret is not None
    return partial(make_tracked_urls, secret, base_url, reserved_prefix=config.reserved_prefix,
                   recipient_tracking=config.tracking.recipients)


def tracking_addons(config: PorticoConfig, store: Any) -> tuple[list[Any], list[Any]]:
    """(endpoint addons for before Endpoints, recording addons for the end of the pipeline).

    Raises:
        ConfigError: the secret or the GeoIP database can't be read.
    """
    t = config.tracking
    late: list[Any] = []
    early: list[Any] = []
    if t.access_log.format != "off":
        late.append(AccessLog(AccessLogSettings(
            format=t.access_log.format, path=t.access_log.path, max_size=t.access_log.max_size,
            backups=t.access_log.backups, ipv4_prefix=t.ipv4_prefix, ipv6_prefix=t.ipv6_prefix,
            query_allowlist=frozenset(t.query_allowlist))))
    if not t.enabled:
        return early, late
    configured_secret = t.secret_file is not None or t.secret_env is not None
    if store is None and not configured_secret:
        log.info("tracking: telemetry is disabled and no tracking secret is configured: access log only")
        return early, late
    secret = load_secret(config)
    assert secret is not None
    prefix = config.reserved_prefix
    recorder = BatchRecorder(store)
    visitors = Visitors(Salts(Path(config.telemetry.path) / "salts"),
                        session_timeout=t.session_timeout.total_seconds())
    goals = tuple(Goal(g.name, g.event, g.path) for g in t.goals)
    routes = frozenset(t.html_routes)
    window = t.attribution_window.total_seconds()
    try:
        outreach = Outreach(OutreachSettings(
            secret=secret, reserved_prefix=prefix, recipients=t.recipients, attribution_window=window,
            machine_window=t.machine_window.total_seconds(), secure_cookie=t.secure_cookie,
            ipv4_prefix=t.ipv4_prefix, ipv6_prefix=t.ipv6_prefix,
            seen_path=Path(config.telemetry.path) / "outreach-seen"), recorder, visitors)
    except FirstSeenError as e:
        raise ConfigError(f"telemetry.path: {e}") from None
    outbound = Outbound(OutboundSettings(
        secret=secret, reserved_prefix=prefix, routes=routes, internal_hosts=frozenset(t.internal_hosts),
        rewrite=t.rewrite_outbound), recorder, visitors)
    snippet = Snippet(SnippetSettings(
        secret=secret, reserved_prefix=prefix, routes=routes, inject=t.inject_snippet and store is not None,
        click_selectors=t.click_selectors, respect_dnt=t.respect_dnt, respect_gpc=t.respect_gpc,
        max_bytes=t.beacon.max_bytes, max_events=t.beacon.max_events, rate_per_minute=t.beacon.rate_per_minute,
        query_allowlist=frozenset(t.query_allowlist), internal_hosts=t.internal_hosts, goals=goals,
        attribution_window=window), recorder, visitors)
    editors = ([outbound] if t.rewrite_outbound else []) + ([snippet] if snippet.settings.inject else [])
    # one decode/encode of each HTML page for both editors; one chain entry for all of them
    # (mitmproxy costs ~12 us per entry per request); Outreach stays visible by name (the
    # gRPC outreach service looks for it)
    early.append(Bundle("tracking-endpoints", [outbound, snippet, *([HtmlEdit(editors)] if editors else [])],
                        visible=[outreach]))
    if store is not None:
        geoip = None
        if t.geoip_db is not None:
            try:
                geoip = GeoIP(t.geoip_db).lookup
            except GeoIPError as e:
                raise ConfigError(str(e)) from None
        late.insert(0, Tracking(TrackingSettings(
            secret=secret, reserved_prefix=prefix, query_allowlist=frozenset(t.query_allowlist),
            ipv4_prefix=t.ipv4_prefix, ipv6_prefix=t.ipv6_prefix, pseudonymise_users=t.pseudonymise_users,
            internal_hosts=t.internal_hosts, goals=goals, attribution_window=window,
            count_bots_as_visitors=t.count_bots_as_visitors,
            bot_follow_timeout=t.bot_follow_timeout.total_seconds()), recorder, visitors, geoip))
    if len(late) > 1:
        late = [Bundle("tracking-recorders", late)]
    return early, late
