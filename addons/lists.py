"""Category lists: domains, URL regexes and weighted phrases, loaded from config, YAML files
or directories, and reloaded when their files change (no restart).

Not an addon: the moderation and phishing addons share it. Pure Python, no mitmproxy.

Domain lines may be written in any of the common formats, one per line, mixed freely:
    example.com                 plain
    0.0.0.0 ads.example.com     hosts file (127.0.0.1 / 0.0.0.0 / ::, any number of names)
    ||tracker.example.com^      adblock network rule (options after `$` are ignored)
`#` and `!` start comments. A listed domain matches itself and every subdomain.

A category directory holds files whose names start with `domains`, `urls` (one regex
per line) or `phrases` (`weight phrase` per line, or a YAML mapping in `phrases*.yaml`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("portico.lists")

_HOSTS_ADDRESSES = {"0.0.0.0", "127.0.0.1", "::", "::1", "0", "255.255.255.255"}
_DOMAIN_RE = re.compile(r"^(?:\*\.)?[a-z0-9_](?:[a-z0-9_-]{0,62}\.?)*[a-z0-9-]*$")


class ListError(ValueError):
    """A list file could not be parsed; the message names the file and line."""


def parse_domain_line(line: str) -> list[str]:
    """The domains on one list line (plain, hosts-file or adblock format); [] for comments/blank."""
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith(("!", "[", "@@")):
        return []
    if line.startswith("||"):
        body = line[2:].split("$", 1)[0]
        body = re.split(r"[\^/|]", body, maxsplit=1)[0]
        names = [body]
    else:
        parts = line.split()
        if len(parts) > 1 and parts[0] not in _HOSTS_ADDRESSES:
            return []  # neither a plain domain nor a hosts-file line
        names = parts[1:] if len(parts) > 1 else parts
    out = []
    for name in names:
        name = name.strip().lower().rstrip(".")
        if name.startswith("*."):
            name = name[2:]
        if name in ("localhost", "localhost.localdomain", "broadcasthost", "local") or not name:
            continue
        try:
            name = name.encode("idna").decode("ascii") if not name.isascii() else name
        except UnicodeError:
            continue
        if "." in name and _DOMAIN_RE.match(name):
            out.append(name)
    return out


def parse_domains(lines: Iterable[str]) -> set[str]:
    domains: set[str] = set()
    for line in lines:
        domains.update(parse_domain_line(line))
    return domains


def domain_match(domains: set[str] | frozenset[str], host: str) -> str | None:
    """The listed domain that `host` is or is a subdomain of, or None (walks the labels)."""
    host = host.lower().rstrip(".")
    while host:
        if host in domains:
            return host
        dot = host.find(".")
        if dot < 0:
            return None
        host = host[dot + 1:]
    return None


def parse_phrase_lines(lines: Iterable[str], source: str) -> dict[str, float]:
    """`weight phrase` lines (weight optional, default 1) -> {phrase: weight}."""
    out: dict[str, float] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        first, _, rest = line.partition(" ")
        try:
            weight, phrase = float(first), rest.strip()
        except ValueError:
            weight, phrase = 1.0, line
        if not phrase:
            raise ListError(f"{source}:{number}: expected 'weight phrase', got {raw.strip()!r}")
        out[phrase.lower()] = weight
    return out


def _compile_patterns(patterns: Iterable[str], source: str) -> list[re.Pattern[str]]:
    out = []
    for i, pattern in enumerate(patterns):
        try:
            out.append(re.compile(pattern, re.IGNORECASE))
        except re.error as e:
            raise ListError(f"{source}: pattern {i + 1} {pattern!r} is not a regular expression: {e}") from None
    return out


@dataclass(frozen=True)
class CategoryLists:
    """The loaded lists of one category (immutable: a reload builds a new one)."""

    domains: frozenset[str] = frozenset()
    url_patterns: tuple[re.Pattern[str], ...] = ()
    phrases: dict[str, float] = field(default_factory=dict)

    def match_domain(self, host: str) -> str | None:
        return domain_match(self.domains, host)

    def match_url(self, url: str) -> str | None:
        """The first pattern (its text) that matches `url`, or None."""
        for pattern in self.url_patterns:
            if pattern.search(url):
                return pattern.pattern
        return None


@dataclass(frozen=True)
class CategorySource:
    """Where a category's lists come from: inline values plus an optional YAML file and directory."""

    name: str
    domains: Sequence[str] = ()
    url_patterns: Sequence[str] = ()
    phrases: dict[str, float] = field(default_factory=dict)
    file: Path | None = None
    directory: Path | None = None

    def files(self) -> list[Path]:
        out = [self.file] if self.file else []
        if self.directory is not None and self.directory.is_dir():
            out += sorted(p for p in self.directory.iterdir()
                          if p.is_file() and p.name.startswith(("domains", "urls", "phrases")))
        return out


