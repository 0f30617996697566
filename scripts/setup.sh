#!/usr/bin/env bash
# Prepare this machine for fnctl, idempotently: the project's virtualenv, a running Docker engine with
# gVisor (runsc) registered, wrk for benchmarks, node with the pinned build tools (esbuild, tsc), and the
# offline-built runtime base images (Python, Node.js).
# Fast (no installs, no builds) when everything is already in place. Progress goes to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1  # no interactive apt hooks

FNCTL_BASE_IMAGE="${FNCTL_BASE_IMAGE:-$(sed -n 's/^FNCTL_BASE_IMAGE=//p' scripts/base-image.env)}"
export FNCTL_BASE_IMAGE
DOCKERD_LOG=/var/log/fnctl-dockerd.log
DAEMON_JSON=/etc/docker/daemon.json
STAMP=.venv/.fnctl-lock.sha256
# gVisor as the engine reports it once registered (compact JSON, as `docker info` prints it). No KVM platform.
RUNSC='{"path":"/usr/bin/runsc","runtimeArgs":["--network=none","--host-uds=all"]}'

step() { echo "==> $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# apt-get install, refreshing the package lists once if they are missing or stale.
apt_install() {
    step "apt-get install $*"
    if ! apt-get install -y -q "$@" >/dev/null; then
        apt-get update -q >/dev/null
        apt-get install -y -q "$@" >/dev/null
    fi
}

# --- Python ---------------------------------------------------------------------------------------

python_ok() { command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; }

setup_python() {
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c '' 2>/dev/null; then
        python_ok || apt_install python3 python3-venv python3-pip
        step "creating .venv"
        rm -rf .venv
        python3 -m venv .venv
    fi
    local want have=""
    want="$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)"
    [ -f "$STAMP" ] && have="$(cat "$STAMP")"
    if [ "$want" != "$have" ]; then
        # Exactly the locked versions, each checked against its hash; then fnctl itself, without resolving
        # anything (its build backend, hatchling, is in the lock too, hence no build isolation).
        step "pip install -r requirements.lock (hashes required)"
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
            -r requirements.lock
        step "pip install -e . (from the lock: no dependency resolution)"
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
        .venv/bin/python -m pip check --disable-pip-version-check >/dev/null \
            || die "the installed packages do not fit together: re-resolve with scripts/relock.sh"
        echo "$want" > "$STAMP"
    fi
}

# --- Docker engine --------------------------------------------------------------------------------

# Prints the engine's runtimes as JSON; fails if no engine answers within a few seconds.
engine_runtimes() { timeout 5 docker info --format '{{json .Runtimes}}' 2>/dev/null; }

# wait_for DESCRIPTION SECONDS COMMAND...: poll COMMAND until it succeeds or the time is up.
wait_for() {
    local what="$1" limit="$2"; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${limit}s waiting for $what (see $DOCKERD_LOG)"
        sleep 0.5
    done
}

engine_has_runsc() { [[ "$(engine_runtimes)" == *"\"runsc\":$RUNSC"* ]]; }

# Merge the runsc runtime into daemon.json, keeping every other key; prints "changed" if it wrote.
register_runsc() {
    mkdir -p "$(dirname "$DAEMON_JSON")"
    python3 - "$DAEMON_JSON" "$RUNSC" <<'PY'
import json, os, sys
path, wanted = sys.argv[1], json.loads(sys.argv[2])
config = {}
if os.path.exists(path) and os.path.getsize(path) > 0:
    with open(path) as f:
        config = json.load(f)
if config.get("runtimes", {}).get("runsc") != wanted:
    config.setdefault("runtimes", {})["runsc"] = wanted
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    print("changed")
PY
}

dockerd_pid() {
    local pid
    [ -f /var/run/docker.pid ] || return 1
    pid="$(cat /var/run/docker.pid)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start_dockerd() {
    if dockerd_pid >/dev/null; then
        step "dockerd is already starting; waiting for it"
    else
        rm -f /var/run/docker.pid
        step "starting dockerd (log: $DOCKERD_LOG)"
        setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    wait_for "the Docker engine" 60 engine_runtimes
}

setup_docker() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    [ -x /usr/bin/runsc ] || missing+=(runsc)
    command -v wrk >/dev/null || missing+=(wrk)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

    local changed
    changed="$(register_runsc)"
    [ -z "$changed" ] || step "registered runsc in $DAEMON_JSON"

    if ! engine_runtimes >/dev/null; then
        start_dockerd
    elif [ -n "$changed" ] || ! engine_has_runsc; then
        local pid
        pid="$(dockerd_pid)" || die "cannot reload the engine for runsc: no local dockerd (/var/run/docker.pid)"
        step "reloading dockerd (pid $pid) for runsc"
        kill -HUP "$pid"
    fi
    wait_for "runsc (as in $DAEMON_JSON) among the engine's runtimes" 30 engine_has_runsc
}

# --- Base image -----------------------------------------------------------------------------------

# Built when missing, and rebuilt when scripts/build-base-image.sh changed since (the image's recipe label).
setup_base_image() {
    local want have
    want="$(bash scripts/build-base-image.sh --recipe-hash)"
    have="$(docker image inspect --format '{{index .Config.Labels "io.fnctl.base-recipe"}}' "$FNCTL_BASE_IMAGE" \
        2>/dev/null || true)"
    if [ "$have" != "$want" ]; then
        step "building base image $FNCTL_BASE_IMAGE (recipe ${have:-none} -> $want)"
        bash scripts/build-base-image.sh
    fi
}

step "python"
setup_python
# git: gitpython drives the git binary (fnctl sync, push hooks, the commit every deploy records)
command -v git >/dev/null || apt_install git
# headless Chromium and its WebDriver: the dashboard's end-to-end tests (tests/dashboard) drive a real browser
command -v chromium >/dev/null && command -v chromedriver >/dev/null || apt_install chromium chromium-driver
# PostgreSQL: the server binaries for the PostgreSQL state backend's tests (scripts/pg-server.sh starts a
# throwaway server per test run). No cluster is created and nothing runs as a system service.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    mkdir -p /etc/postgresql-common
    grep -qs '^create_main_cluster *= *false' /etc/postgresql-common/createcluster.conf \
        || echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
    apt_install postgresql
fi
step "node tools (esbuild, tsc)"
bash scripts/install-node-tools.sh
step "docker engine"
setup_docker
step "base image $FNCTL_BASE_IMAGE"
setup_base_image
step "node base image"
bash scripts/build-node-image.sh  # returns at once when the image exists with the same inputs
step "ready"
