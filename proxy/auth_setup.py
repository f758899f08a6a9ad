"""Build the Auth and Acl addons from the `auth:` and `access_control:` sections
(called by proxy/pipeline.py, right after the forward guard).

Files under the data directory (`telemetry.path`, used even when telemetry is disabled):
`session.key` (the session signing key, 0600, made on first start unless
`auth.session.secret_file`/`secret_env` names one), `regulation/` (bans, auth.throttle), `revoked-sessions/` (logged-out session ids) and
`accounts/` (who was seen in which org/project, addons/accounts.py).

Without an `auth:` section nobody can log in: `access_control:` alone still applies its
bypass/deny rules (and answers 401 where a login would be needed). With `auth:` and no
`access_control:`, every request needs a login (`default_policy: authenticated`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from addons.accounts import ACCOUNTS_DIRNAME, AccountLedger, AccountMapping, GroupMapping
from addons.acl import Acl, AclSettings
from addons.auth import Auth, AuthSettings
from addons.recorder import Recorder
from auth.access import AccessControl
from auth.errors import AuthError
from auth.identity import Authenticator
from auth.revocation import REVOKED_DIRNAME, RevokedSessions
from auth.sessions import SessionManager, SessionSettings, generate_key
from auth.throttle import REGULATION_DIRNAME, RegulationSettings, Regulator
from proxy.config import AuthConfig, PorticoConfig
from proxy.schema import ConfigError

log = logging.getLogger("portico.auth")

SESSION_KEY_FILENAME = "session.key"


def data_dir(config: PorticoConfig) -> Path:
    return Path(config.telemetry.path)


def ensure_session_key(path: Path) -> Path:
    """Create `path` with one new random key (mode 0600) unless it exists; returns it.

    Raises:
        ConfigError: the file cannot be created.
    """
    if path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path  # another process made it first
    except OSError as e:
        raise ConfigError(f"auth.session.secret_file: cannot create {str(path)!r}: {e.strerror or e}; "
                          "set secret_file or secret_env") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(generate_key() + "\n")
    log.info("auth: made a new session signing key in %s", path)
    return path


def session_settings(config: PorticoConfig) -> SessionSettings:
    assert config.auth is not None
    s = config.auth.session
    if s.secret_env is not None:
        key_file, key_env = None, s.secret_env
    else:
        key_file = str(s.secret_file or ensure_session_key(data_dir(config) / SESSION_KEY_FILENAME))
        key_env = None
    return SessionSettings(key_file=key_file, key_env=key_env,
                           absolute_lifetime=s.absolute_lifetime.total_seconds(),
                           inactivity_timeout=s.inactivity_timeout.total_seconds(),
                           refresh_after=s.refresh_after.total_seconds())


def make_backend(auth: AuthConfig) -> Authenticator:
    """LdapDirectory or UsersFile from the section (nothing is contacted yet)."""
    if auth.backend == "ldap":
        from auth.ldap import LdapDirectory

        assert auth.ldap is not None
        return LdapDirectory(auth.ldap)
    from auth.users import UsersFile

    assert auth.users_file is not None
    return UsersFile(auth.users_file)


def account_mapping(auth: AuthConfig) -> AccountMapping:
    a = auth.accounts
    return AccountMapping(group_pattern=a.group_pattern,
                          groups={g: GroupMapping(r.org, r.project, r.role) for g, r in a.groups.items()},
                          roles=dict(a.roles), default_project=a.default_project, default_role=a.default_role)


def access_control(config: PorticoConfig) -> AccessControl | None:
    if config.access_control is not None:
        return config.access_control
    if config.auth is not None:
        return AccessControl(default_policy="authenticated")
    return None


def auth_addons(config: PorticoConfig, store: Any) -> list[Any]:
    """[Auth, Acl], [Acl] or [] for the pipeline.

    Raises:
        ConfigError: a key/users file, the LDAP service password or a state directory is unusable.
    """
    addons: list[Any] = []
    recorder = Recorder(store)
    auth = config.auth
    realm = auth.realm if auth is not None else "Portico"
    if auth is not None:
        data = data_dir(config)
        try:
            sessions = SessionManager(session_settings(config))
            backend = make_backend(auth)
            r = auth.regulation
            regulator = None
            if r.max_retries or r.address_max_retries:
                regulator = Regulator.open(data / REGULATION_DIRNAME, RegulationSettings(
                    max_retries=r.max_retries, address_max_retries=r.address_max_retries,
                    find_time=r.find_time.total_seconds(), ban_time=r.ban_time.total_seconds(),
                    ipv6_prefix=r.ipv6_prefix))
            revoked = RevokedSessions.open(data / REVOKED_DIRNAME)
        except (AuthError, ValueError) as e:
            raise ConfigError(f"auth: {e}") from None
        mapping = account_mapping(auth)
        ledger = AccountLedger(data / ACCOUNTS_DIRNAME) if mapping.enabled else None
        if auth.group_refresh_interval is not None:
            refresh = auth.group_refresh_interval.total_seconds()
        else:
            refresh = auth.ldap.group_cache_ttl / 2 if auth.ldap is not None else 0.0
        h = auth.headers
        addons.append(Auth(AuthSettings(
            reserved_prefix=config.reserved_prefix, cookie_name=auth.session.cookie_name,
            header_user=h.user, header_groups=h.groups, header_email=h.email, header_name=h.name,
            realm=realm, basic=auth.basic, forward_auth=auth.forward_proxy_auth and config.forward is not None,
            group_refresh_interval=refresh,
            directory_check_interval=auth.accounts.check_interval.total_seconds()),
            backend, sessions, regulator, recorder, mapping, ledger, revoked=revoked))
    control = access_control(config)
    if control is not None:
        addons.append(Acl(AclSettings(control=control, reserved_prefix=config.reserved_prefix, realm=realm),
                          recorder))
    return addons
