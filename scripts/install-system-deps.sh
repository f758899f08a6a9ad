#!/usr/bin/env bash
# Install the Debian packages the test suite and benchmarks run for real:
#   slapd, ldap-utils  - a real OpenLDAP directory for the auth tests
#   openssl            - test certificates (LDAPS/StartTLS, gRPC TLS, DoT)
#   wrk                - HTTP load generator for the bench/ scripts
#   unbound            - a real DNS-over-TLS / DNS-over-HTTPS resolver for the encrypted-DNS tests
#   chromium           - a real headless browser for the snippet/tracking and dashboard tests
# Packages already present are skipped, so this is quick on a prepared machine.
set -euo pipefail
PACKAGES=(slapd ldap-utils openssl wrk unbound chromium)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "portico: the tests need these Debian packages: ${missing[*]}" >&2
  echo "portico: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "==> installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# slapd must not start a system-wide directory of its own: tests start their own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
