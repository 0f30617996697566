#!/usr/bin/env bash
# Re-resolve every direct and indirect dependency of pyproject.toml (with its test extra) to the newest
# versions allowed, write them with their hashes to requirements.lock, reinstall from it and run the tests.
# Arguments go to pytest. Review the lock's diff before committing it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV_VERSION=0.13.9  # the resolver itself is pinned too
TOOLS=.venv-tools
if ! "$TOOLS/bin/uv" --version 2>/dev/null | grep -q " $UV_VERSION"; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
# The machines here are x86_64 Debian 12 (glibc 2.36) with Python 3.11: the lock holds hashes of every file
# of each chosen version, so pip picks the wheel that fits the machine at install time.
"$TOOLS/bin/uv" pip compile pyproject.toml --extra test --generate-hashes --upgrade \
    --python-version 3.11 --python-platform x86_64-manylinux_2_36 \
    --no-header --annotation-style line --quiet -o requirements.lock
rm -f .venv/.fnctl-lock.sha256  # setup.sh reinstalls from the new lock
exec bash scripts/test.sh "$@"
