#!/usr/bin/env bash
# The main job, end to end on the example project: validate every example, deploy the demo functions,
# invoke them (live and in a local sandbox), show their status and their sandboxes' hardening.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
set -a; source scripts/base-image.env; set +a  # the offline-built base; no registry here
fnctl() { .venv/bin/fnctl "$@"; }
show() { printf '\n\033[1m$ fnctl %s\033[0m\n' "$*"; fnctl "$@"; }

show validate manifests/
show diff || true                      # exit 1 = changes to apply
show apply
show invoke hello --data '{"name": "demo"}' --logs
show invoke orders --data '{"order": {"id": "o-1", "items": [{"sku": "a", "qty": 2, "price": 4.5}]}}'
show invoke --local hello --data '{"name": "local sandbox"}'
show status
show sandbox check hello
show history hello
