#!/usr/bin/env bash
# Build fnctl's runtime base image offline from Debian packages (no container registry needed):
# mmdebstrap a minimal bookworm with python3, then `docker import` it as $FNCTL_BASE_IMAGE.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1  # no interactive apt hooks

TAG="${1:-${FNCTL_BASE_IMAGE:-$(sed -n 's/^FNCTL_BASE_IMAGE=//p' scripts/base-image.env)}}"
SUITE=bookworm

step() { echo "==> $*" >&2; }

# The host's configured Debian mirrors (deb822 or one-line format); override with FNCTL_DEBIAN_MIRROR.
host_uris() {
    {
        sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n'
        sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
    } | grep -E '/debian(-security)?/?$' || true
}
MIRROR="${FNCTL_DEBIAN_MIRROR:-$(host_uris | awk '!/-security/ {print; exit}')}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY="${FNCTL_DEBIAN_SECURITY_MIRROR:-$(host_uris | awk '/-security/ {print; exit}')}"
SECURITY="${SECURITY:-http://deb.debian.org/debian-security}"

if ! command -v mmdebstrap >/dev/null; then
    step "apt-get install mmdebstrap"
    apt-get install -y -q mmdebstrap >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q mmdebstrap >/dev/null; }
fi

TMP="$(mktemp -d /var/tmp/fnctl-base.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT

step "mmdebstrap $SUITE from $MIRROR"
# dpkg's path-exclude takes fnmatch globs (no brace expansion), hence one option per directory;
# the packages' copyright files are kept.
mmdebstrap --quiet --variant=essential --include=python3 \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "$SUITE" "$TMP/base.tar" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY $SUITE-security main" </dev/null

old="$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
step "docker import as $TAG"
docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$TMP/base.tar" "$TAG" >/dev/null

new="$(docker image inspect --format '{{.Id}}' "$TAG")"
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true  # the replaced build, unless a container still uses it
fi
size="$(docker image inspect --format '{{.Size}}' "$TAG")"
step "built $TAG: $((size / 1000000)) MB"
