"""A real OpenLDAP `slapd` for the auth tests (model: python-ldap's `slapdtest`).

`Slapd(workdir).start()` writes a `slapd.conf` (mdb backend, memberOf overlay, TLS with a
test CA generated here), starts `/usr/sbin/slapd` on free 127.0.0.1 ports (plain LDAP with
StartTLS, and LDAPS), and waits until it answers. `seed()` loads users and groups through
`ldapadd`-equivalent writes as the root DN, so the memberOf overlay maintains `memberOf`.
Nothing here is imported by the library.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import ldap3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SLAPD = "/usr/sbin/slapd"
SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-secret"
SERVICE_DN = f"cn=portico,ou=services,{SUFFIX}"
SERVICE_PW = "service-secret"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"


def slapd_available() -> bool:
    return Path(SLAPD).exists() and shutil.which("ldapsearch") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class TestCA:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_ca(directory: Path, name: str, server_names: tuple[str, ...] = ("localhost",),
            server_ips: tuple[str, ...] = ("127.0.0.1",)) -> TestCA:
    """A throw-away CA and a server certificate it signs (EC P-256, valid one day)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in server_ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = TestCA(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return paths


_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {work}/slapd.pid
argsfile {work}/slapd.args
TLSCACertificateFile {ca}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
sizelimit 500

database mdb
suffix "{suffix}"
rootdn "{rootdn}"
rootpw {rootpw}
directory {work}/data
maxsize 16777216
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
access to attrs=userPassword
  by self write
  by anonymous auth
  by * none
access to *
  by dn.exact="{service}" read
  by self read
  by * none
"""


class Slapd:
    """One slapd process with its own config, data and TLS material under `workdir`."""

    def __init__(self, workdir: Path, server_names: tuple[str, ...] = ("localhost",),
                 server_ips: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.workdir = workdir
        self.ca = make_ca(workdir / "tls", "good", server_names, server_ips)
        self.ldap_port = 0
        self.ldaps_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def start(self) -> Slapd:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "slapd.conf"
        conf.write_text(_CONF.format(work=self.workdir, ca=self.ca.ca_file, cert=self.ca.cert_file,
                                     key=self.ca.key_file, suffix=SUFFIX, rootdn=ROOT_DN,
                                     rootpw=ROOT_PW, service=SERVICE_DN))
        last_error = ""
        for _ in range(5):  # a free port can be taken between probing and binding: retry
            if not self.ldap_port or self.process is None:
                self.ldap_port, self.ldaps_port = free_port(), free_port()
            urls = f"{self.ldap_url}/ {self.ldaps_url}/"
            self.process = subprocess.Popen(
                [SLAPD, "-f", str(conf), "-h", urls, "-d", "0"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_ready():
                return self
            last_error = self._reap()
            self.ldap_port = 0
        raise RuntimeError(f"slapd did not start: {last_error}")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.ldap_port), timeout=0.2):
                    pass
                with socket.create_connection(("127.0.0.1", self.ldaps_port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def _reap(self) -> str:
        if self.process is None:
            return ""
        if self.process.poll() is None:
            self.process.kill()
        _, err = self.process.communicate(timeout=10)
        self.process = None
        return err.decode(errors="replace")[-2000:]

    def stop(self) -> None:
        """Stop slapd (SIGTERM, then SIGKILL) and wait for it; the ports are released."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same ports, with the same data."""
        self.stop()
        self.start_same_ports()

    def start_same_ports(self, attempts: int = 50) -> None:
        """Start again (after `stop`) on the ports it had. A freed port can be held for a
        moment by someone else (an outgoing connection given it as its source port): retry."""
        conf = self.workdir / "slapd.conf"
        urls = f"{self.ldap_url}/ {self.ldaps_url}/"
        last_error = ""
        for _ in range(attempts):
            self.process = subprocess.Popen([SLAPD, "-f", str(conf), "-h", urls, "-d", "0"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_ready():
                return
            last_error = self._reap()
            time.sleep(0.1)
        raise RuntimeError(f"slapd did not restart on its ports: {last_error}")

    def admin(self) -> ldap3.Connection:
        server = ldap3.Server("127.0.0.1", port=self.ldap_port, get_info=ldap3.NONE)
        return ldap3.Connection(server, ROOT_DN, ROOT_PW, auto_bind=True, raise_exceptions=True)

    def seed(self) -> None:
        """Users, groups (one nested) and a disabled user; see the module docstring."""
        with self.admin() as c:
            c.add(SUFFIX, ["dcObject", "organization"], {"o": "Example", "dc": "example"})
            for ou in ("people", "groups", "services"):
                c.add(f"ou={ou},{SUFFIX}", ["organizationalUnit"], {"ou": ou})
            c.add(SERVICE_DN, ["person"], {"cn": "portico", "sn": "service",
                                           "userPassword": SERVICE_PW})
            for uid, name, pw, extra in USERS:
                attrs = {"uid": uid, "cn": name, "sn": name.split()[-1],
                         "mail": f"{uid.lower()}@example.org", "userPassword": pw, **extra}
                c.add(user_dn(uid), ["inetOrgPerson"], attrs)
            for cn, members in GROUP_MEMBERS.items():
                c.add(group_dn(cn), ["groupOfNames"], {"cn": cn, "member": members})


def user_dn(uid: str) -> str:
    return f"uid={uid},{PEOPLE}"


def group_dn(cn: str) -> str:
    return f"cn={cn},{GROUPS}"


# uid, display name, password, extra attributes
USERS = [
    ("alice", "Alice Liddell", "alice-pw", {}),
    ("bob", "Bob Builder", "bob-pw", {}),
    ("carol", "Carol Danvers", "carol-pw", {"employeeType": "disabled"}),
    # two entries answer to the same mail: a login by that address must be refused
    ("dave", "Dave One", "dave-pw", {"mail": "shared@example.org"}),
    ("dave2", "Dave Two", "dave2-pw", {"mail": "shared@example.org"}),
    # a uid with filter metacharacters, to prove escaping finds exactly this entry
    ("star*(x)", "Star Person", "star-pw", {}),
]
GROUP_MEMBERS = {
    "developers": [user_dn("alice"), user_dn("star*(x)")],
    "admins": [user_dn("bob")],
    # nested: everyone in `developers` is in `staff` through the group entry
    "staff": [group_dn("developers"), user_dn("dave")],
}


def main() -> None:
    """Run a seeded test slapd until interrupted (for demos and bench/auth.py).

    Prints one line per fact the caller needs: URLs, base DN, service DN/password, CA file.
    """
    import sys
    import tempfile

    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="portico-slapd-"))
    server = Slapd(workdir).start()
    # block the signals (after slapd started: children inherit the mask) so sigwait gets
    # them and slapd is always stopped
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    server.seed()
    print(f"ldap_url={server.ldap_url}\nldaps_url={server.ldaps_url}\nbase_dn={SUFFIX}\n"
          f"bind_dn={SERVICE_DN}\nbind_password={SERVICE_PW}\nca_file={server.ca.ca_file}\n"
          f"users={', '.join(f'{u}/{p}' for u, _, p, _ in USERS)}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()


if __name__ == "__main__":
    main()
