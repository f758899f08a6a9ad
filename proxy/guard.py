"""Build the protection addons (DNS guard, moderation, forum moderation, phishing) from the
`dns:`, `moderation:` and `phishing:` sections.

proxy/pipeline.py calls these and keeps the order; this module only turns configuration
into the addons' own settings dataclasses (configuration never points upward), so the
pipeline stays a short list and `portico policy explain` builds exactly the same objects.
"""

from __future__ import annotations

from typing import Any

from addons.dns_resolver import EncryptedResolver, ResolverSettings, ResolverSpec
from addons.dnsguard import KNOWN_DOH_HOSTS, DnsGuard, DnsGuardSettings
from addons.forummod import ForumModeration, ForumRule
from addons.homograph import COMMONLY_TARGETED, ProtectedDomains
from addons.lists import CategorySource, ReloadingCategory, load_category, parse_domains
from addons.moderation import Category, Moderation, ModerationSettings
from addons.phishing import Phishing, PhishingSettings
from addons.textscore import DEFAULT_FORUM_WORDS
from addons.verdicts import ContinueSigner
from proxy.config import DnsConfig, ModerationConfig, PhishingConfig, PorticoConfig
from proxy.schema import ConfigError


def resolver_settings(dns: DnsConfig) -> ResolverSettings:
    specs = tuple(
        ResolverSpec(protocol=r.protocol, address=r.address, port=r.port or (853 if r.protocol == "dot" else 443),
                     server_name=r.server_name, path=r.path, spki_pins=tuple(r.spki_pins), ca_file=r.ca_file,
                     timeout=r.timeout.total_seconds(), name=r.name)
        for r in dns.resolvers)
    return ResolverSettings(resolvers=specs, plaintext_fallback=dns.plaintext_fallback,
                            min_ttl=dns.min_ttl.total_seconds(), max_ttl=dns.max_ttl.total_seconds(), ipv6=dns.ipv6)


def build_resolver(config: PorticoConfig) -> EncryptedResolver | None:
    """The encrypted resolver, or None when the `dns:` section is absent (system DNS)."""
    return EncryptedResolver(resolver_settings(config.dns)) if config.dns is not None else None


def dns_guard(config: PorticoConfig, resolver: EncryptedResolver, store: Any) -> DnsGuard:
    assert config.dns is not None
    hosts = KNOWN_DOH_HOSTS | {h.lower().rstrip(".") for h in config.dns.doh_hosts}
    return DnsGuard(DnsGuardSettings(resolver=resolver, doh_clients=config.dns.doh_clients, doh_hosts=hosts), store)


def _secret(m: ModerationConfig) -> bytes | None:
    from proxy.config import read_secret

    value = read_secret("moderation.secret", m.secret_file, m.secret_env)
    return value.encode() if value else None


def categories(m: ModerationConfig) -> list[Category]:
    """The configured categories with their lists loaded (ConfigError naming a bad list file)."""
    out = []
    for i, c in enumerate(m.categories):
        src = CategorySource(name=c.name, domains=c.domains, url_patterns=c.url_patterns, phrases=dict(c.phrases),
                             file=c.file, directory=c.directory)
        try:
            lists = ReloadingCategory(src, m.reload_interval.total_seconds())
        except ValueError as e:
            raise ConfigError(f"moderation.categories[{i}]: {e}") from None
        out.append(Category(name=c.name, action=c.action, threshold=c.threshold, lists=lists))
    return out


def continue_signer(config: PorticoConfig) -> ContinueSigner:
    """One signer for every warn page (moderation and phishing accept each other's links)."""
    m = config.moderation
    if m is None:
        return ContinueSigner(None, 1800.0)
    return ContinueSigner(_secret(m), m.continue_ttl.total_seconds())


def moderation_addons(config: PorticoConfig, store: Any, signer: ContinueSigner) -> list[Any]:
    """Moderation (categories) and forum moderation, when configured."""
    m = config.moderation
    if m is None:
        return []
    routes = frozenset(r.label for r in config.routes if r.moderate)
    addons: list[Any] = []
    if m.categories:
        addons.append(Moderation(ModerationSettings(categories=tuple(categories(m)), routes=routes,
                                                    max_scan_bytes=m.max_scan_bytes, signer=signer), store))
    if m.forum:
        rules = []
        for i, r in enumerate(m.forum):
            words = dict(DEFAULT_FORUM_WORDS)
            words.update({k.lower(): float(v) for k, v in r.words.items()})
            if r.words_file is not None:
                try:
                    extra = load_category(CategorySource(name=r.name, file=r.words_file)).phrases
                except ValueError as e:
                    raise ConfigError(f"moderation.forum[{i}].words_file: {e}") from None
                words.update(extra)
            rules.append(ForumRule(name=r.name, paths=tuple(r.paths), action=r.action, threshold=r.threshold,
                                   fields=tuple(r.fields), words=words))
        addons.append(ForumModeration(rules, store, max_body=m.max_scan_bytes))
    return addons


def phishing_settings(p: PhishingConfig, config: PorticoConfig) -> PhishingSettings:
    blocklist = set(parse_domains(p.blocklist))
    for i, path in enumerate(p.blocklist_files):
        try:
            blocklist |= parse_domains(path.read_text(encoding="utf-8", errors="replace").splitlines())
        except OSError as e:
            raise ConfigError(f"phishing.blocklist_files[{i}]: cannot read {str(path)!r}: "
                              f"{e.strerror or e}") from None
    protected = ProtectedDomains(COMMONLY_TARGETED, allow=p.allow, max_edit_distance=p.max_edit_distance,
                                 own=p.protected_domains)
    return PhishingSettings(protected=protected, blocklist=frozenset(blocklist), actions={
        "homograph": p.homograph_action, "lookalike": p.lookalike_action, "blocklist": p.blocklist_action},
        routes=frozenset(r.label for r in config.routes if r.check_links))


def phishing_addons(config: PorticoConfig, store: Any, signer: ContinueSigner) -> list[Any]:
    p = config.phishing
    if p is None or not p.enabled:
        return []
    return [Phishing(phishing_settings(p, config), store, signer)]


def guard_addons(config: PorticoConfig, store: Any, resolver: EncryptedResolver | None) -> list[Any]:
    """Every protection addon, in pipeline order: dns guard, moderation, forum, phishing."""
    signer = continue_signer(config)
    addons: list[Any] = []
    if resolver is not None:
        addons.append(dns_guard(config, resolver, store))
    addons += moderation_addons(config, store, signer)
    addons += phishing_addons(config, store, signer)
    return addons
