#!/usr/bin/env bash
# Prepare the machine (scripts/setup.sh), then run the test suite; arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
set -a; source scripts/base-image.env; set +a  # the offline-built base image, for fnctl run by the tests
# exec: pytest's own exit code is the result (5 = no tests collected stays a failure).
exec .venv/bin/python -m pytest "$@"
