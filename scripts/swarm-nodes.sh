#!/usr/bin/env bash
# A Docker Swarm of N nodes on this one machine, for testing `engine = "swarm"` (docs/swarm.md).
#
#   scripts/swarm-nodes.sh up N           nodes 1..N running and joined (node 1 is the manager); idempotent
#   scripts/swarm-nodes.sh load IMAGE...  copy images from the host's engine into every node (skips those present)
#   scripts/swarm-nodes.sh kill K         lose node K at once: its daemon, containerd, shims and containers, kill -9
#   scripts/swarm-nodes.sh down           remove everything: daemons, containers, cgroups, namespaces, data
#   scripts/swarm-nodes.sh status         one line per node
#
# A node is an extra dockerd in a network namespace of its own (NAME-nK, hostname NAME-nK), with its own config,
# data root, exec root, socket, pidfile and cgroup parent. The nodes reach each other over veths to a bridge in
# a namespace of its own (NAME-hub), on a subnet that exists only there: the root namespace gets no address,
# route or rule, and nothing here ever sends it traffic for a node; clients talk to each daemon on its Unix
# socket ($RUN/nK/docker.sock). The host's own engine is never stopped or reconfigured.
# Why not `ip netns exec` to start a daemon: it remounts /sys, hiding the cgroup v1 hierarchy from dockerd.
# Runs as root. Every wait is bounded; `up` first clears what a killed run left behind.
set -euo pipefail

NAME=${FNCTL_SWARM_NAME:-fnsw}
RUN=${FNCTL_SWARM_RUN:-/run/$NAME}       # sockets, pidfiles, exec roots: short paths
DATA=${FNCTL_SWARM_DATA:-/var/lib/$NAME} # data roots: image layers want a real disk, not tmpfs
SUBNET=10.231.77                         # exists only on the hub bridge and the nodes' veths
# The nodes' default runtime; `runsc` makes every task of the swarm run under gVisor (docs/swarm.md).
RUNTIME=${FNCTL_SWARM_RUNTIME:-runc}
# 1: the daemons set no-new-privileges on every container (daemon.json); 0 leaves it to fnctl's runtime,
# which sets PR_SET_NO_NEW_PRIVS itself: the tests run with 0 to show that the runtime's own setting holds.
NNP=${FNCTL_SWARM_NNP:-0}

say() { echo "swarm-nodes: $*" >&2; }
sock() { echo "$RUN/n$1/docker.sock"; }
dk() { local k=$1; shift; timeout 60 docker -H "unix://$(sock "$k")" "$@"; }
addr() { echo "$SUBNET.$((10 + $1))"; }

wait_for() { # wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
  local until=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > until)); then say "timed out waiting for $what"; return 1; fi
    sleep 0.1
  done
}

