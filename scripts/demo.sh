#!/usr/bin/env bash
# Set everything up and run the gateway in front of the built-in demo module.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/portico demo "$@"
