#!/usr/bin/env bash
# Start the auth tests' seeded OpenLDAP on free 127.0.0.1 ports (plain+StartTLS and LDAPS,
# with a throw-away test CA) and keep it running until Ctrl-C. Prints the URLs, base DN,
# service account, CA file and the seeded users (see tests/auth/slapd.py).
# Usage: scripts/slapd-test.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m tests.auth.slapd "$@"