alive() { local pid; pid=$(cat "$1" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; } # (a pidfile goes when its daemon stops)

node_numbers() { # the nodes that exist, from their run or data directories
  { ls -d "$RUN"/n* "$DATA"/n* 2>/dev/null || true; } | sed -n 's#.*/n\([0-9]\+\)$#\1#p' | sort -un
}

hub_up() {
  ip netns list | grep -qw "$NAME-hub" || ip netns add "$NAME-hub"
  ip -n "$NAME-hub" link show br0 >/dev/null 2>&1 || {
    ip -n "$NAME-hub" link add br0 type bridge
    ip -n "$NAME-hub" link set br0 up
    ip -n "$NAME-hub" link set lo up
  }
}

node_net() {
  local k=$1 ns=$NAME-n$1
  ip netns list | grep -qw "$ns" || ip netns add "$ns"
  ip -n "$ns" link show eth0 >/dev/null 2>&1 && return 0
  ip -n "$NAME-hub" link del "h$k" 2>/dev/null || true
  ip link add "$NAME-v$k" type veth peer name "h$k" netns "$NAME-hub"
  ip link set "$NAME-v$k" netns "$ns"
  ip -n "$ns" link set "$NAME-v$k" name eth0
  ip -n "$ns" addr add "$(addr "$k")/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  ip -n "$NAME-hub" link set "h$k" master br0 up
}

node_daemon() {
  local k=$1 dir=$RUN/n$1
  mkdir -p "$dir" "$DATA/n$k"
  if alive "$dir/dockerd.pid" && dk "$k" version >/dev/null 2>&1; then return 0; fi
  local nnp=false
  [[ $NNP == 1 ]] && nnp=true
  cat >"$dir/daemon.json" <<EOF
{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--host-uds=all"]}},
 "default-runtime": "$RUNTIME", "no-new-privileges": $nnp, "labels": ["io.fnctl.default-runtime=$RUNTIME"],
 "log-driver": "json-file", "log-opts": {"max-size": "1m", "max-file": "1"}}
EOF
  # A daemon of its own: no iptables rules, no docker0 bridge (a task without a network gets loopback only).
  setsid nsenter --net="/run/netns/$NAME-n$k" unshare --uts sh -c "hostname $NAME-n$k; exec env \
    DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 dockerd --config-file $dir/daemon.json --data-root $DATA/n$k \
    --exec-root $dir/x --pidfile $dir/dockerd.pid -H unix://$dir/docker.sock --cgroup-parent /$NAME-n$k \
    --iptables=false --ip6tables=false --bridge=none --ip-masq=false" \
    </dev/null >"$dir/dockerd.log" 2>&1 &
  wait_for 30 "node $k's daemon" dk "$k" version || { tail -20 "$dir/dockerd.log" >&2; return 1; }
}

swarm_state() { dk "$1" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null; }

all_ready() { # all_ready N: node 1 sees N nodes Ready
  [[ $(dk 1 node ls --format '{{.Status}}' | grep -c '^Ready$') -ge $1 ]]
}

up() {
  local n=${1:?up N}
  # Nodes beyond N, or left half-made by a killed run, go first.
  for k in $(node_numbers); do
    if ((k > n)) || ! alive "$RUN/n$k/dockerd.pid"; then node_down "$k"; fi
  done
  hub_up
  for k in $(seq 1 "$n"); do node_net "$k"; done
  for k in $(seq 1 "$n"); do node_daemon "$k" & done
  wait_all
  if [[ $(swarm_state 1) != active ]]; then
    # Heartbeats every second: a lost node is seen (and its tasks rescheduled) within seconds, not 15 s.
    dk 1 swarm init --advertise-addr "$(addr 1)" --listen-addr "$(addr 1):2377" --dispatcher-heartbeat 1s >/dev/null
  fi
  local token
  token=$(dk 1 swarm join-token -q worker)
  for k in $(seq 2 "$n"); do
    if [[ $(swarm_state "$k") != active ]]; then
      dk "$k" swarm join --token "$token" --advertise-addr "$(addr "$k")" --listen-addr "$(addr "$k"):2377" \
        "$(addr 1):2377" >/dev/null &
    fi
  done
  wait_all
  wait_for 30 "$n nodes Ready" all_ready "$n"
  say "$n nodes up"
}

wait_all() { # wait for every background job, failing if any failed
  local failed=0
  for job in $(jobs -p); do wait "$job" || failed=1; done
  return $failed
}

load() {
  local tmp
  tmp=$(mktemp -d "$DATA/load.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  for image in "$@"; do
    local want missing=()
    want=$(docker image inspect --format '{{.Id}}' "$image")
    for k in $(node_numbers); do
      [[ $(dk "$k" image inspect --format '{{.Id}}' "$image" 2>/dev/null) == "$want" ]] || missing+=("$k")
    done
    ((${#missing[@]})) || continue
    timeout 300 docker save -o "$tmp/image.tar" "$image"
    for k in "${missing[@]}"; do dk "$k" load -q -i "$tmp/image.tar" >/dev/null & done
    wait_all
  done
}

procs_naming() { # PIDs whose command line names PATH (the pattern is bracketed so that grep never finds itself)
  grep -l -s -- "[${1:0:1}]${1:1}" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 || true
}

pids_of_node() { # every process of node K: daemon, containerd, shims, containers (by pidfile, exec root, cgroup)
  local k=$1 dir=$RUN/n$1
  local f
  for f in "$dir/dockerd.pid" "$dir/x/containerd/containerd.pid"; do cat "$f" 2>/dev/null && echo; done
  procs_naming "$dir/" # the daemon, its containerd and the shims all name the node's run directory
  cat /sys/fs/cgroup/pids/"$NAME-n$k"/*/cgroup.procs 2>/dev/null || true
}

kill_node() { # lose node K at once, as a machine that loses power (its namespace and files stay)
  local k=${1:?kill K}
  for round in 1 2 3; do
    local pids
    pids=$(pids_of_node "$k" | sort -un | grep -v "^$$\$" || true)
    [[ -z $pids ]] && break
    kill -9 $pids 2>/dev/null || true
    sleep 0.2
  done
  rm -f "$RUN/n$k/dockerd.pid"
}

node_down() {
  local k=$1 dir=$RUN/n$1
  if alive "$dir/dockerd.pid"; then
    dk "$k" swarm leave --force >/dev/null 2>&1 || true
    kill -TERM "$(cat "$dir/dockerd.pid")" 2>/dev/null || true
    local until=$((SECONDS + 15))
    while alive "$dir/dockerd.pid" && ((SECONDS < until)); do sleep 0.1; done
  fi
  kill_node "$k"
  # Mounts under the node's roots (overlays, netns files, shm) first, deepest first, then the files.
  awk -v a="$dir" -v b="$DATA/n$k" '$2 == a || $2 == b || index($2, a "/") == 1 || index($2, b "/") == 1 {print $2}' /proc/self/mounts |
    sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  for ctl in /sys/fs/cgroup/*/; do
    [[ -d $ctl$NAME-n$k ]] && find "$ctl$NAME-n$k" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  ip netns del "$NAME-n$k" 2>/dev/null || true
  rm -rf "$dir" "$DATA/n$k"
}

down() {
  for k in $(node_numbers); do node_down "$k" & done
  wait_all || true
  ip netns del "$NAME-hub" 2>/dev/null || true
  rm -rf "$RUN" "$DATA"
  leftovers
}

leftovers() { # what would still be here; says nothing and succeeds when nothing is
  local found=0
  if ip netns list | grep -q "^$NAME-"; then say "namespaces left: $(ip netns list | grep "^$NAME-" | tr '\n' ' ')"; found=1; fi
  if compgen -G "/sys/fs/cgroup/*/$NAME-n*" >/dev/null; then say "cgroups left"; found=1; fi
  if [[ -e $RUN || -e $DATA ]]; then say "files left in $RUN or $DATA"; found=1; fi
  if [[ -n $(procs_naming "$RUN/")$(procs_naming "$DATA/") ]]; then say "processes left"; found=1; fi
  return $found
}

status() {
  for k in $(node_numbers); do
    if alive "$RUN/n$k/dockerd.pid"; then
      echo "n$k $(sock "$k") pid=$(cat "$RUN/n$k/dockerd.pid") swarm=$(swarm_state "$k")"
    else
      echo "n$k down"
    fi
  done
}

[[ ${SWARM_NODES_SOURCED:-} ]] && return 0
[[ $(id -u) == 0 ]] || { say "needs root"; exit 1; }
case ${1:-} in
  up) up "${2:-3}" ;;
  load) shift; load "$@" ;;
  kill) kill_node "${2:?kill K}" ;;
  down) down ;;
  status) status ;;
  leftovers) leftovers ;;
  *) sed -n '2,8p' "$0" >&2; exit 2 ;;
esac
