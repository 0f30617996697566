"""Which peer gateway a forwarded request or invocation goes to, and which of their refusals its client gets
(fnctl.gateway.forward; docs/swarm.md "Forwarding")."""

from __future__ import annotations

import random
from collections.abc import Iterable

from fnctl.gateway.request import Reply
from fnctl.state.gatewayrows import GatewayRow

__all__ = ["LIVE_FOR", "peers_for", "retry_seconds", "sooner"]

LIVE_FOR = 3.0  # a row older than this is a gateway gone


def peers_for(
    rows: Iterable[GatewayRow],
    me: str,
    function: str,
    revision: int,
    routed: Iterable[int],
    failed: dict[str, float],
    now: float,
) -> list[GatewayRow]:
    """The live gateways to try, best first, for a request routed to `revision`: those that hold it; first
    those that hold every routed revision of `function` (the peer routes the request itself and may pick
    another), then the least recently failed; in random order among equals, to spread the load."""
    wanted = {(function, r) for r in routed}
    candidates = [
        row
        for row in rows
        if row.id != me and row.address and (function, revision) in row.held and now - row.heartbeat <= LIVE_FOR
    ]
    random.shuffle(candidates)
    return sorted(candidates, key=lambda row: (not wanted <= row.held, failed.get(row.id, 0.0)))


def retry_seconds(reply: Reply) -> float:
    """A refusal's Retry-After in seconds; one without (or with an HTTP date, which no gateway sends) is last."""
    try:
        return float(reply.headers.get("Retry-After", "inf"))
    except ValueError:
        return float("inf")


def sooner(refused: Reply | None, reply: Reply) -> Reply:
    """Of an overload refusal kept so far and a new one, the one the client gets if every peer refuses: the
    soonest Retry-After (the client may come back when the first of them expects room); the later of equals."""
    return reply if refused is None or retry_seconds(reply) <= retry_seconds(refused) else refused
