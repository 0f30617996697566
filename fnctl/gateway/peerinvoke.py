"""The gateway's own invocations across the nodes of a Swarm (docs/swarm.md "Invocations of the gateway's own"):
a cron tick, an onCommit delivery, a manual trigger's run or a data hook for a function with no instance on
this node is run by a peer gateway that has one (`run_on_peer`), as the same principal (`trigger:NAME` in the
event's tenant; a manual run's caller; a hook's writer), on the revision picked here (a pin holds there too),
under the same request id, and audited there as an invocation (here as `forwarded`); its outcome comes back (a
hook's verdict applies here, and is audited alike on both). The request is
signed with the sender's own key (`fnctl.gateway.peerauth`): a peer runs only what a gateway of the same
state asked, and believes the principal it names for that reason only. Sent once; tried on another peer
only when one ran nothing (`Forwarder.invoke`): one run per cron tick, manual run or hook."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from multidict import CIMultiDict

from fnctl.data.hooks import abort_reason
from fnctl.gateway import router
from fnctl.gateway.auth import Principal, PrincipalKind
from fnctl.gateway.forward import NO_INSTANCE_HEADER, NOT_RUN_HEADER, PEER_PATH, Forwarder
from fnctl.gateway.httpevent import FAILURE_STATUS, audit_outcome
from fnctl.gateway.request import Call, GatewayLimits, Reject, Reply
from fnctl.invocation.outcome import Failure, Outcome

__all__ = [
    "ABORTED",
    "PeerRun",
    "PeerRunner",
    "outcome_from",
    "outcome_json",
    "outcome_status",
    "peer_payload",
    "peer_reply",
    "run_on_peer",
]

ABORTED = 422  # a before-hook's `context.Abort`: the write's answer, and the hook run's audited status

log = logging.getLogger("fnctl.gateway")
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class PeerRun:
    """An invocation a peer gateway ran: its status and outcome, and the revision that ran (a manual run's
    `X-Fnctl-Revision`, as when it runs here)."""

    status: int
    outcome: Outcome
    revision: int | None


class InstanceHolder(Protocol):
    def holds(self, function: str, revision: int) -> bool: ...


class PeerRunner(Protocol):
    """What sending an invocation to a peer uses of `fnctl.gateway.app.Gateway`."""

    forwarder: Forwarder | None
    limits: GatewayLimits

    @property
    def pool(self) -> InstanceHolder: ...


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
        principal: Principal | None = None,
        timeout: float | None = None,
        read_only: bool = False,
        revision: int | None = None,
    ) -> tuple[int, Outcome | None]: ...


def peer_payload(
    trigger: str, event: Any, principal: Principal, timeout: float | None = None, hook: bool = False
) -> dict[str, Any]:
    """What a peer is sent to run an invocation as `principal` (a manual run's caller, a hook's writer):
    `timeout` caps the revision's own (a trigger's), `hook` makes its data calls read-only there."""
    who = {"subject": principal.subject, "roles": list(principal.roles), "kind": principal.kind.value}
    payload = {"trigger": trigger, "tenant": principal.tenant, "event": event, "principal": who, "hook": hook}
    return payload if timeout is None else {**payload, "timeout": timeout}


def _principal(payload: Mapping[str, Any]) -> Principal | None:
    who = payload.get("principal")
    if not isinstance(who, Mapping):
        return None
    roles = tuple(str(role) for role in who.get("roles") or ())
    return Principal(str(who["subject"]), roles, payload.get("tenant") or None, PrincipalKind(who["kind"]))


async def run_on_peer(
    gateway: PeerRunner, call: Call, route: router.FunctionRoute, info: router.RevisionInfo, payload: dict[str, Any]
) -> PeerRun | None:
    """Run `call` (its revision picked) on a live peer gateway when this node has no ready instance of it
    and a peer has, `call` made `forwarded` (the peer audits and measures the run). None: run it here (no
    forwarder, an instance here, or no peer has one). Reject, with the answer's status, when no peer ran
    it (each refused: a 429 says so, with the soonest Retry-After the peers gave, as an overloaded gateway
    here answers) or one failed during it (502, 504)."""
    forwarder = gateway.forwarder
    if forwarder is None or call.revision is None or gateway.pool.holds(call.function, call.revision):
        return None
    routed = [r for r, weight in route.weights.items() if weight > 0]
    peers = forwarder.peers(call.function, call.revision, routed)
    if not peers:
        return None
    timeout = info.timeout + gateway.limits.timeout_margin
    # The peer runs the revision picked here (by a pin, stickiness or the split), not one it would pick itself.
    payload = {**payload, "revision": call.revision}
    answer = await forwarder.invoke(call.function, payload, call.request_id, peers, timeout)
    call.outcome, call.revision = "forwarded", None
    outcome = outcome_from(answer.outcome)
    if outcome is None:  # the peers refused it, or one failed it: said as its status, as it would be here
        headers = {} if answer.retry_after is None else {"Retry-After": answer.retry_after}
        if answer.status == 429:
            headers[NOT_RUN_HEADER] = "overloaded"  # no peer ran it (a 429 after a run is an outcome's)
        if answer.status in (429, 503):
            reason = f"no gateway of another node took the run (status {answer.status})"
        else:
            reason = f"the run on another node's gateway ended with status {answer.status}"
        raise Reject(answer.status, reason, "forwarded", headers=headers)
    return PeerRun(answer.status, outcome, answer.revision)


def outcome_status(outcome: Outcome, hook: bool = False) -> tuple[int, str]:
    """An invocation's status and audit word. A hook's `Abort` is its verdict, not a fault: 422 `aborted`,
    on the gateway that took the write as on a peer that ran the hook for it."""
    if hook and not outcome.ok and abort_reason(outcome.message) is not None:
        return ABORTED, "aborted"
    status = 200 if outcome.ok else FAILURE_STATUS.get(outcome.failure or Failure.HANDLER_ERROR, 500)
    return status, audit_outcome(outcome)


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
    peers sign (else 401, run nothing), on the revision the sender picked, never forwarded again. 200 with
    {status, outcome, revision (the one that ran)}; a refusal before anything ran says so, for the sender to try its next peer: 503 with
    NO_INSTANCE_HEADER (no instance of that revision here), 429 with NOT_RUN_HEADER (overloaded), each with
    the Retry-After this gateway's own refusal has."""
    forwarder = gateway.forwarder
    if forwarder is None:
        return Reply(404, CIMultiDict(_JSON), b'{"message":"Not Found"}')
    request_id = headers.get("X-Request-Id", "")
    refused = await forwarder.verify(headers, request_id, path, body)
    if refused is not None:
        log.warning("a peer invocation refused (%s): request %s", refused, request_id[:64])
        return Reply(401, CIMultiDict(_JSON), b'{"message":"Unauthorized: not signed by a gateway of this state"}')
    payload = json.loads(body)
    timeout, revision = payload.get("timeout"), payload.get("revision")
    function = path[len(PEER_PATH) :]
    try:
        status, outcome = await gateway.invoke_internal(
            function,
            payload.get("event"),
            trigger=str(payload["trigger"]),
            tenant=payload.get("tenant"),
            request_id=request_id,
            forwardable=False,
            principal=_principal(payload),
            timeout=None if timeout is None else float(timeout),
            # A hook's writes belong in its writer's transaction, on the sender: here they could only commit
            # alone (kept though the write is vetoed) and start a hook chain of their own, so they are refused.
            read_only=bool(payload.get("hook")),
            revision=revision if isinstance(revision, int) else None,
        )
    except Reject as reject:  # refused before it ran: no instance of the revision here, or overloaded
        mark = NOT_RUN_HEADER if reject.status == 429 else NO_INSTANCE_HEADER
        where = f"{function} revision {revision}" if isinstance(revision, int) else function
        log.info("a peer's invocation of %s refused: %s", where, reject.reason)
        refusal = {"status": reject.status, "message": f"{where} on node {forwarder.node}: {reject.reason}"}
        headers = CIMultiDict({**_JSON, mark: forwarder.node})
        if "Retry-After" in reject.headers:  # when to ask again: the sender's answer carries it (or a sooner one)
            headers["Retry-After"] = reject.headers["Retry-After"]
        return Reply(reject.status, headers, json.dumps(refusal).encode())
    # `revision`: the one it ran (the sender's pick: another is refused above), for the sender's answer.
    ran = revision if isinstance(revision, int) and outcome is not None else None
    answer = json.dumps({"status": status, "outcome": outcome_json(outcome), "revision": ran}).encode()
    return Reply(200, CIMultiDict(_JSON), answer)
