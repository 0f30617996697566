#!/usr/bin/env bash
# What a reviewer checks before reading the change, fastest first: lint and format (ruff), types (mypy strict
# on the package, the tests and the benchmarks), and the architecture's contracts (import-linter: layers, no
# cycles, each library behind its boundary module, pure decisions without I/O). Needs the project's .venv
# (scripts/setup.sh); CI runs it before the tests (.ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
step() { echo "==> $*" >&2; }
step "ruff check"
.venv/bin/ruff check fnctl tests benchmarks
step "ruff format --check"
.venv/bin/ruff format --check fnctl tests benchmarks
step "mypy (package)"
.venv/bin/python -m mypy
step "mypy (tests and benchmarks)"
.venv/bin/python -m mypy --strict tests benchmarks --exclude 'tests/fixtures' --exclude 'tests/sandbox_handlers' --exclude 'tests/golden'
step "import-linter"
.venv/bin/lint-imports --no-cache
