"""Turn a parsed YAML mapping into frozen dataclasses, with errors a person can act on.

`build(cls, data, key)` walks a dataclass's type hints: nested dataclasses, `list[...]`/
`tuple[..., ...]`, `dict[str, ...]`, `Literal[...]`, `X | None`, plain scalars, and the
value types below (sizes, durations, addresses, networks, URLs). A field may carry
`metadata={"parse": fn}` to parse its raw value itself, or `{"check": fn}` to validate the
converted value; both raise `ValueError(what was expected)`.

Every error is a `ConfigError` naming the dotted key, the offending value and what is
allowed, e.g. `cache.max_size: expected a size like '512MB', got 'big'`. Unknown keys are
errors too, with a `did you mean ...?` suggestion. Secret values never appear in messages:
fields whose name ends in `password`, `secret`, `token` or `key` are shown as `'***'`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import types
import typing
from datetime import timedelta
from typing import Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit


class ConfigError(Exception):
    """The configuration is invalid; the message names the key, the value and what is allowed."""


_SECRET_SUFFIXES = ("password", "secret", "token", "key")


def show(key: str, value: Any) -> str:
    """A value as it may appear in an error message (secrets masked, long values cut)."""
    last = key.rsplit(".", 1)[-1].lower()
    if last.endswith(_SECRET_SUFFIXES) and not last.endswith(("_file", "_env")):
        return "'***'"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fail(key: str, value: Any, expected: str) -> typing.NoReturn:
    """Raise the standard `key: expected ..., got ...` error."""
    raise ConfigError(f"{key or '(top level)'}: expected {expected}, got {show(key, value)}")


# --- value types -------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
               "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
               "tib": 2**40}


def parse_size(value: Any) -> int:
    """'512MB', '1GiB', 1048576 -> bytes."""
    if isinstance(value, bool):
        raise ValueError("a size like '512MB'")
    if isinstance(value, int) and value >= 0:
        return value
    m = _SIZE_RE.match(str(value)) if isinstance(value, str) else None
    if not m or (m.group(2) or "").lower() not in _SIZE_UNITS:
        raise ValueError("a size like '512MB', '2GiB' or a number of bytes")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """'30s', '1h30m', '90d', 2.5 (seconds) -> timedelta."""
    if isinstance(value, bool):
        raise ValueError("a duration like '30s', '15m', '90d'")
    if isinstance(value, (int, float)) and value >= 0:
        return timedelta(seconds=value)
    text = str(value).strip().replace(" ", "") if isinstance(value, str) else ""
    if not text or _DURATION_RE.sub("", text) != "":
        raise ValueError("a duration like '30s', '15m', '90d'")
    return timedelta(seconds=sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_RE.findall(text)))


def parse_hostport(value: Any) -> tuple[str, int]:
    """'127.0.0.1:8080', '[::1]:8080', ':8080' -> (host, port); port 0 means any free port."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("an address like '127.0.0.1:8080' or '[::1]:8080'")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("an address like '127.0.0.1:8080' with a port from 0 to 65535")
    return host, int(port_text)


def parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """'10.0.0.0/8', '::1', '192.168.1.7' -> network (a bare address is a /32 or /128)."""
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise ValueError("a network like '10.0.0.0/8', '2001:db8::/32' or an address") from None


def parse_http_url(value: Any) -> str:
    """An absolute http(s) URL with a host, e.g. 'http://127.0.0.1:9000'."""
    if not isinstance(value, str):
        raise ValueError("a URL like 'http://127.0.0.1:9000'")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a URL like 'http://127.0.0.1:9000' (scheme http or https, with a host)")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError("a URL whose port is a number from 1 to 65535") from None
    if parts.query or parts.fragment:
        raise ValueError("a URL without query or fragment")
    return value.rstrip("/") if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}"


# --- the walker --------------------------------------------------------------------------

def build(cls: type, data: Any, key: str = "") -> Any:
    """Build dataclass `cls` from mapping `data`; `key` is the dotted path for messages.

    Raises:
        ConfigError: unknown key, missing required key, wrong type or value.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        fail(key, data, f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(cls))}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    for name in data:
        if name not in fields:
            where = f"{key}.{name}" if key else str(name)
            close = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed keys: {', '.join(fields)}"
            raise ConfigError(f"{where}: unknown key{hint}")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        where = f"{key}.{name}" if key else name
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: required key is missing")
            continue
        raw = data[name]
        parse = field.metadata.get("parse")
        try:
            value = _parsed(parse, raw, where) if parse and raw is not None else convert(hints[name], raw, where)
            if check := field.metadata.get("check"):
                check(value)
        except ValueError as e:
            fail(where, raw, str(e))
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except ValueError as e:  # __post_init__ cross-field checks raise ValueError("key: message")
        raise ConfigError(f"{key + '.' if key else ''}{e}") from None
    return obj


def convert(hint: Any, raw: Any, key: str) -> Any:
    """Convert one raw YAML value to the annotated type `hint`."""
    origin = get_origin(hint)
    if hint == _NETWORK:
        return _parsed(parse_network, raw, key)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if raw is None and type(None) in get_args(hint):
            return None
        if len(options) == 1:
            return convert(options[0], raw, key)
        for option in options:
            try:
                return convert(option, raw, key)
            except (ConfigError, ValueError):
                continue
        fail(key, raw, " or ".join(_describe(o) for o in options))
    if origin is Literal:
        allowed = get_args(hint)
        if raw not in allowed:
            fail(key, raw, "one of " + ", ".join(repr(a) for a in allowed))
        return raw
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(raw, list):
            fail(key, raw, "a list")
        args = get_args(hint)
        item = args[0] if args else Any
        items = [convert(item, v, f"{key}[{i}]") for i, v in enumerate(raw)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(raw, dict):
            fail(key, raw, "a mapping")
        _, value_type = get_args(hint) or (str, Any)
        return {str(k): convert(value_type, v, f"{key}.{k}") for k, v in raw.items()}
    if dataclasses.is_dataclass(hint):
        return build(hint, raw, key)
    if hint is Any:
        return raw
    if hint is bool:
        if not isinstance(raw, bool):
            fail(key, raw, "true or false")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            fail(key, raw, "a whole number")
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            fail(key, raw, "a number")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            fail(key, raw, "a string")
        return raw
    if hint is timedelta:
        return _parsed(parse_duration, raw, key)
    if hint in (ipaddress.IPv4Network, ipaddress.IPv6Network):
        return _parsed(parse_network, raw, key)
    from pathlib import Path

    if hint is Path:
        if not isinstance(raw, str) or not raw:
            fail(key, raw, "a file or directory path")
        return Path(raw)
    raise TypeError(f"schema: no converter for {hint!r} at {key}")  # a bug in our dataclasses


_NETWORK = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parsed(parse: typing.Callable[[Any], Any], raw: Any, key: str) -> Any:
    try:
        return parse(raw)
    except ValueError as e:
        fail(key, raw, str(e))
    except OverflowError:  # '99999999999d', '.inf', 10**20 seconds: no timedelta or int holds it
        fail(key, raw, f"a value within range ({_describe_parser(parse)})")


def _describe_parser(parse: typing.Callable[[Any], Any]) -> str:
    return {parse_duration: "a duration shorter than 999999999 days, like '30s' or '90d'",
            parse_size: "a size like '512MB' or '2GiB'"}.get(parse, "see the configuration reference")


def _describe(hint: Any) -> str:
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )
