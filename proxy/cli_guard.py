"""`portico dns check` and `portico policy explain`.

`dns check` asks each configured encrypted resolver for a test name and reports protocol,
latency, certificate validity (name, expiry, SPKI pin) and whether the query succeeded; it
warns when the system resolver is plaintext. Exit 0 when every resolver works, 1 otherwise.

`policy explain URL` shows what the gateway would decide for a URL, and why: the route,
access rules, content categories, phishing checks and DNS resolution (a real lookup over
the configured resolvers). It builds the same objects the gateway runs (proxy/guard.py).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from addons.dns_resolver import DnsResolutionError, EncryptedResolver, ResolverSpec, check_pin, tls_context
from addons.forwardguard import forbidden_reason
from addons.moderation import match_request
from addons.phishing import check_host
from addons.router import select_route
from proxy import guard
from proxy.cli_common import CliError
from proxy.config import PorticoConfig, load_config
from proxy.pipeline import route_specs
from proxy.schema import ConfigError


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `dns check` and `policy explain`."""
    dns = subparsers.add_parser("dns", help="encrypted DNS tools")
    dns_sub = dns.add_subparsers(dest="dns_command", metavar="COMMAND")
    dns_sub.required = True
    check = dns_sub.add_parser("check", help="test each configured DoT/DoH resolver")
    check.add_argument("--config", "-c", required=True, metavar="FILE")
    check.add_argument("--name", default="example.com", help="the name to query (default example.com)")
    check.set_defaults(func=cmd_dns_check)

    policy = subparsers.add_parser("policy", help="explain the gateway's decisions")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND")
    policy_sub.required = True
    explain = policy_sub.add_parser("explain", help="what the gateway would decide for a URL, and why")
    explain.add_argument("url", metavar="URL")
    explain.add_argument("--config", "-c", required=True, metavar="FILE")
    explain.add_argument("--user", default=None, help="the authenticated user to assume")
    explain.add_argument("--groups", default="", help="comma-separated groups of that user")
    explain.add_argument("--forward", action="store_true",
                         help="explain as a forward-proxy destination (default: reverse routes when one matches)")
    explain.set_defaults(func=cmd_policy_explain)


def _load(path: str) -> PorticoConfig:
    try:
        return load_config(path)
    except ConfigError as e:
        raise CliError(str(e), exit_code=2) from None


# --- dns check --------------------------------------------------------------------------------

async def _certificate(spec: ResolverSpec) -> str:
    """'valid for NAME until DATE[, pin ok]' or raise with the TLS error."""
    _, writer = await asyncio.wait_for(asyncio.open_connection(
        spec.address, spec.port, ssl=tls_context(spec), server_hostname=spec.server_name or ""), spec.timeout)
    try:
        obj = writer.get_extra_info("ssl_object")
        check_pin(spec, obj)
        cert = obj.getpeercert() or {}
        until = cert.get("notAfter")
        parts = [f"valid for {spec.server_name}" if spec.server_name else "name not checked (pin only)"]
        if until:
            expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(until), timezone.utc)
            days = (expires - datetime.now(timezone.utc)).days
            parts.append(f"until {expires:%Y-%m-%d} ({days} days)")
        if spec.spki_pins:
            parts.append("SPKI pin ok")
        return ", ".join(parts)
    finally:
        writer.close()


def system_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return []
    return [ln.split()[1] for ln in lines if ln.strip().startswith("nameserver") and len(ln.split()) > 1]


