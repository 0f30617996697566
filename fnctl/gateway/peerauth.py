"""Peer gateways' own requests, authenticated (engine = "swarm", docs/swarm.md "Invocations of the gateway's own"):
the leader runs cron ticks, onCommit deliveries and manual triggers itself, as the principal
`trigger:NAME`; when its node has no instance of the function it asks a peer gateway that has one to run
the invocation, and a gateway forwarding a client's request passes on the client's address. The receiver
must know such a request comes from a gateway of the same state, and not from anyone who can reach it.

Each gateway makes an Ed25519 key pair when it starts (`PeerKey`): the private key stays in its memory, the
public key goes into its row of the store's `gateways` table (fnctl.state.gatewayrows). A request names
its sender (GATEWAY_HEADER) and is signed with the sender's private key; the receiver verifies it with the
public key published in that gateway's row. No secret is ever written to the store: whoever can write the
store can already change every route, so trusting its public keys adds no one to those trusted.

What is signed: the sender's id, the time, the request id, the path and the body. A signature more than
MAX_SKEW seconds old or early, or a request id seen in that window, is refused: a captured request cannot
be replayed. Pure: no I/O here (the keys are looked up by the caller)."""

from __future__ import annotations

import base64
import binascii
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["GATEWAY_HEADER", "SIGNATURE_HEADER", "TIME_HEADER", "PeerKey", "PeerVerifier"]

GATEWAY_HEADER = "X-Fnctl-Peer-Gateway"
TIME_HEADER = "X-Fnctl-Peer-Time"
SIGNATURE_HEADER = "X-Fnctl-Peer-Signature"
MAX_SKEW = 30.0  # seconds; the nodes' clocks agree far better (the heartbeats need it already)


def _message(gateway: str, at: float, request_id: str, path: str, body: bytes) -> bytes:
    return f"fnctl-peer-v2\n{gateway}\n{at:.3f}\n{request_id}\n{path}\n".encode() + body


class PeerKey:
    """A gateway's own key pair, made when it starts; the private half never leaves this object."""

    def __init__(self) -> None:
        self._private = Ed25519PrivateKey.generate()
        raw = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public = base64.b64encode(raw).decode()  # what the gateway publishes in its row

    def sign(self, gateway: str, at: float, request_id: str, path: str, body: bytes) -> str:
        """The signature (base64) of a request from `gateway` (this key's owner) sent at `at`."""
        return base64.b64encode(self._private.sign(_message(gateway, at, request_id, path, body))).decode()

    def headers(self, gateway: str, request_id: str, path: str, body: bytes) -> list[tuple[str, str]]:
        """The headers that sign a request `gateway` sends now."""
        at = time.time()
        signature = self.sign(gateway, at, request_id, path, body)
        return [(GATEWAY_HEADER, gateway), (TIME_HEADER, f"{at:.3f}"), (SIGNATURE_HEADER, signature)]


class PeerVerifier:
    """Checks the signatures of peer requests and remembers the request ids it accepted for MAX_SKEW
    seconds (a replay within the window is refused; one after it fails the time check)."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def verify(
        self,
        public_key: str | None,
        gateway: str | None,
        at: str | None,
        signature: str | None,
        request_id: str,
        path: str,
        body: bytes,
    ) -> str | None:
        """None when the request is signed by `gateway`'s key (`public_key`, as published; None when no
        gateway of this state has that id); else why not (for the 401's log)."""
        if not gateway or not at or not signature or not request_id:
            return "unsigned"
        if public_key is None:
            return "not a gateway of this state"
        try:
            when = float(at)
        except ValueError:
            return "bad time"
        now = time.time()
        if abs(now - when) > MAX_SKEW:
            return "signature too old or too early"
        try:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
            key.verify(base64.b64decode(signature, validate=True), _message(gateway, when, request_id, path, body))
        except (InvalidSignature, ValueError, binascii.Error):
            return "bad signature"
        self._seen = {rid: t for rid, t in self._seen.items() if now - t <= 2 * MAX_SKEW}
        if request_id in self._seen:
            return "replayed"
        self._seen[request_id] = now
        return None
