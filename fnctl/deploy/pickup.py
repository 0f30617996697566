"""Knowing that a running gateway routes by the latest change of the store: the one mechanism behind every
"wait for the gateway" of a deploy command (before draining a revision traffic left, before stopping a
deleted function's instances, before `apply` returns with new functions or triggers).

The store's append-only audit log numbers every state change (each routing, revision or resource change is
audited in its own transaction), so its highest id is a mark of "how new" a state is. The gateway reads the
mark before it reads a routing table, and once it routes by that table it records the mark it loaded
(`record_loaded`); a command waits until the loaded mark reaches the mark after its own change. Without a
gateway beating in the store there is nothing to wait for.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fnctl.state.store import Store

GATEWAY_HEARTBEAT = "gateway"  # `fnctl serve` beats every second while it serves
LOADED_KEY = "gateway-loaded"  # settings key: the change mark of the table the gateway routes by
ALIVE_WITHIN = 5.0  # a gateway that has not beaten for this long is taken as gone
PICKUP_TIMEOUT = 5.0  # the gateway checks the store every 0.25 s: this is for a gateway busy or stuck
POLL = 0.02


def change_mark(store: Store) -> int:
    """The mark of the store's latest state change."""
    return store.audit_mark()


def record_loaded(store: Store, mark: int) -> None:
    """Said by the gateway once it routes by a table read after `mark`."""
    store.write_setting(LOADED_KEY, str(mark))


def loaded_mark(store: Store) -> int | None:
    value = store.read_setting(LOADED_KEY)
    return int(value) if value is not None and value.isdigit() else None


def picked_up(loaded: int | None, mark: int) -> bool:
    """Whether a gateway that loaded `loaded` routes by a state at least as new as `mark`."""
    return loaded is not None and loaded >= mark


def wait_for_gateway(
    store: Store,
    timeout: float = PICKUP_TIMEOUT,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait until a running gateway routes by the store as it is now (its latest change included). True
    when it does, or when no gateway runs; False when `timeout` passed first (the caller goes on: a gateway
    that stopped reading the store cannot hold deploys up)."""
    mark = change_mark(store)
    deadline = clock() + timeout
    while store.alive(GATEWAY_HEARTBEAT, within=ALIVE_WITHIN):
        if picked_up(loaded_mark(store), mark):
            return True
        if clock() >= deadline:
            return False
        sleep(POLL)
    return True
