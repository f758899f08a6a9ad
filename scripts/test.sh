#!/usr/bin/env bash
# Set everything up and run the whole test suite: `make test` and `.ci/run` both run this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-system-deps.sh
scripts/bootstrap.sh test
# screenshots of the dashboard at phone and desktop widths are kept here as test artefacts
export PORTICO_ARTIFACTS="${PORTICO_ARTIFACTS:-$PWD/test-artifacts}"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "portico: pytest collected no tests" >&2
fi
exit "$status"
