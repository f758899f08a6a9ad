"""Phishing heuristics on host names: IDN homographs, lookalikes, embedded brands.

Not an addon: pure functions the phishing addon (and `portico policy explain`) apply.

- Homograph: punycode labels (`xn--`) are decoded; a label that mixes scripts (Latin with
  Cyrillic...) or whose confusable *skeleton* (each character replaced by the Latin
  character it is confusable with, per Unicode's confusables.txt via the
  `confusable_homoglyphs` package) equals a protected domain's label is flagged.
- Lookalike: on the registrable domain (Public Suffix List, `publicsuffixlist` package,
  bundled list, never fetched), a label within `max_edit_distance` (Damerau-Levenshtein)
  of a protected label, equal after typo folding (`1`->`l`, `0`->`o`, `rn`->`m`, `vv`->`w`,
  hyphens dropped), or a protected label with words glued on (`paypal-login`), or the
  protected domain used as a subdomain of someone else's (`paypal.com.evil.example`).
- The real domain and its subdomains are never flagged, nor anything in `allow`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from confusable_homoglyphs import categories, confusables
from publicsuffixlist import PublicSuffixList

COMMONLY_TARGETED: tuple[str, ...] = (
    "apple.com", "icloud.com", "paypal.com", "google.com", "gmail.com", "microsoft.com", "office.com",
    "outlook.com", "live.com", "amazon.com", "facebook.com", "instagram.com", "whatsapp.com",
    "netflix.com", "linkedin.com", "dropbox.com", "docusign.com", "adobe.com", "github.com",
    "twitter.com", "yahoo.com", "ebay.com", "chase.com", "wellsfargo.com", "bankofamerica.com",
    "coinbase.com", "binance.com", "steamcommunity.com", "dhl.com", "fedex.com",
)


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package; no network


def decode_host(host: str) -> str:
    """Lower-case host with every `xn--` label decoded to Unicode (undecodable labels kept)."""
    labels = []
    for label in host.lower().rstrip(".").split("."):
        if label.startswith("xn--"):
            try:
                label = label[4:].encode("ascii").decode("punycode")
            except (UnicodeError, ValueError):
                pass
        labels.append(label)
    return ".".join(labels)


def registrable(host: str) -> str:
    """The registrable domain (eTLD+1) of a host, e.g. `www.example.co.uk` -> `example.co.uk`."""
    host = host.lower().rstrip(".")
    try:
        ascii_host = ".".join(encode_label(lb) for lb in host.split("."))
    except UnicodeError:
        ascii_host = host
    return _psl().privatesuffix(ascii_host) or host


def encode_label(label: str) -> str:
    return label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")


def scripts(text: str) -> set[str]:
    """The Unicode scripts used in `text`, ignoring COMMON (digits, hyphen) and INHERITED."""
    return {categories.alias(c) for c in text} - {"COMMON", "INHERITED"}


@functools.lru_cache(maxsize=4096)
def skeleton(text: str) -> str:
    """Each character replaced by the ASCII character it can be confused with, when there is one."""
    if text.isascii():
        return text
    out = []
    for c in text:
        if c.isascii():
            out.append(c)
            continue
        found = confusables.is_confusable(c, greedy=True, preferred_aliases=[])
        replacement = c
        for item in found or ():
            ascii_glyphs = [h["c"] for h in item["homoglyphs"] if h["c"].isascii() and h["c"].isalnum()]
            if ascii_glyphs:
                replacement = ascii_glyphs[0].lower()
                break
        out.append(replacement)
    return "".join(out)


def damerau(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment edit distance, stopping early once it exceeds `limit`."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


_TYPO_FOLDS = (("rn", "m"), ("vv", "w"), ("1", "l"), ("0", "o"), ("5", "s"), ("3", "e"), ("-", ""), ("i", "l"))


def fold_typos(label: str) -> str:
    for a, b in _TYPO_FOLDS:
        label = label.replace(a, b)
    return label


@dataclass(frozen=True)
class Finding:
    kind: str  # "homograph" | "lookalike" | "blocklist"
    reason: str
    target: str = ""  # the protected domain it imitates


class ProtectedDomains:
    """The domains to protect, indexed by their first label (the brand)."""

    def __init__(self, domains: Iterable[str], allow: Iterable[str] = (), max_edit_distance: int = 1,
                 own: Iterable[str] = ()) -> None:
        # `own`: the organisation's domains; only for them is the same name under another
        # suffix suspicious (amazon.co.uk is Amazon, example.net is not the example.org you run)
        self.own = {registrable(d) for d in own if d}
        self.domains = {registrable(d) for d in domains if d} | self.own
        self.allow = {registrable(d) for d in allow if d}
        self.max_edit_distance = max_edit_distance
        self.brands: dict[str, str] = {}
        for d in sorted(self.domains):
            self.brands.setdefault(d.split(".", 1)[0], d)
        self._folded = {fold_typos(b): d for b, d in self.brands.items()}

    @functools.lru_cache(maxsize=8192)  # noqa: B019 - one long-lived instance per config
    def check(self, host: str) -> Finding | None:
        """Why `host` imitates a protected domain, or None."""
        host = host.lower().rstrip(".").strip("[]")
        if not host or ":" in host or host.replace(".", "").isdigit():
            return None  # IP literals
        reg = registrable(host)
        if reg in self.domains or reg in self.allow:
            return None
        unicode_host = decode_host(host)
        unicode_reg = decode_host(reg)
        label = unicode_reg.split(".", 1)[0]
        if not label.isascii():
            if finding := self._homograph(label, unicode_host):
                return finding
        return self._lookalike(label, reg, unicode_host)

    def _homograph(self, label: str, unicode_host: str) -> Finding | None:
        used = scripts(label)
        skel = skeleton(label)
        target = self.brands.get(skel) or self._folded.get(fold_typos(skel))
        if target:
            return Finding("homograph", f"{unicode_host!r} imitates {target!r} with look-alike characters "
                           f"({'/'.join(sorted(used))})", target)
        if len(used) > 1:
            return Finding("homograph", f"{unicode_host!r} mixes scripts ({', '.join(sorted(used))}) in one label")
        return None

    def _lookalike(self, label: str, reg: str, unicode_host: str) -> Finding | None:
        ascii_label = skeleton(label)
        for brand, domain in self.brands.items():
            if len(brand) < 4:
                continue
            # the protected domain as a subdomain of someone else's: paypal.com.evil.example
            if f".{domain}." in f".{unicode_host}." and not unicode_host.endswith(domain):
                return Finding("lookalike", f"{unicode_host!r} puts {domain!r} in front of another domain "
                               f"({reg!r})", domain)
            if ascii_label == brand:
                if domain in self.own:
                    return Finding("lookalike", f"{reg!r} uses the name of {domain!r} under another suffix", domain)
                continue
            if len(brand) >= 5 and damerau(ascii_label, brand, self.max_edit_distance) <= self.max_edit_distance:
                return Finding("lookalike", f"{reg!r} is one typo away from {domain!r}", domain)
            if fold_typos(ascii_label) == fold_typos(brand):
                return Finding("lookalike", f"{reg!r} imitates {domain!r} with swapped characters", domain)
            parts = ascii_label.split("-")
            if len(brand) >= 5 and len(parts) > 1 and brand in parts:
                return Finding("lookalike", f"{reg!r} glues words onto {domain!r}", domain)
        return None
