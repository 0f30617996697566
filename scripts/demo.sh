#!/usr/bin/env bash
# The main job, end to end on the example project: validate every example, deploy the demo functions (Python,
# and one TypeScript function), invoke them (live and in a local sandbox), show their status and their
# sandboxes' hardening.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
set -a; source scripts/base-image.env; set +a  # the offline-built base; no registry here
fnctl() { .venv/bin/fnctl "$@"; }
show() { printf '\n\033[1m$ fnctl %s\033[0m\n' "$*"; fnctl "$@"; }
# At the end, or on a failure, the demo stops everything it started: the gateway, then the instances `apply`
# started (`fnctl delete`: out of routing, containers stopped; history and data stay, and a re-run deploys
# again from the cached images). DEMO_KEEP=1 leaves the functions running, to explore them afterwards.
SERVE=""
stop_all() {
    if [ -n "$SERVE" ]; then kill "$SERVE" 2>/dev/null; wait "$SERVE" 2>/dev/null || true; fi
    [ "${DEMO_KEEP:-}" = 1 ] && return
    local names
    names="$(fnctl get functions -o json 2>/dev/null \
        | .venv/bin/python -c 'import json, sys; print(" ".join(f["name"] for f in json.load(sys.stdin)))')" || return 0
    for name in $names; do fnctl delete "$name" >/dev/null 2>&1 || echo "could not stop $name" >&2; done
    printf '\nstopped: the gateway and the instances of %s\n' "${names:-no function}"
}
trap stop_all EXIT

show validate manifests/
show diff || true                      # exit 1 = changes to apply
show apply
show invoke hello --data '{"name": "demo"}' --logs
show invoke greet --data '{"name": "TypeScript"}' --logs   # compiled on the host, run by Node.js 22
show invoke orders --data '{"order": {"id": "o-1", "items": [{"sku": "a", "qty": 2, "price": 4.5}]}}'
show invoke --local hello --data '{"name": "local sandbox"}'
show status
show sandbox check hello
show history hello

# Data: orders created through the REST API (curl), read back by a function with context.db, under the rights
# of the API key that calls it. Re-runnable: the inserts carry Idempotency-Keys (a re-run replays them).
PORT="${DEMO_PORT:-$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
# The binary itself, not the `fnctl` shell function: $! must be the gateway's own pid for the trap to stop it.
.venv/bin/fnctl serve --address "127.0.0.1:$PORT" >/tmp/fnctl-demo-serve.log 2>&1 &
SERVE=$!
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.5; done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || { cat /tmp/fnctl-demo-serve.log; exit 1; }
printf '\n\033[1m$ KEY=$(fnctl keys create demo-shop --role shop-admin)\033[0m\n'
KEY=$(fnctl keys create "demo-shop-$(date +%s)" --role shop-admin)
api() { printf '\n\033[1m$ curl %s\033[0m\n' "$*"; curl -sS -H "Authorization: Bearer $KEY" "$@"; echo; }
api -X POST "http://127.0.0.1:$PORT/v1/collections/orders/docs" -H 'Content-Type: application/json' \
    -H 'Idempotency-Key: demo-order-1' -d '{"customer": "ada", "items": [{"sku": "a", "qty": 2, "price": 4.5}]}'
api -X POST "http://127.0.0.1:$PORT/v1/collections/orders/docs" -H 'Content-Type: application/json' \
    -H 'Idempotency-Key: demo-order-2' -d '{"customer": "ada", "items": [{"sku": "b", "qty": 1, "price": 12}]}'
api -X POST "http://127.0.0.1:$PORT/v1/collections/orders/docs" -H 'Content-Type: application/json' \
    -d '{"customer": "ada", "items": []}'              # bad input: 400 with the schema violation's JSON path
api -X POST "http://127.0.0.1:$PORT/v1/collections/orders/docs" -H 'Content-Type: application/json' \
    -d '{"customer": "ada", "items": [{"sku": "c", "qty": 500, "price": 30}]}'  # the hook aborts it: 422
show triggers                          # orders-before-create: enabled, no faults
api -X POST "http://127.0.0.1:$PORT/v1/triggers/orders-price-check/run"   # a manual trigger (or: fnctl run)
api "http://127.0.0.1:$PORT/v1/collections/orders/docs?filter=%7B%22customer%22%3A%22ada%22%7D&order=customer,createdAt"
api -X POST "http://127.0.0.1:$PORT/invoke/order-book" -H 'Content-Type: application/json' -d '{"customer": "ada"}'
show data find orders '{"customer": "ada"}'

# A view: order-book's answer cached per caller (X-Fnctl-View-Cache: miss, then hit) until a write overlaps
# what it read; a query that does not match the function's `parameters` is a 400 naming the violation.
view() { printf '\n\033[1m$ curl %s\033[0m\n' "$*"; curl -sS -D - -o /tmp/fnctl-demo-view.json -H "Authorization: Bearer $KEY" "$@" \
    | grep -i '^x-fnctl-view-cache' || true; cat /tmp/fnctl-demo-view.json; echo; }
view "http://127.0.0.1:$PORT/v1/views/orders-summary?customer=ada"
view "http://127.0.0.1:$PORT/v1/views/orders-summary?customer=ada"
# A new order on every run (no Idempotency-Key: a replay would change nothing, and the next read would be a hit):
# it overlaps what the cached answer read, so the next read is a miss that includes it.
api -X POST "http://127.0.0.1:$PORT/v1/collections/orders/docs" -H 'Content-Type: application/json' \
    -d '{"customer": "ada", "items": [{"sku": "c", "qty": 3, "price": 1}]}'
view "http://127.0.0.1:$PORT/v1/views/orders-summary?customer=ada"
view "http://127.0.0.1:$PORT/v1/views/orders-summary?customer=ada&colour=red"
