"""A server that answers with bytes that are not LDAP is an outage, never a crash.

ldap3's decoder raises bare KeyError/IndexError on such bytes. CI met it once: a connection to
a closed port reached itself and read back its own bind request. These tests replay exactly
that (a server echoing what it receives) at connect time and in the middle of a session.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from auth.errors import DirectoryUnavailable
from auth.ldap import LdapDirectory
from tests.auth.ldapkit import LoopbackServer, settings
from tests.auth.slapd import SERVICE_PW, Slapd


def echo(conn: socket.socket) -> None:
    """What a connection that reached itself sees: every byte sent comes back."""
    while data := conn.recv(65536):
        conn.sendall(data)


class Relay:
    """Forwards to slapd; after `echo_next()`, answers the next request with itself instead."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._echo_next = threading.Event()
        self.echoed = 0
        self.server = LoopbackServer(self._relay)

    def echo_next(self) -> None:
        self._echo_next.set()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        try:
            while data := client.recv(65536):
                if self._echo_next.is_set():
                    self._echo_next.clear()
                    self.echoed += 1
                    client.sendall(data)
                else:
                    upstream.sendall(data)
        finally:
            upstream.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass


@pytest.fixture
def echo_url() -> Iterator[str]:
    server = LoopbackServer(echo)
    yield server.url
    server.close()


@pytest.fixture
def relay(slapd: Slapd) -> Iterator[Relay]:
    r = Relay(slapd.ldap_port)
    yield r
    r.server.close()


def test_a_server_echoing_its_input_is_skipped_for_the_next_url(
        echo_url: str, slapd: Slapd, service_pw_env: str) -> None:
    d = LdapDirectory(settings([echo_url, slapd.ldap_url], service_pw_env))
    assert d.authenticate("bob", "bob-pw").username == "bob"


def test_only_a_non_ldap_server_is_unavailable_naming_it(
        echo_url: str, service_pw_env: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "portico.auth.ldap")
    d = LdapDirectory(settings([echo_url], service_pw_env))
    with pytest.raises(DirectoryUnavailable) as e:
        d.authenticate("alice", "alice-pw")
    assert echo_url in str(e.value) and "not LDAP" in str(e.value)
    assert "not LDAP" in caplog.text
    # the echoed bind request carried the service password; no message may repeat it
    assert SERVICE_PW not in str(e.value) and SERVICE_PW not in caplog.text


def test_garbage_on_a_pooled_connection_reconnects(
        relay: Relay, service_pw_env: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "portico.auth.ldap")
    d = LdapDirectory(settings([relay.server.url], service_pw_env))
    assert d.lookup("alice") is not None  # the service connection is open and pooled
    relay.echo_next()
    assert d.lookup("bob") is not None  # its search came back as garbage: a fresh connection
    assert relay.echoed == 1
    assert "not LDAP" in caplog.text and "reconnecting" in caplog.text


def test_our_own_errors_are_not_taken_for_garbage(
        slapd: Slapd, service_pw_env: str) -> None:
    """A KeyError raised by Portico's code is a bug: it must surface, not pass for an outage."""
    d = LdapDirectory(settings([slapd.ldap_url], service_pw_env))

    def broken(_conn: object) -> None:
        raise KeyError("a bug of ours")

    with pytest.raises(KeyError, match="a bug of ours"):
        d._with_connection(d._service_pool, "test", broken)  # noqa: SLF001
