"""Encrypted DNS for the gateway: DNS-over-TLS and DNS-over-HTTPS with a TTL cache.

Not an addon: the resolver the DNS guard (reverse path) and the forward guard (forward
path, through `ForwardGuardSettings.resolve`) both use, so every upstream name Portico
dials is resolved over an encrypted channel, once, and the connection goes to the address
that was resolved.

- DoT (RFC 7858) in the RFC 8310 *strict* profile: the resolver's certificate must carry
  the configured `server_name`, or its public key must match an SPKI pin (or both).
  The transport is a plain asyncio TLS stream (2-byte length framing), connections
  reused (RFC 7858 3.4); dnspython builds and parses the messages.
- DoH (RFC 8484): POST `application/dns-message` over HTTP/2 with httpx (dnspython 2.9's
  own DoH needs h2>=4.4, which mitmproxy 11.0.2 forbids). The resolver is dialled at its
  configured (bootstrap) address with TLS SNI and certificate check on its name.
- No silent fallback to port 53: when every resolver fails, `DnsResolutionError` names each
  failure. Only `plaintext_fallback=True` lets the system resolver answer (how="plaintext").
- Answers are cached by their TTL (clamped to [min_ttl, max_ttl]); concurrent lookups of
  one name share a single query.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import logging
import socket
import ssl
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

log = logging.getLogger("portico.dns")

Protocol = Literal["dot", "doh"]


class DnsResolutionError(OSError):
    """A name could not be resolved over encrypted DNS; the message names every resolver's error.

    An OSError so callers that already handle socket-level resolution failures
    (`getaddrinfo` raises OSError) treat it the same way.
    """


@dataclass(frozen=True)
class ResolverSpec:
    """One encrypted resolver.

    `address` is the IP Portico dials (for DoH the bootstrap address of the URL's host).
    `server_name` is the name its certificate must carry; `spki_pins` are base64 SHA-256
    hashes of acceptable SubjectPublicKeyInfo (RFC 7469 format). At least one is required.
    """

    protocol: Protocol
    address: str
    port: int
    server_name: str | None = None
    path: str = "/dns-query"
    spki_pins: tuple[str, ...] = ()
    ca_file: Path | None = None
    timeout: float = 2.0
    name: str = ""

    @property
    def label(self) -> str:
        """How this resolver is named in metadata, events and messages."""
        if self.name:
            return self.name
        if self.protocol == "doh":
            return f"https://{self.server_name or self.address}:{self.port}{self.path}"
        return f"tls://{self.server_name or self.address}:{self.port}"


@dataclass(frozen=True)
class ResolverSettings:
    resolvers: tuple[ResolverSpec, ...]
    plaintext_fallback: bool = False
    min_ttl: float = 5.0
    max_ttl: float = 3600.0
    cache_size: int = 10_000
    ipv6: bool = True


@dataclass(frozen=True)
class Resolution:
    """How one name was resolved: `how` is dot, doh, plaintext, cached or static."""

    host: str
    addresses: tuple[str, ...]
    how: str
    resolver: str
    ttl: float = 0.0
    elapsed: float = 0.0


@dataclass
class _Entry:
    expires: float
    resolution: Resolution


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def spki_sha256(der_cert: bytes) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a DER certificate, the RFC 7469 pin format."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_der_x509_certificate(der_cert)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def tls_context(spec: ResolverSpec) -> ssl.SSLContext:
    """The client TLS context for a resolver: name-verified unless it is pin-only."""
    ctx = ssl.create_default_context(cafile=str(spec.ca_file) if spec.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if spec.server_name is None:  # pin-only: the pin, checked after the handshake, is the authentication
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def check_pin(spec: ResolverSpec, ssl_object: Any) -> None:
    """Raise when the resolver has pins and its certificate's key matches none of them."""
    if not spec.spki_pins:
        return
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise DnsResolutionError(f"{spec.label}: no certificate to check the SPKI pin against")
    pin = spki_sha256(der)
    if pin not in spec.spki_pins:
        raise DnsResolutionError(f"{spec.label}: certificate key {pin} matches no configured spki_pin")


def addresses_from(response: dns.message.Message, rdtype: dns.rdatatype.RdataType) -> tuple[list[str], float]:
    """The A/AAAA addresses of an answer (CNAME chains included) and the smallest TTL."""
    out: list[str] = []
    ttl = float("inf")
    for rrset in response.answer:
        if rrset.rdtype == rdtype:
            out.extend(r.address for r in rrset)
            ttl = min(ttl, rrset.ttl)
        elif rrset.rdtype == dns.rdatatype.CNAME:
            ttl = min(ttl, rrset.ttl)
    return out, ttl


class _NameError(Exception):
    """The resolver answered authoritatively that the name does not exist (not a resolver failure)."""


class EncryptedResolver:
    """Resolves names over the configured DoT/DoH resolvers with a TTL cache."""

    def __init__(self, settings: ResolverSettings) -> None:
        self.settings = settings
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Resolution]] = {}
        self._last: OrderedDict[str, Resolution] = OrderedDict()
        self._contexts = {id(s): tls_context(s) for s in settings.resolvers}
        self._doh_clients: dict[int, Any] = {}
        self._dot_idle: dict[int, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    # --- public --------------------------------------------------------------------------

    async def lookup(self, host: str) -> Resolution:
        """Resolve `host` (A and AAAA); IP literals come back as how="static".

        Raises:
            DnsResolutionError: no resolver could answer, or the name has no address.
        """
        host = host.strip("[]").rstrip(".").lower()
        if is_ip_literal(host):
            return self._remember(Resolution(host, (host,), "static", "literal"))
        now = time.monotonic()
        entry = self._cache.get(host)
        if entry is not None and entry.expires > now:
            self._cache.move_to_end(host)
            r = entry.resolution
            return self._remember(Resolution(host, r.addresses, "cached", r.resolver, entry.expires - now, 0.0))
        pending = self._inflight.get(host)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[host] = pending
            try:
                result = await self._resolve_uncached(host)
            except BaseException as e:
                pending.set_exception(e)
                pending.exception()  # mark retrieved: waiters may be none
                raise
            else:
                pending.set_result(result)
            finally:
                self._inflight.pop(host, None)
            return self._remember(result)
        result = await asyncio.shield(pending)
        return self._remember(Resolution(host, result.addresses, "cached", result.resolver, result.ttl, 0.0))

    async def resolve(self, host: str, port: int) -> list[str]:
        """`ForwardGuardSettings.resolve`-compatible: the addresses of `host`, IPv4 first."""
        return list((await self.lookup(host)).addresses)

    def last(self, host: str) -> Resolution | None:
        """The most recent resolution of `host` (to record how a forward request was resolved)."""
        return self._last.get(host.strip("[]").rstrip(".").lower())

    def cached(self, host: str) -> Resolution | None:
        """The cached, unexpired resolution of `host`, if any (no query)."""
        entry = self._cache.get(host.lower())
        return entry.resolution if entry and entry.expires > time.monotonic() else None

    def clear_cache(self) -> None:
        self._cache.clear()

    async def aclose(self) -> None:
        for idle in self._dot_idle.values():
            for _, writer in idle:
                writer.close()
        self._dot_idle = {}
        clients, self._doh_clients = list(self._doh_clients.values()), {}
        for client in clients:
            await client.aclose()

    async def probe(self, spec: ResolverSpec, name: str) -> tuple[list[str], float]:
        """Query one resolver directly (for `portico dns check`): (addresses, seconds)."""
        started = time.monotonic()
        addresses, _ = await self._query(spec, name)
        return addresses, time.monotonic() - started

    # --- internals -----------------------------------------------------------------------

    def _remember(self, r: Resolution) -> Resolution:
        self._last[r.host] = r
        self._last.move_to_end(r.host)
        while len(self._last) > 1024:
            self._last.popitem(last=False)
        return r

    async def _resolve_uncached(self, host: str) -> Resolution:
        errors: list[str] = []
        started = time.monotonic()
        for spec in self.settings.resolvers:
            try:
                addresses, ttl = await self._query(spec, host)
            except _NameError as e:
                raise DnsResolutionError(f"{host}: {e} (answered by {spec.label})") from None
            except Exception as e:  # any transport/TLS/parse failure: try the next resolver
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                errors.append(f"{spec.label}: {reason}")
                log.warning("encrypted DNS query for %s via %s failed: %s", host, spec.label, reason)
                continue
            if not addresses:
                raise DnsResolutionError(f"{host}: the name has no A/AAAA address (answered by {spec.label})")
            ttl = max(self.settings.min_ttl, min(self.settings.max_ttl, ttl))
            resolution = Resolution(host, tuple(addresses), spec.protocol, spec.label, ttl, time.monotonic() - started)
            self._store(host, resolution)
            return resolution
        if not self.settings.resolvers:
            errors.append("no encrypted resolver is configured")
        if self.settings.plaintext_fallback:
            log.warning("DNS for %s falls back to the plaintext system resolver (dns.plaintext_fallback): %s",
                        host, "; ".join(errors))
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError as e:
                raise DnsResolutionError(f"{host}: encrypted resolvers failed ({'; '.join(errors)}) and the "
                                         f"plaintext system resolver failed too: {e}") from None
            addresses = list(dict.fromkeys(str(i[4][0]) for i in infos))
            resolution = Resolution(host, tuple(addresses), "plaintext", "system", self.settings.min_ttl,
                                    time.monotonic() - started)
            self._store(host, resolution)
            return resolution
        raise DnsResolutionError(f"{host}: every encrypted resolver failed, and plaintext fallback is off: "
                                 + "; ".join(errors))

    def _store(self, host: str, resolution: Resolution) -> None:
        self._cache[host] = _Entry(time.monotonic() + resolution.ttl, resolution)
        self._cache.move_to_end(host)
        while len(self._cache) > self.settings.cache_size:
            self._cache.popitem(last=False)

    def _queries(self, host: str) -> list[dns.message.Message]:
        types = [dns.rdatatype.A] + ([dns.rdatatype.AAAA] if self.settings.ipv6 else [])
        return [dns.message.make_query(host, t) for t in types]

    async def _query(self, spec: ResolverSpec, host: str) -> tuple[list[str], float]:
        queries = self._queries(host)
        send = self._dot if spec.protocol == "dot" else self._doh
        responses = await asyncio.wait_for(send(spec, queries), spec.timeout)
        addresses: list[str] = []
        ttl = float("inf")
        for q, r in zip(queries, responses):
            rcode = r.rcode()
            if rcode == dns.rcode.NXDOMAIN:
                raise _NameError("the name does not exist (NXDOMAIN)")
            if rcode != dns.rcode.NOERROR:
                raise DnsResolutionError(f"answered {dns.rcode.to_text(rcode)}")
            found, t = addresses_from(r, q.question[0].rdtype)
            addresses.extend(found)
            ttl = min(ttl, t)
        return addresses, (ttl if ttl != float("inf") else self.settings.min_ttl)

    async def _dot(self, spec: ResolverSpec, queries: Sequence[dns.message.Message]) -> list[dns.message.Message]:
        """Exchange over a reused TLS connection (RFC 7858 3.4), or a new one.

        Reuse matters beyond the handshake: with TLS 1.3 a server that doesn't set
        TCP_NODELAY (unbound) holds the first answer behind its session ticket until our
        delayed ACK fires, 40 ms later; later answers on the same connection are immediate.
        """
        idle = self._dot_idle.setdefault(id(spec), [])
        while idle:
            reader, writer = idle.pop()
            if writer.is_closing() or reader.at_eof():
                writer.close()
                continue
            try:
                answers = await self._dot_exchange(spec, reader, writer, queries)
            except (OSError, EOFError, asyncio.IncompleteReadError):
                writer.close()  # the server closed an idle connection: try a fresh one
                continue
            self._dot_release(spec, reader, writer)
            return answers
        reader, writer = await asyncio.open_connection(
            spec.address, spec.port, ssl=self._contexts[id(spec)],
            server_hostname=spec.server_name or "",  # "": no SNI for a pin-only resolver
        )
        try:
            check_pin(spec, writer.get_extra_info("ssl_object"))
            answers = await self._dot_exchange(spec, reader, writer, queries)
        except BaseException:
            writer.close()
            raise
        self._dot_release(spec, reader, writer)
        return answers

    def _dot_release(self, spec: ResolverSpec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        idle = self._dot_idle.setdefault(id(spec), [])
        if len(idle) < 8:
            idle.append((reader, writer))
        else:
            writer.close()

    async def _dot_exchange(self, spec: ResolverSpec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            queries: Sequence[dns.message.Message]) -> list[dns.message.Message]:
        # One question at a time: each question carries the ACK for the previous answer.
        # Pipelining both would leave the second answer behind the server's Nagle until our
        # delayed ACK fires (+40 ms with unbound); two loopback/LAN round trips are cheaper.
        by_id: dict[int, dns.message.Message] = {}
        for q in queries:
            wire = q.to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            while q.id not in by_id:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                r = dns.message.from_wire(await reader.readexactly(length))
                by_id[r.id] = r
        return [self._matched(q, by_id.get(q.id)) for q in queries]

    @staticmethod
    def _matched(q: dns.message.Message, r: dns.message.Message | None) -> dns.message.Message:
        if r is None or not q.is_response(r):
            raise DnsResolutionError("the resolver's answer does not match the question")
        return r

    def _doh_client(self, spec: ResolverSpec) -> Any:
        import httpx

        client = self._doh_clients.get(id(spec))
        if client is None:
            client = httpx.AsyncClient(verify=self._contexts[id(spec)], http1=True, http2=True,
                                       timeout=spec.timeout, trust_env=False)
            self._doh_clients[id(spec)] = client
        return client

    async def _doh(self, spec: ResolverSpec, queries: Sequence[dns.message.Message]) -> list[dns.message.Message]:
        client = self._doh_client(spec)
        host = f"[{spec.address}]" if ":" in spec.address else spec.address
        url = f"https://{host}:{spec.port}{spec.path}"

        async def one(q: dns.message.Message) -> dns.message.Message:
            q.id = 0  # RFC 8484 4.1: id 0 for cache-friendliness
            headers = {"content-type": "application/dns-message", "accept": "application/dns-message"}
            extensions: dict[str, Any] = {}
            if spec.server_name:
                headers["host"] = spec.server_name
                extensions["sni_hostname"] = spec.server_name
            response = await client.post(url, content=q.to_wire(), headers=headers, extensions=extensions)
            stream = response.extensions.get("network_stream")
            check_pin(spec, stream.get_extra_info("ssl_object") if stream is not None else None)
            if response.status_code != 200:
                raise DnsResolutionError(f"HTTP {response.status_code} from the DoH server")
            if response.headers.get("content-type", "").split(";")[0].strip() != "application/dns-message":
                raise DnsResolutionError("the DoH server did not answer application/dns-message")
            r = dns.message.from_wire(response.content)
            return self._matched(q, r)

        return list(await asyncio.gather(*(one(q) for q in queries)))

