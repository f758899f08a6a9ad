"""The one ordered list of Portico's addons: the single place where order is decided.

A request meets them top to bottom (mitmproxy calls each hook in list order):

    engine fixes -> lifecycle -> forwarded (ids, client address, header hygiene)
    -> forward guard (forward listener policy) -> [auth -> acl] -> endpoints (/_portico/)
    -> router (reverse listener -> upstream) -> [cache, dns guard, moderation, tracking]

Bracketed stages are added by their own issues; each goes in here, in its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mitmproxy.addons import core, disable_h2c, next_layer, proxyserver, tlsconfig

from addons.endpoints import Endpoints, EndpointsSettings
from addons.errorpage import ErrorPage
from addons.forwarded import Forwarded, ForwardedSettings
from addons.forwardguard import ForwardGuard, ForwardGuardSettings
from addons.interim import InterimResponses
from addons.lifecycle import Lifecycle
from addons.router import RouteSpec, Router
from proxy.config import PorticoConfig


@dataclass
class Services:
    """Long-lived collaborators the addons are handed (owned by proxy/server.py)."""

    lifecycle: Lifecycle
    store: Any = None  # telemetry.store.Store when telemetry is enabled
    version: str = "0"


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


def portico_addons(config: PorticoConfig, services: Services) -> list[Any]:
    """Portico's addons, in request order."""
    addons: list[Any] = [
        InterimResponses(),
        ErrorPage(),
        services.lifecycle,
        Forwarded(ForwardedSettings(trusted_proxies=config.trusted_proxies,
                                    max_request_body=config.max_request_body)),
    ]
    if config.forward is not None:
        addons.append(ForwardGuard(ForwardGuardSettings(
            allowed_clients=config.forward.allowed_clients,
            connect_ports=config.forward.connect_ports,
            allow_private_destinations=config.forward.allow_private_destinations,
        )))
    addons.append(Endpoints(EndpointsSettings(reserved_prefix=config.reserved_prefix, version=services.version)))
    addons.append(Router(route_specs(config)))
    return addons
