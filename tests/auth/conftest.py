"""Fixtures for the auth tests: a real slapd per session (seeded) and per test (disposable)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth.slapd import SERVICE_PW, Slapd, slapd_available

needs_slapd = pytest.mark.skipif(not slapd_available(),
                                 reason="slapd/ldap-utils not installed: run scripts/install-system-deps.sh")


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A seeded slapd shared by the read-only tests; do not stop it."""
    if not slapd_available():
        pytest.skip("slapd not installed: run scripts/install-system-deps.sh")
    server = Slapd(tmp_path_factory.mktemp("slapd")).start()
    try:
        server.seed()
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A seeded slapd this test may stop, restart or modify."""
    if not slapd_available():
        pytest.skip("slapd not installed: run scripts/install-system-deps.sh")
    server = Slapd(tmp_path / "slapd").start()
    try:
        server.seed()
        yield server
    finally:
        server.stop()


@pytest.fixture
def service_pw_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of an environment variable holding the test directory's service password."""
    monkeypatch.setenv("PORTICO_TEST_LDAP_PW", SERVICE_PW)
    return "PORTICO_TEST_LDAP_PW"