def load_category(src: CategorySource) -> CategoryLists:
    """Read every list of a category.

    Raises:
        ListError: a file is missing or malformed (the message names it).
    """
    domains = parse_domains(src.domains)
    patterns = list(src.url_patterns)
    phrases = {k.lower(): float(v) for k, v in src.phrases.items()}
    if src.directory is not None and not src.directory.is_dir():
        raise ListError(f"category {src.name!r}: directory {str(src.directory)!r} does not exist")
    for path in src.files():
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise ListError(f"category {src.name!r}: cannot read {str(path)!r}: {e.strerror or e}") from None
        if path == src.file or (path.name.startswith("phrases") and path.suffix in (".yaml", ".yml")):
            data = _yaml(path, text)
            if path == src.file:
                domains |= parse_domains(_str_list(data.get("domains", []), path, "domains"))
                patterns += _str_list(data.get("url_patterns", []), path, "url_patterns")
                phrases.update(_weights(data.get("phrases", {}), path))
            else:
                phrases.update(_weights(data, path))
        elif path.name.startswith("domains"):
            domains |= parse_domains(text.splitlines())
        elif path.name.startswith("urls"):
            patterns += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        else:
            phrases.update(parse_phrase_lines(text.splitlines(), str(path)))
    return CategoryLists(frozenset(domains), tuple(_compile_patterns(patterns, f"category {src.name!r}")), phrases)


def _yaml(path: Path, text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ListError(f"{path}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ListError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def _str_list(value: Any, path: Path, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ListError(f"{path}: {key}: expected a list of strings")
    return value


def _weights(value: Any, path: Path) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ListError(f"{path}: phrases: expected a mapping of phrase to weight")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ListError(f"{path}: phrases.{k}: expected a number, got {v!r}")
        out[str(k).lower()] = float(v)
    return out


class ReloadingCategory:
    """A category's lists, re-read when one of its files changes (checked at most every `interval` s).

    A reload that fails keeps the previous lists and logs the error: a typo in a list file
    must not switch protection off.
    """

    def __init__(self, src: CategorySource, interval: float = 2.0) -> None:
        self.src, self.interval = src, interval
        self._stamp = self._fingerprint()
        self.lists = load_category(src)
        self._checked = time.monotonic()

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for path in self.src.files():
            try:
                st = os.stat(path)
            except OSError:
                continue
            out.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def current(self) -> CategoryLists:
        """The lists, reloaded first if a file changed since the last check."""
        now = time.monotonic()
        if now - self._checked >= self.interval:
            self._checked = now
            stamp = self._fingerprint()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self.lists = load_category(self.src)
                    log.info("category %s reloaded: %d domains, %d patterns, %d phrases", self.src.name,
                             len(self.lists.domains), len(self.lists.url_patterns), len(self.lists.phrases))
                except ListError as e:
                    log.error("category %s: reload failed, keeping the previous lists: %s", self.src.name, e)
        return self.lists
