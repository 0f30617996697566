#!/usr/bin/env bash
# Build fnctl's runtime base image offline from Debian packages (no container registry needed):
# mmdebstrap a minimal bookworm with python3 and the shared libraries manylinux wheels may assume, then
# `docker import` it as $FNCTL_BASE_IMAGE. The image carries the hash of this recipe (label
# io.fnctl.base-recipe) so scripts/setup.sh rebuilds it when the recipe changes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1  # no interactive apt hooks

TAG="${1:-${FNCTL_BASE_IMAGE:-$(sed -n 's/^FNCTL_BASE_IMAGE=//p' scripts/base-image.env)}}"
SUITE=bookworm

step() { echo "==> $*" >&2; }
# What the image is built from: this script (setup.sh compares it with the image's label).
recipe_hash() { sha256sum "$ROOT/scripts/build-base-image.sh" | cut -c1-16; }
if [ "${1:-}" = "--recipe-hash" ]; then recipe_hash; exit 0; fi

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

# The libraries a manylinux wheel may link against without bundling them (PEP 599's list, kept by PEP 600):
# glibc's (libc6: libc, libm, libdl, librt, libpthread, libutil, libnsl, libresolv, libcrypt), libgcc_s,
# libstdc++ (numpy, igraph, pandas, scipy: anything with C++ inside), zlib, expat, GLib/GObject and the small
# X11 client libraries. libGL is left out on purpose: it pulls in Mesa and LLVM (~150 MB) for a headless
# sandbox; a wheel that needs it is refused at build time, naming the library (fnctl.engine.pydeps).
WHEEL_LIBS=libstdc++6,libgcc-s1,zlib1g,libexpat1,libglib2.0-0,libx11-6,libxext6,libxrender1,libice6,libsm6

old="$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
[ -z "$old" ] || step "replacing $TAG: $(($(docker image inspect --format '{{.Size}}' "$TAG") / 1000000)) MB"

step "mmdebstrap $SUITE from $MIRROR"
# dpkg's path-exclude takes fnmatch globs (no brace expansion), hence one option per directory;
# the packages' copyright files are kept. The merged-usr hook makes the /usr symlinks itself instead of
# installing usrmerge, which drags in perl (~50 MB) that nothing in a sandbox runs; perl-base (8 MB, only
# for dpkg's and debconf's maintainer scripts: nobody installs packages in a sandbox) goes at the end. No file
# keeps a set-uid or set-gid bit (su, newgrp, unix_chkpwd): nothing in a sandbox may gain privileges, even
# where the engine cannot set no-new-privileges (a Swarm service, docs/swarm.md).
mmdebstrap --quiet --variant=essential --include="python3,$WHEEL_LIBS" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --customize-hook='chroot "$1" dpkg --purge --force-remove-essential --force-depends perl-base >/dev/null' \
    --customize-hook='find "$1" -xdev -type f -perm /6000 -exec chmod ug-s {} +' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "$SUITE" "$TMP/base.tar" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY $SUITE-security main" </dev/null >&2

step "docker import as $TAG"
docker import \
    --change "LABEL io.fnctl.base-recipe=$(recipe_hash)" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$TMP/base.tar" "$TAG" >/dev/null

new="$(docker image inspect --format '{{.Id}}' "$TAG")"
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true  # the replaced build, unless a container still uses it
fi
size="$(docker image inspect --format '{{.Size}}' "$TAG")"
step "built $TAG: $((size / 1000000)) MB"
