"""The node gateways of a Swarm in the store (`gateways` table, engine = "swarm"): each gateway's row says
which node it runs on, the address other gateways reach it at, the revisions it has instances of, and when
it last said so. A gateway writes its row every second (`beat`) and deletes it when it stops (`leave`); a
gateway with no instance of a revision forwards the request to a live one that has (docs/swarm.md,
"Forwarding"). Liveness is the heartbeat's age, by the writers' clocks: the nodes' clocks must agree
within the liveness window (NTP does far better)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from fnctl.state.store import Store


@dataclass(frozen=True)
class GatewayRow:
    id: str
    node: str  # the node's hostname
    address: str  # http://host:port, where other gateways send what they forward
    held: frozenset[tuple[str, int]]  # (function, revision) it has a ready instance of
    heartbeat: float  # seconds since the epoch, by its own clock


def beat(store: Store, row: GatewayRow, forget_after: float = 60.0) -> None:
    """Write (or refresh) a gateway's row; rows silent for `forget_after` seconds (a gateway killed before it
    could leave) are deleted on the way."""
    store._execute("DELETE FROM gateways WHERE heartbeat < ?", (row.heartbeat - forget_after,))
    held = json.dumps(sorted([f, r] for f, r in row.held))
    store._execute(
        "INSERT INTO gateways (id, node, address, held, heartbeat) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET node = excluded.node, address = excluded.address, held = excluded.held, "
        "heartbeat = excluded.heartbeat",
        (row.id, row.node, row.address, held, row.heartbeat),
    )


def leave(store: Store, gateway_id: str) -> None:
    store._execute("DELETE FROM gateways WHERE id = ?", (gateway_id,))


def live(store: Store, max_age: float, now: float | None = None) -> list[GatewayRow]:
    """The gateways whose last heartbeat is at most `max_age` seconds old."""
    now = time.time() if now is None else now
    rows = store._query(
        "SELECT id, node, address, held, heartbeat FROM gateways WHERE heartbeat >= ? ORDER BY id", (now - max_age,)
    )
    return [GatewayRow(str(i), str(n), str(a), _held(json.loads(h)), float(b)) for i, n, a, h, b in rows]


def _held(pairs: Iterable[list[object]]) -> frozenset[tuple[str, int]]:
    return frozenset((str(f), int(str(r))) for f, r in pairs)


_SECRET = "gateway-peer-secret"  # the settings row


def peer_secret(store: Store) -> bytes:
    """The secret the gateways of this state sign their own requests to each other with
    (`fnctl.gateway.peerauth`): made by the first gateway that asks, then the same for all."""
    store._execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (_SECRET, secrets.token_hex(32))
    )
    rows = store._query("SELECT value FROM settings WHERE key = ?", (_SECRET,))
    return bytes.fromhex(str(rows[0][0]))
