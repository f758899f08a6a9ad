"""Helpers shared by the LDAP tests: settings for the test directory, and loopback servers
that stand in for broken directories (one that never answers, one that answers garbage)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from auth.ldap import LdapSettings
from tests.auth.slapd import SERVICE_DN, SUFFIX


def settings(urls: list[str] | str, env: str, **kw: object) -> LdapSettings:
    """LdapSettings for the seeded test directory at `urls`, the service password in `env`."""
    if isinstance(urls, str):
        urls = [urls]
    base = dict(urls=tuple(urls), base_dn=SUFFIX, bind_dn=SERVICE_DN, password_env=env,
                connect_timeout=2.0, response_timeout=5.0)  # generous: a loaded CI machine is slow
    base.update(kw)
    return LdapSettings(**base)  # type: ignore[arg-type]


class LoopbackServer:
    """Accepts on 127.0.0.1 and hands every connection to `handle` in its own thread."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self._handle = handle
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        self.url = f"ldap://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for c in self._conns:
            c.close()
        self._sock.close()


def hold(conn: socket.socket) -> None:
    """A hung directory: the connection is accepted (and kept open) but never answered."""
