#!/usr/bin/env bash
# The host-side Node.js toolchain fnctl builds nodejs22 and typescript functions with (esbuild, TypeScript 7's
# native tsc, @types/node), exactly as pinned in node-tools/package-lock.json: node and npm from Debian if
# missing, then `npm ci` into fnctl's cache under a directory named by the lock's hash (through
# fnctl.toolchain.nodetools, which looks there). Idempotent: quick when that directory is complete.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
step() { echo "==> $*" >&2; }

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    step "apt-get install nodejs npm"
    apt-get install -y -q nodejs npm >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q nodejs npm >/dev/null; }
fi

# The tools' own install (npm ci into the cache, under the lock's hash) is fnctl's, which a build also runs
# when it finds them missing: one place knows where they live.
cd "$ROOT"
.venv/bin/python -c 'from fnctl.toolchain.nodetools import ensure_tools; ensure_tools(lambda line: print("==> " + line))' >&2
