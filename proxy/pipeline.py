"""The one ordered list of Portico's addons: the single place where order is decided.

A request meets them top to bottom (mitmproxy calls each hook in list order):

    engine fixes -> lifecycle -> forwarded (ids, client address, header hygiene)
    -> forward guard (forward listener policy) -> [auth -> acl] -> endpoints (/_portico/)
    -> router (reverse listener -> upstream) -> [cache, dns guard, moderation]

Bracketed stages are added by their own issues; each goes in here, in its place. Tracking's
endpoints share Endpoints' chain entry, and so do its recorders, whose response/error hooks
run once the whole chain has run (addons/bundle.py `chain_entry`): they record every flow last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mitmproxy.addons import core, disable_h2c, next_layer, proxyserver, tlsconfig

from addons.bundle import chain_entry
from addons.cache import Cache, CacheSettings, RouteCacheSettings
from addons.cache_store import CacheStore, CacheStoreSettings
from addons.dashboard import Dashboard, DashboardSettings
from addons.endpoints import Endpoints, EndpointsSettings
from addons.errorpage import ErrorPage
from addons.forwarded import Forwarded, ForwardedSettings
from addons.forwardguard import ForwardGuard, ForwardGuardSettings
from addons.interim import InterimResponses
from addons.lifecycle import Lifecycle
from addons.router import RouteSpec, Router
from proxy.config import PorticoConfig
from proxy import guard
from proxy import auth_setup
from proxy import tracking_setup


@dataclass
class Services:
    """Long-lived collaborators the addons are handed (owned by proxy/server.py)."""

    lifecycle: Lifecycle
    store: Any = None  # telemetry.store.Store when telemetry is enabled
    version: str = "0"
    cache_store: Any = None  # addons.cache_store.CacheStore when cache is enabled (gRPC purge/stats)


def engine_addons() -> list[Any]:
    """The parts of mitmproxy Portico runs on (not mitmproxy's full default set: no
    onboarding app, no scripting, no proxyauth, no client blocking that would refuse the
    public clients of a reverse proxy)."""
    return [
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        disable_h2c.DisableH2C(),
    ]


def route_specs(config: PorticoConfig) -> list[RouteSpec]:
    return [
        RouteSpec(label=r.label, host=r.match.host.lower(), path_prefix=r.match.path_prefix,
                  upstream=r.upstream, strip_prefix=r.strip_prefix, preserve_host=r.preserve_host)
        for r in config.routes
    ]


def cache_addon(config: PorticoConfig, services: Services, resolver: Any = None) -> Cache:
    """The Cache addon from `cache:` and the routes' `cache:` switches; opens the store once.
    With `resolver` (the `dns:` section), its own upstream fetches resolve over encrypted DNS."""
    c = config.cache
    base = RouteCacheSettings(default_ttl=c.default_ttl.total_seconds() if c.default_ttl else None,
                              ignore_query_params=c.ignore_query_params, sort_query=c.sort_query,
                              store_set_cookie=c.store_set_cookie)
    routes = {}
    for r in config.routes:
        rc = r.cache
        if rc is None:
            continue
        routes[r.label] = RouteCacheSettings(
            enabled=base.enabled if rc.enabled is None else rc.enabled,
            default_ttl=base.default_ttl if rc.default_ttl is None else rc.default_ttl.total_seconds(),
            ignore_query_params=base.ignore_query_params if rc.ignore_query_params is None else rc.ignore_query_params,
            sort_query=base.sort_query if rc.sort_query is None else rc.sort_query,
            store_set_cookie=base.store_set_cookie if rc.store_set_cookie is None else rc.store_set_cookie)
    if services.cache_store is None:
        services.cache_store = CacheStore(CacheStoreSettings(path=c.path, max_size=c.max_size,
                                                             max_object_size=c.max_object_size))
    return Cache(CacheSettings(
        default=base, routes=routes, max_object_size=c.max_object_size,
        heuristic_max=c.heuristic_max.total_seconds(),
        stale_while_revalidate_max=c.stale_while_revalidate_max.total_seconds(),
        stale_if_error_max=c.stale_if_error_max.total_seconds(), lock_timeout=c.lock_timeout.total_seconds(),
        fetch_timeout=c.revalidate_timeout.total_seconds(), purge_networks=c.purge_networks,
        private_cookies=c.private_cookies,
        resolve=resolver.resolve if resolver is not None else None), services.cache_store)


def portico_addons(config: PorticoConfig, services: Services) -> list[Any]:
    """Portico's addons, in request order."""
    addons: list[Any] = [
        InterimResponses(),
        ErrorPage(),
        services.lifecycle,
        Forwarded(ForwardedSettings(trusted_proxies=config.trusted_proxies,
                                    max_request_body=config.max_request_body)),
    ]
    # dns: names are resolved only over DoT/DoH, on both listeners (one resolver, one cache)
    resolver = guard.build_resolver(config)
    if config.forward is not None:
        addons.append(ForwardGuard(ForwardGuardSettings(
            allowed_clients=config.forward.allowed_clients,
            connect_ports=config.forward.connect_ports,
            allow_private_destinations=config.forward.allow_private_destinations,
            **({"resolve": resolver.resolve} if resolver is not None else {}),
        )))
    # auth (login/logout under the reserved prefix, Basic, session cookie, Proxy-Authorization)
    # then acl (access_control rules): before any endpoint or module answers
    addons += auth_setup.auth_addons(config, services.store)
    # tracking endpoints (pixel, click, outbound redirect, snippet JS, beacon) answer under the
    # reserved prefix, so before Endpoints; tracking and the access log record every flow, last.
    track_early, track_late = tracking_setup.tracking_addons(config, services.store)
    if config.dashboard.enabled:  # after auth/acl (reads USER/GROUPS), before Endpoints closes the prefix
        d = config.dashboard
        addons.append(Dashboard(DashboardSettings(
            reserved_prefix=config.reserved_prefix, admin_groups=d.admin_groups, default_tz=d.default_tz,
            default_range=d.default_range, max_csv_rows=d.max_csv_rows), services.store))
    # one chain entry for the tracking endpoints, Endpoints and the recorders (mitmproxy costs
    # ~12 us a request per entry); the recorders still see every flow last: their response/error
    # hooks run at the flow's next `update`, after the whole chain (addons/bundle.py)
    addons.append(chain_entry("endpoints-bundle", [*track_early, Endpoints(EndpointsSettings(
        reserved_prefix=config.reserved_prefix, version=services.version))], after_chain=track_late))
    addons.append(Router(route_specs(config)))
    cache = cache_addon(config, services, resolver) if config.cache.enabled else None
    if cache is not None:
        addons.append(cache)
    # dns guard, moderation, forum moderation, phishing: after the cache lookup (a hit needs
    # no DNS and was checked before it was stored) and before its store stage, so the store
    # stage sees metadata.DO_NOT_CACHE; tracking goes after the store stage (reads CACHE_STATUS).
    addons += guard.guard_addons(config, services.store, resolver)
    if cache is not None:
        addons.append(cache.store_stage)
    return addons
