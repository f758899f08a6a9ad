"""Classify where a visit came from: internal, external, search, social, email or direct.

Not an addon: a helper for `tracking.py` and the beacon endpoint in `snippet.py`.

Inputs are the `Referer` header and the landing URL's `utm_source`/`utm_medium`/`ref`
parameters (campaign tags win over the header: a newsletter link opened in a webmail
has a webmail Referer, but it is an email visit). Only host and path are kept, never
the referrer's query string (it can hold search terms, tokens, e-mail addresses).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

SEARCH_HOSTS = ("google.", "bing.com", "duckduckgo.com", "search.yahoo.", "yandex.", "baidu.com", "ecosia.org",
                "startpage.com", "qwant.com", "search.brave.com", "kagi.com", "yahoo.com", "ask.com", "naver.com")
SOCIAL_HOSTS = ("facebook.com", "fb.com", "fb.me", "instagram.com", "twitter.com", "t.co", "x.com", "linkedin.com",
                "lnkd.in", "reddit.com", "youtube.com", "youtu.be", "tiktok.com", "pinterest.", "mastodon.",
                "threads.net", "bsky.app", "whatsapp.com", "telegram.org", "t.me", "tumblr.com", "vk.com",
                "news.ycombinator.com")
EMAIL_HOSTS = ("mail.google.com", "outlook.live.com", "outlook.office.com", "outlook.office365.com",
               "mail.yahoo.com", "mail.proton.me", "webmail.", "mail.", "fastmail.com", "roundcube.")
EMAIL_MEDIUMS = ("email", "e-mail", "newsletter", "mail")
SOCIAL_MEDIUMS = ("social", "social-media", "sm", "social_network")
SEARCH_MEDIUMS = ("cpc", "ppc", "paid-search", "organic", "search")

SOURCE_CLASSES = ("internal", "external", "search", "social", "email", "direct")


@dataclass(frozen=True, slots=True)
class Referrer:
    source_class: str  # one of SOURCE_CLASSES
    host: str = ""     # referrer host (or the utm_source/ref value when there is no header)
    path: str = ""     # referrer path, no query


def _matches(host: str, patterns: tuple[str, ...]) -> bool:
    for p in patterns:
        if p.endswith("."):  # "google." -> any google.<tld> or <sub>.google.<tld>
            if host.startswith(p) or f".{p}" in host:
                return True
        elif p.startswith(("mail.", "webmail.", "roundcube.")) and p.count(".") == 1 and host.startswith(p):
            return True
        elif host == p or host.endswith("." + p):
            return True
    return False


def classify_host(host: str) -> str:
    """search, social, email or external for a foreign host."""
    host = host.lower().removeprefix("www.")
    if _matches(host, EMAIL_HOSTS):
        return "email"
    if _matches(host, SEARCH_HOSTS):
        return "search"
    if _matches(host, SOCIAL_HOSTS):
        return "social"
    return "external"


def classify(referer: str, params: Mapping[str, str], site_host: str,
             internal_hosts: Collection[str] = ()) -> Referrer:
    """Classify one landing request.

    Args:
        referer: the Referer header ("" when absent).
        params: the landing URL's query parameters (utm_source, utm_medium, ref are read).
        site_host: the host the visitor asked for (a referrer from it is internal).
        internal_hosts: more hosts of the same organisation (also internal).
    """
    medium = (params.get("utm_medium") or "").lower()
    source = (params.get("utm_source") or params.get("ref") or "").strip()[:100]
    ref_host, ref_path = "", ""
    if referer:
        try:
            parts = urlsplit(referer.strip()[:2048])
        except ValueError:  # not a URL ("http://[::1"): as good as no referrer
            parts = None
        if parts is not None and parts.scheme in ("http", "https", "android-app") and parts.hostname:
            ref_host, ref_path = parts.hostname.lower(), (parts.path or "/")[:512]
    internal = {h.lower() for h in internal_hosts} | {site_host.lower()}
    if ref_host and ref_host in internal and not source:
        return Referrer("internal", ref_host, ref_path)
    if medium in EMAIL_MEDIUMS:
        return Referrer("email", ref_host or source.lower(), ref_path)
    if medium in SOCIAL_MEDIUMS:
        return Referrer("social", ref_host or source.lower(), ref_path)
    if medium in SEARCH_MEDIUMS:
        return Referrer("search", ref_host or source.lower(), ref_path)
    if ref_host and ref_host not in internal:
        return Referrer(classify_host(ref_host), ref_host, ref_path)
    if source:
        cls = classify_host(source) if "." in source else _classify_source_name(source.lower())
        return Referrer(cls, source.lower(), "")
    return Referrer("direct")


def _classify_source_name(name: str) -> str:
    """utm_source=newsletter / twitter / google without a dot."""
    if name in ("newsletter", "email", "mail", "mailchimp", "listmonk", "sendgrid", "mailjet"):
        return "email"
    if name in ("google", "bing", "duckduckgo", "yahoo", "ecosia", "yandex", "baidu", "qwant", "brave", "kagi"):
        return "search"
    if name in ("facebook", "twitter", "x", "linkedin", "instagram", "reddit", "youtube", "tiktok", "mastodon",
                "bluesky", "threads", "whatsapp", "telegram", "hn", "hackernews"):
        return "social"
    return "external"
