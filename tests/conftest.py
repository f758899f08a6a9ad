"""Fixtures every test package may use."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test.

    The usual trick (bind port 0, close, use the number) leaves a port of the kernel's
    ephemeral range that nobody holds. A client connecting to it can be given that same
    number as its own source port and connect to itself (TCP simultaneous open): it then
    reads back what it sent. That failed an LDAP failover test in CI once. A socket that
    stays bound without listening makes the port refuse, and the kernel will not hand it
    out as a source port while it is bound.
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]
