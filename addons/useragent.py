"""A small User-Agent classifier: browser, version, OS, device type, bot flag.

Not an addon: a helper for `tracking.py` and `outreach.py`.

Why a table and not the `ua-parser` package: we need five coarse fields, not every
device model; ua-parser's regex list (~1,000 patterns) costs tens of microseconds per
miss and must be kept up to date, while this table covers the browsers and crawlers that
matter for an organisation's dashboards and is memoised (`lru_cache`), so the hot path
is a dict lookup. Unknown agents come out as "Other", never as an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class UserAgent:
    browser: str
    version: str
    os: str
    device: str  # "desktop" | "mobile" | "tablet" | "bot" | "other"
    bot: bool
    bot_reason: str = ""  # "crawler" | "headless" | "library" | "empty"


# Order matters: the first match wins (Edge and Opera also say "Chrome"; Chrome says "Safari").
_BROWSERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(rx)) for name, rx in (
    ("Edge", r"Edg(?:e|A|iOS)?/(\d+)"),
    ("Opera", r"(?:OPR|Opera)/(\d+)"),
    ("Samsung Internet", r"SamsungBrowser/(\d+)"),
    ("Firefox", r"(?:Firefox|FxiOS)/(\d+)"),
    ("Chrome", r"(?:HeadlessChrome|Chrome|CriOS|Chromium)/(\d+)"),
    ("Safari", r"Version/(\d+)[.\d]* (?:Mobile/\S+ )?Safari/"),
    ("Internet Explorer", r"(?:MSIE |Trident/.*rv:)(\d+)"),
))

_OS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(rx)) for name, rx in (
    ("Android", r"Android"),
    ("iOS", r"iPhone|iPad|iPod|iOS"),
    ("Windows", r"Windows"),
    ("ChromeOS", r"CrOS"),
    ("macOS", r"Mac OS X|Macintosh"),
    ("Linux", r"Linux|X11"),
))

_CRAWLER = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|mediapartners|facebookexternalhit|embedly|quora link preview|"
    r"whatsapp|telegrambot|discordbot|preview|archiver|ia_archiver|feedfetcher|monitor|uptime|"
    r"pingdom|statuscake|lighthouse|pagespeed|gtmetrix|semrush|ahrefs|mj12|dotbot|petalbot|bytespider|"
    r"gptbot|ccbot|claudebot|anthropic|perplexity|applebot|yandex|baiduspider|duckduckbot|bingpreview",
    re.IGNORECASE)
_HEADLESS = re.compile(r"HeadlessChrome|PhantomJS|Headless|Puppeteer|Playwright|Selenium|SlimerJS", re.IGNORECASE)
_LIBRARY = re.compile(
    r"^(?:curl|wget|python-requests|python-urllib|python-httpx|aiohttp|go-http-client|java/|okhttp|"
    r"libwww-perl|node-fetch|axios|undici|httpie|ruby|php|apache-httpclient|scrapy|wrk|ab/|k6/|"
    r"postmanruntime|insomnia|powershell)", re.IGNORECASE)


@lru_cache(maxsize=4096)
def parse_user_agent(ua: str) -> UserAgent:
    """Classify a User-Agent header value (memoised: a site sees few distinct agents)."""
    ua = ua.strip()[:512]
    if not ua:
        return UserAgent("Other", "", "Other", "bot", True, "empty")
    browser, version = "Other", ""
    for name, rx in _BROWSERS:
        m = rx.search(ua)
        if m:
            browser, version = name, m.group(1)
            break
    os_name = next((name for name, rx in _OS if rx.search(ua)), "Other")
    reason = ""
    if _CRAWLER.search(ua):
        reason = "crawler"
    elif _HEADLESS.search(ua):
        reason = "headless"
    elif _LIBRARY.search(ua):
        reason = "library"
    if reason:
        device = "bot"
    elif "iPad" in ua or "Tablet" in ua or (os_name == "Android" and "Mobile" not in ua):
        device = "tablet"
    elif "Mobi" in ua or "iPhone" in ua or "iPod" in ua:
        device = "mobile"
    elif os_name in ("Windows", "macOS", "Linux", "ChromeOS"):
        device = "desktop"
    else:
        device = "other"
    return UserAgent(browser, version, os_name, device, bool(reason), reason)
