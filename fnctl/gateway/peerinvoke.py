"""The gateway's own invocations across the nodes of a Swarm (docs/swarm.md "Invocations of the leader"):
a cron tick or an onCommit delivery of the leader for a function with no instance on its node is run by a
peer gateway that has one, as the same principal (`trigger:NAME`, in the event's tenant), under the same
request id, and audited there as an invocation (here as `forwarded`). The request is signed with the
sender's own key (`fnctl.gateway.peerauth`): a peer runs only what a gateway of the same state asked.
Sent once; tried on another peer only when one ran nothing (`Forwarder.invoke`): one run per cron tick."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from multidict import CIMultiDict

from fnctl.gateway.forward import NO_INSTANCE_HEADER, PEER_PATH, Forwarder
from fnctl.gateway.request import Reply
from fnctl.invocation.outcome import Failure, Outcome

__all__ = ["outcome_from", "outcome_json", "peer_reply"]

log = logging.getLogger("fnctl.gateway")
_JSON = {"Content-Type": "application/json"}


class Runner(Protocol):
    """What a peer's invocation uses of `fnctl.gateway.app.Gateway`."""

    forwarder: Forwarder | None

    async def invoke_internal(
        self,
        function: str,
        event: Any,
        *,
        trigger: str,
        tenant: str | None = None,
        request_id: str | None = None,
        forwardable: bool = True,
    ) -> tuple[int, Outcome | None]: ...


def outcome_json(outcome: Outcome | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    return {
        "ok": outcome.ok,
        "result": outcome.result,
        "failure": None if outcome.failure is None else outcome.failure.value,
        "message": outcome.message,
        "traceback": outcome.traceback,
        "logs": outcome.logs,
        "durationMs": outcome.duration_ms,
    }


def outcome_from(data: Any) -> Outcome | None:
    """A peer's outcome as `outcome_json` wrote it (None when it sent none or something else)."""
    if not isinstance(data, Mapping):
        return None
    try:
        failure = None if data.get("failure") is None else Failure(str(data["failure"]))
        return Outcome(
            bool(data["ok"]),
            data.get("result"),
            failure,
            str(data.get("message", "")),
            str(data.get("traceback", "")),
            str(data.get("logs", "")),
            float(data.get("durationMs", 0.0)),
        )
    except (KeyError, ValueError, TypeError):
        return None


async def peer_reply(gateway: Runner, headers: Mapping[str, str], path: str, body: bytes) -> Reply:
    """POST PEER_PATH<function> on this gateway: run a peer's own invocation here if it is signed as the
    peers sign (else 401, run nothing), never forwarded again. 200 with {status, outcome}; a 503 that ran
    nothing says so (NO_INSTANCE_HEADER), for the sender to try its next peer."""
    forwarder = gateway.forwarder
    if forwarder is None:
        return Reply(404, CIMultiDict(_JSON), b'{"message":"Not Found"}')
    request_id = headers.get("X-Request-Id", "")
    refused = await forwarder.verify(headers, request_id, path, body)
    if refused is not None:
        log.warning("a peer invocation refused (%s): request %s", refused, request_id[:64])
        return Reply(401, CIMultiDict(_JSON), b'{"message":"Unauthorized: not signed by a gateway of this state"}')
    payload = json.loads(body)
    status, outcome = await gateway.invoke_internal(
        path[len(PEER_PATH) :],
        payload.get("event"),
        trigger=str(payload["trigger"]),
        tenant=payload.get("tenant"),
        request_id=request_id,
        forwardable=False,
    )
    if status == 503 and outcome is None:  # no instance (or no revision) here: it ran nothing
        return Reply(503, CIMultiDict({**_JSON, NO_INSTANCE_HEADER: forwarder.node}), b'{"status":503}')
    answer = json.dumps({"status": status, "outcome": outcome_json(outcome)}).encode()
    return Reply(200, CIMultiDict(_JSON), answer)
