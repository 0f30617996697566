"""The node gateways of a Swarm in the store (`gateways` table, engine = "swarm"): each gateway's row says
which node it runs on, the address other gateways reach it at, the revisions it has instances of, and when
it last said so, and its public key (the one its signed requests to other gateways are verified with,
fnctl.gateway.peerauth). A gateway writes its row every second (`beat`) and deletes it when it stops (`leave`); a
gateway with no instance of a revision forwards the request to a live one that has (docs/swarm.md,
"Forwarding"). Liveness is the heartbeat's age, by the writers' clocks: the nodes' clocks must agree
within the liveness window (NTP does far better)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from fnctl.state.store import Store


@dataclass(frozen=True)
class GatewayRow:
    id: str
    node: str  # the node's hostname
    address: str  # http://host:port, where other gateways send what they forward; "": none can reach it
    held: frozenset[tuple[str, int]]  # (function, revision) it has a ready instance of
    heartbeat: float  # seconds since the epoch, by its own clock
    public_key: str = ""  # its Ed25519 public key, base64 (fnctl.gateway.peerauth)


def beat(store: Store, row: GatewayRow, forget_after: float = 60.0) -> None:
    """Write (or refresh) a gateway's row; rows silent for `forget_after` seconds (a gateway killed before it
    could leave) are deleted on the way."""
    store._execute("DELETE FROM gateways WHERE heartbeat < ?", (row.heartbeat - forget_after,))
    held = json.dumps(sorted([f, r] for f, r in row.held))
    store._execute(
        "INSERT INTO gateways (id, node, address, held, heartbeat, public_key) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET node = excluded.node, address = excluded.address, held = excluded.held, "
        "heartbeat = excluded.heartbeat, public_key = excluded.public_key",
        (row.id, row.node, row.address, held, row.heartbeat, row.public_key),
    )


def leave(store: Store, gateway_id: str) -> None:
    store._execute("DELETE FROM gateways WHERE id = ?", (gateway_id,))


def live(store: Store, max_age: float, now: float | None = None) -> list[GatewayRow]:
    """The gateways whose last heartbeat is at most `max_age` seconds old."""
    now = time.time() if now is None else now
    rows = store._query(
        "SELECT id, node, address, held, heartbeat, public_key FROM gateways WHERE heartbeat >= ? ORDER BY id",
        (now - max_age,),
    )
    return [GatewayRow(str(i), str(n), str(a), _held(json.loads(h)), float(b), str(k)) for i, n, a, h, b, k in rows]


def _held(pairs: Iterable[list[object]]) -> frozenset[tuple[str, int]]:
    return frozenset((str(f), int(str(r))) for f, r in pairs)


def public_key(store: Store, gateway_id: str) -> str | None:
    """The public key `gateway_id` published in its row (None: no such gateway, or it left)."""
    rows = store._query("SELECT public_key FROM gateways WHERE id = ?", (gateway_id,))
    return str(rows[0][0]) if rows else None