async def dns_check(config: PorticoConfig, name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """One result dict per resolver, and warnings."""
    if config.dns is None:
        return [], ["no `dns:` section: upstream names are resolved by the plaintext system resolver"]
    settings = guard.resolver_settings(config.dns)
    resolver = EncryptedResolver(settings)
    results = []
    try:
        for spec in settings.resolvers:
            row: dict[str, Any] = {"resolver": spec.label, "protocol": spec.protocol,
                                   "address": f"{spec.address}:{spec.port}"}
            try:
                row["certificate"] = await _certificate(spec)
            except Exception as e:  # noqa: BLE001 - reported, not raised
                row["certificate"] = f"INVALID: {type(e).__name__}: {e}"
            try:
                addresses, seconds = await resolver.probe(spec, name)
                row.update(query="ok", answer=", ".join(addresses) or "(no address)",
                           latency_ms=round(seconds * 1000, 1))
            except Exception as e:  # noqa: BLE001
                row.update(query=f"FAILED: {type(e).__name__}: {e}", latency_ms=None)
            results.append(row)
    finally:
        await resolver.aclose()
    warnings = []
    plain = system_resolvers()
    if plain:
        warnings.append(f"the system resolver ({', '.join(plain)}) speaks plaintext DNS; Portico does not use it "
                        + ("(plaintext_fallback is ON: it is used when every encrypted resolver fails)"
                           if config.dns.plaintext_fallback else "(plaintext_fallback is off)"))
    return results, warnings


def cmd_dns_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    results, warnings = asyncio.run(dns_check(config, args.name))
    ok = True
    for row in results:
        print(f"{row['resolver']} ({row['protocol']} at {row['address']})")
        print(f"  certificate: {row['certificate']}")
        latency = f", {row['latency_ms']} ms" if row.get("latency_ms") is not None else ""
        answer = f" -> {row['answer']}" if row.get("answer") else ""
        print(f"  query {args.name}: {row['query']}{answer}{latency}")
        ok = ok and row["query"] == "ok" and not row["certificate"].startswith("INVALID")
    for w in warnings:
        print(f"warning: {w}")
    return 0 if ok and results else 1


# --- policy explain ---------------------------------------------------------------------------

async def explain(config: PorticoConfig, url: str, user: str | None, groups: list[str],
                  forward: bool = False) -> list[str]:
    """Lines saying what each stage would decide for `url`, and why."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"URL: expected an absolute http(s) URL like 'https://example.org/path', got {url!r}", 2)
    host = parts.hostname.lower()
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    out = [f"URL {url}", f"user {user or '(anonymous)'}" + (f", groups {', '.join(groups)}" if groups else "")]

    route = None if forward else select_route(route_specs(config), host, path)
    dns_host = host
    if route is not None:
        upstream_host = urlsplit(route.upstream).hostname or ""
        out.append(f"route: {route.label} -> {route.upstream}")
        dns_host = upstream_host
        label = route.label
        cfg_route = next(r for r in config.routes if r.label == label)
    elif config.forward is not None:
        out.append("route: none; as a forward-proxy destination")
        cfg_route = None
    else:
        out.append("route: none -> 404 (no module is configured for this address; no forward proxy)")
        cfg_route = None

    acl = getattr(config, "access_control", None) or getattr(config, "acl", None)
    out.append("access rules: " + ("configured; evaluated by the access-control addon at request time"
                                   if acl else "none configured: allowed"))

    if config.moderation is not None and config.moderation.categories and (cfg_route is None or cfg_route.moderate):
        verdict = match_request(guard.categories(config.moderation), host, url)
        out.append("categories: " + (f"{verdict.action.upper()} ({verdict.category}): {verdict.reason}"
                                     if verdict else "no domain or URL list matches"))
        if cfg_route is not None:
            out.append("content: text responses are scored against the category phrases")
    else:
        out.append("categories: not applied here")

    if config.phishing is not None and config.phishing.enabled:
        settings = guard.phishing_settings(config.phishing, config)
        finding = check_host(settings, host)
        if finding is None:
            out.append(f"phishing: {host} passes (blocklist, homograph and lookalike checks)")
        else:
            out.append(f"phishing: {settings.actions.get(finding.kind, 'block').upper()} ({finding.kind}): "
                       f"{finding.reason}")
        if cfg_route is not None and cfg_route.check_links:
            out.append("phishing: links in this route's HTML responses are checked")
    else:
        out.append("phishing: off")

    resolver = guard.build_resolver(config)
    if resolver is None:
        out.append(f"dns: {dns_host} would be resolved by the plaintext system resolver (no `dns:` section)")
    else:
        try:
            r = await resolver.lookup(dns_host)
            out.append(f"dns: {dns_host} -> {', '.join(r.addresses)} ({r.how} via {r.resolver})")
            if route is None and config.forward is not None and not config.forward.allow_private_destinations:
                for address in r.addresses:
                    if reason := forbidden_reason(address):
                        out.append(f"forward guard: REFUSED: {address} is a {reason} address")
                        break
        except DnsResolutionError as e:
            out.append(f"dns: FAILED -> 502: {e}")
        finally:
            await resolver.aclose()
    return out


def cmd_policy_explain(args: argparse.Namespace) -> int:
    config = _load(args.config)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    started = time.monotonic()
    try:
        lines = asyncio.run(explain(config, args.url, args.user, groups, forward=args.forward))
    except ConfigError as e:
        raise CliError(str(e), exit_code=2) from None
    for line in lines:
        print(line)
    print(f"(explained in {(time.monotonic() - started) * 1000:.0f} ms)")
    return 0


__all__ = ["register", "dns_check", "explain", "system_resolvers"]
