"""A real `unbound` on loopback serving DoT and DoH with a test CA made by the openssl CLI.

`Unbound(tmp_path, records)` writes a CA, a server certificate for `dns.test`, an
unbound.conf with only local data (it never contacts the internet) and starts
`unbound -d`. `.dot_port`, `.doh_port`, `.ca_file`, `.spki_pin`, `.stop()`, `.start()`.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

SERVER_NAME = "dns.test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_ca_and_cert(directory: Path, names: Sequence[str] = (SERVER_NAME,)) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server.key): a throwaway CA and a server cert for `names`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    run = lambda *args: subprocess.run(args, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=Portico test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}")
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n"
                   "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca, cert, key


def spki_pin(cert_file: Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a PEM certificate (RFC 7469 pin format)."""
    der = subprocess.run(["openssl", "x509", "-in", str(cert_file), "-pubkey", "-noout"],
                         check=True, capture_output=True).stdout
    pub = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=der,
                         check=True, capture_output=True).stdout
    return base64.b64encode(hashlib.sha256(pub).digest()).decode()


class Unbound:
    """unbound serving `records` (unbound local-data lines) over DoT and DoH on 127.0.0.1."""

    def __init__(self, directory: Path, records: Sequence[str]) -> None:
        if shutil.which("unbound") is None:
            raise RuntimeError("unbound is not installed; run scripts/install-system-deps.sh")
        self.dir = directory
        self.ca_file, self.cert_file, self.key_file = make_ca_and_cert(directory / "pki")
        self.spki_pin = spki_pin(self.cert_file)
        self.proc: subprocess.Popen[bytes] | None = None
        for attempt in range(3):  # a port picked free can be taken before unbound binds it: pick again
            self._configure(records)
            try:
                self.start()
                return
            except RuntimeError as e:
                if attempt == 2 or "exited with" not in str(e):
                    raise

    def _configure(self, records: Sequence[str]) -> None:
        """Write unbound.conf for two new free ports (a port taken meanwhile: see __init__)."""
        self.dot_port = _free_port()
        self.doh_port = _free_port()
        while self.doh_port == self.dot_port:
            self.doh_port = _free_port()
        lines = [
            "server:",
            f'  directory: "{self.dir}"',
            '  chroot: ""',
            '  username: ""',
            '  pidfile: ""',
            "  use-syslog: no",
            "  do-daemonize: no",
            "  verbosity: 0",
            "  num-threads: 1",
            f"  interface: 127.0.0.1@{self.dot_port}",
            f"  interface: 127.0.0.1@{self.doh_port}",
            f"  tls-port: {self.dot_port}",
            f"  https-port: {self.doh_port}",
            f'  tls-service-key: "{self.key_file}"',
            f'  tls-service-pem: "{self.cert_file}"',
            "  do-udp: no",
            "  access-control: 127.0.0.0/8 allow",
            '  module-config: "iterator"',
            '  local-zone: "." static',  # only the local data below exists; nothing is asked upstream
            *(f'  local-data: "{r}"' for r in records),
            "remote-control:",
            "  control-enable: no",
        ]
        self.conf = self.dir / "unbound.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        """Start (or restart) unbound and wait until DoT answers a TLS handshake."""
        check = subprocess.run(["unbound-checkconf", str(self.conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"unbound.conf invalid: {check.stdout}{check.stderr}")
        self.proc = subprocess.Popen(["unbound", "-d", "-c", str(self.conf)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                raise RuntimeError(f"unbound exited with {self.proc.returncode}: {out}")
            try:
                with socket.create_connection(("127.0.0.1", self.dot_port), timeout=0.5) as raw:
                    with ctx.wrap_socket(raw, server_hostname=SERVER_NAME):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("unbound did not serve DoT within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
