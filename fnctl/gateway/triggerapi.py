"""Manual triggers over HTTP: `POST /v1/triggers/{name}/run` runs the trigger's function now, for a caller whose
roles a Policy grants `run` on the trigger (or on `*`), with the request body as the event (no body: the
trigger's `manual.event`). The run takes the gateway's invoke path (routing weights, a procedure's commit,
audit with the trigger's name, metrics) and answers as `POST /invoke/NAME` does; a fault counts towards the
trigger's `disableAfter`, and a disabled trigger is refused (503) until `fnctl enable`. Under Swarm, with no
instance on this node, a peer gateway that has one runs it, once, as the caller (fnctl.gateway.peerinvoke).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from fnctl.data.hooks import trigger_spec
from fnctl.gateway import router
from fnctl.gateway.auth import Principal, PrincipalKind, Unauthenticated
from fnctl.gateway.hooks import HookRunner
from fnctl.gateway.httpevent import audit_outcome, invoke_response
from fnctl.gateway.peerinvoke import PeerRunner, peer_payload, run_on_peer
from fnctl.gateway.request import Call, Reject, reject_reply, reply_response, request_id, web_response
from fnctl.invocation import strictjson
from fnctl.invocation.outcome import Failure

if TYPE_CHECKING:
    from fnctl.gateway.auth import Authenticator
    from fnctl.gateway.broker import Broker
    from fnctl.gateway.poolhost import PoolResult


class RunGateway(PeerRunner, Protocol):
    """What a manual run uses of `fnctl.gateway.app.Gateway` (which mounts this API)."""

    authenticator: Authenticator
    broker: Broker | None

    @property
    def table(self) -> router.Table | None: ...

    def _pick(
        self, function: router.FunctionRoute, request: Any, principal: Principal, policies: Any, call: Call
    ) -> int: ...

    async def _read_body(self, request: web.Request, limit: int) -> bytes: ...

    async def _run(self, call: Call, info: router.RevisionInfo, event: Any, principal: Principal) -> PoolResult: ...

    def _internal_error(self, call: Call, exc: Exception, body: dict[str, Any]) -> web.Response: ...

    async def _finish(
        self, call: Call, request: web.Request | None, response: web.StreamResponse
    ) -> web.StreamResponse: ...


RUN = "run"  # the Policy grant


def may_run(principal: Principal, policies: Mapping[str, Mapping[str, Any]], trigger: str) -> bool:
    """Does a Policy grant one of the principal's roles `run` on `trigger` (or `*`)? Never for anonymous."""
    if principal.kind is PrincipalKind.ANONYMOUS:
        return False
    held = set(principal.roles)
    for policy in policies.values():
        for role, grant in (policy.get("roles") or {}).items():
            if role in held and isinstance(grant, Mapping):
                targets = grant.get(RUN, ())
                if trigger in targets or "*" in targets:
                    return True
    return False


class TriggerApi:
    def __init__(self, gateway: RunGateway) -> None:
        self.gateway = gateway

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/triggers/{name}/run", self.run)

    async def run(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        gateway = self.gateway
        call = Call(request_id(request), "", name, request.remote)
        try:
            response = await self._run(request, call, name)
        except Reject as reject:
            call.outcome = reject.outcome
            response = reply_response(reject_reply(reject, {"error": reject.reason, "requestId": call.request_id}))
        except Exception as exc:  # noqa: BLE001 -- as in the invocation handlers: a 500, one log line
            response = gateway._internal_error(call, exc, {"error": "Internal Server Error"})
        return await gateway._finish(call, request, response)

    async def _run(self, request: web.Request, call: Call, name: str) -> web.StreamResponse:
        gateway = self.gateway
        table = gateway.table or router.EMPTY
        try:
            call.principal = principal = gateway.authenticator.authenticate(request.headers)
        except Unauthenticated:
            raise Reject(401, "Unauthorized", "unauthenticated", headers={"WWW-Authenticate": "Bearer"}) from None
        # The grant first: whether a trigger exists is told only to those who may run it.
        if not may_run(principal, table.policies, name):
            raise Reject(403, f"Forbidden: running trigger {name} needs a Policy granting `run` on it", "denied")
        spec = table.triggers.get(name)
        if spec is None or not isinstance(spec.get("manual"), Mapping):
            raise Reject(404, f"Not Found: no manual trigger {name}", "not_found")
        hook = trigger_spec(name, spec)
        hooks = gateway.broker.hooks if gateway.broker is not None else None
        states = hooks.states if isinstance(hooks, HookRunner) else None
        if states is not None:
            await states.refresh()
            if states.is_disabled(name):
                raise Reject(503, f"Service Unavailable: trigger {name} is disabled (fnctl enable {name})", "disabled")
        call.function = hook.function
        route = table.functions.get(hook.function)
        if route is None:
            raise Reject(404, f"Not Found: function {hook.function} is not deployed", "not_found")
        call.revision = gateway._pick(route, request, principal, table.policies, call)
        info = route.revisions.get(call.revision)
        if info is None:
            raise Reject(503, "Service Unavailable", "unavailable", headers={"Retry-After": "1"})
        if "timeout" in spec:
            info = replace(info, timeout=min(info.timeout, hook.timeout))
        body = await gateway._read_body(request, min(gateway.limits.max_body, info.payload))
        try:
            event = strictjson.loads(body) if body.strip() else spec["manual"].get("event", {})
        except strictjson.NotJson as exc:
            raise Reject(400, f"Bad Request: the event is not JSON: {exc}", "rejected") from None
        payload = peer_payload(name, event, principal, info.timeout)
        # Run on a peer (Swarm, no instance here); none took it or one failed it: its Reject, nothing counted.
        ran = await run_on_peer(gateway, call, route, info, payload)
        revision = call.revision if ran is None else ran.revision  # the revision that ran, here or there
        if ran is None:
            result = await gateway._run(call, info, event, principal)
            outcome = result.outcome
            call.outcome, call.cold_start = audit_outcome(outcome), result.cold_start
        else:
            outcome = ran.outcome
        if states is not None:
            if outcome.ok:
                await states.succeeded(hook)
            else:
                await states.fault(hook, outcome.message or (outcome.failure or Failure.HANDLER_ERROR).value)
        extra = {"X-Request-Id": call.request_id}
        if revision is not None:  # as a peer's answer says (the audit's is the peer's: call.revision is None)
            extra["X-Fnctl-Revision"] = str(revision)
        return web_response(invoke_response(outcome, False), extra)
