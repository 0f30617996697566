"""Peer gateways' own requests, authenticated (engine = "swarm", docs/swarm.md "Invocations of the leader"):
the leader runs cron ticks, onCommit deliveries and manual triggers itself, as the principal
`trigger:NAME`; when its node has no instance of the function it asks a peer gateway that has one to run
the invocation. That peer must know the request comes from a gateway of the same state, and not from
anyone who can reach it: the request is signed with HMAC-SHA256 under a secret shared by the gateways of
one state (a random 32 bytes in the store's settings, `fnctl.state.gatewayrows.peer_secret`; whoever can
read the store can already change every route, so it adds no one to those trusted).

What is signed: the time, the request id, the path and the body (the trigger, its tenant and the event).
A signature more than MAX_SKEW seconds old or early, or a request id seen in that window, is refused: a
captured request cannot be replayed. Pure: no I/O here."""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "TIME_HEADER", "PeerVerifier", "sign"]

TIME_HEADER = "X-Fnctl-Peer-Time"
SIGNATURE_HEADER = "X-Fnctl-Peer-Signature"
MAX_SKEW = 30.0  # seconds; the nodes' clocks agree far better (the heartbeats need it already)


def sign(secret: bytes, at: float, request_id: str, path: str, body: bytes) -> str:
    """The signature of a peer request (hex)."""
    head = f"fnctl-peer-v1\n{at:.3f}\n{request_id}\n{path}\n".encode()
    return hmac.new(secret, head + body, hashlib.sha256).hexdigest()


class PeerVerifier:
    """Checks the signatures of peer requests and remembers the request ids it accepted for MAX_SKEW
    seconds (a replay within the window is refused; one after it fails the time check)."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def verify(
        self, secret: bytes | None, at: str | None, signature: str | None, request_id: str, path: str, body: bytes
    ) -> str | None:
        """None when the request is a peer's; else why not (for the 401's log)."""
        if secret is None:
            return "this gateway has not read the peers' secret yet"
        if not at or not signature or not request_id:
            return "unsigned"
        try:
            when = float(at)
        except ValueError:
            return "bad time"
        now = time.time()
        if abs(now - when) > MAX_SKEW:
            return "signature too old or too early"
        if not hmac.compare_digest(sign(secret, when, request_id, path, body), signature):
            return "bad signature"
        self._seen = {rid: t for rid, t in self._seen.items() if now - t <= 2 * MAX_SKEW}
        if request_id in self._seen:
            return "replayed"
        self._seen[request_id] = now
        return None
