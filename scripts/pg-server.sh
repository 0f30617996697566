#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and benchmarks, in a directory of its own, reachable only over a
# Unix socket in that directory (no TCP), trusting local connections; never a system service.
#
#   scripts/pg-server.sh start DIR   initdb into DIR (if empty), start, print the server's URL (~1 s)
#   scripts/pg-server.sh stop DIR    stop it (fast shutdown); DIR stays, remove it yourself
#   scripts/pg-server.sh url DIR     print the URL of the server in DIR
#
# The server runs as the `postgres` user when started by root (initdb refuses root); DIR is made theirs.
set -euo pipefail

usage() { echo "usage: $0 start|stop|url DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action="$1"
dir="$(mkdir -p "$2" && cd "$2" && pwd)"
bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$bindir/initdb" ] || { echo "error: PostgreSQL is not installed; run scripts/setup.sh" >&2; exit 1; }
data="$dir/data"

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# A port of its own per directory: it only names the socket file (.s.PGSQL.PORT), no TCP listener is opened.
port=$(( 20000 + $(printf '%s' "$dir" | cksum | cut -d' ' -f1) % 20000 ))
url="postgresql:///postgres?host=$dir&port=$port&user=postgres"

case "$action" in
start)
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    if [ ! -f "$data/PG_VERSION" ]; then
        as_owner "$bindir/initdb" --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync -U postgres -D "$data" >/dev/null
    fi
    as_owner "$bindir/pg_ctl" -w -s -D "$data" -l "$dir/server.log" start -o \
        "-c listen_addresses='' -c port=$port -c unix_socket_directories='$dir' -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null
    echo "$url"
    ;;
stop)
    [ -f "$data/postmaster.pid" ] && as_owner "$bindir/pg_ctl" -w -s -D "$data" stop -m fast >/dev/null
    ;;
url)
    echo "$url"
    ;;
*)
    usage
    ;;
esac
