"""Data hooks run by the gateway, on every write path (REST and its batches, `context.db` with or without a
procedure): `HookRunner.write` stages one write into a transaction with its hooks around it, `commit_writes`
is a whole transaction (writes, hooks, one short commit), `call` a handler's `db.*` write.

The data plane stays optimistic, and no lock is held across user code: the document is read (its version
recorded in the transaction), the before-hooks run (each on the revision the routing weights pick, through the
gateway's own invoke path: audited, measured, so a canary's hook failures count in its analysis) with the
writer's identity and rights, the accepted or changed document is staged into the transaction's buffered
writes, the after-hooks run (their own writes join the same transaction), and only then does one short write
transaction validate and apply everything. A conflict at the commit re-runs the hooks (up to COMMIT_RETRIES
times) unless a hook function has egress, which answers 409, as procedures do.

The decisions (order, events, verdicts, chain limits) are `fnctl.data.hooks`'s; the triggers' health
(faults, disabled) is `fnctl.gateway.triggerhealth.TriggerStates`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Protocol, TypeVar

from fnctl.data.caller import Caller
from fnctl.data.collections import validate
from fnctl.data.documents import Budget, DataDocument, WriteOp, merge_patch, uuid7
from fnctl.data.errors import Conflict, DataError, Invalid, NotFound, PreconditionFailed, PreconditionRequired
from fnctl.data.hooks import (
    EVENTS,
    Chain,
    HookAborted,
    HookFailed,
    HookLoop,
    HookOverloaded,
    HookSpec,
    TriggerDisabled,
    abort_reason,
    after_event,
    before_event,
    hook_specs,
    verdict,
)
from fnctl.data.txn import Txn
from fnctl.gateway import router
from fnctl.gateway.auth import Principal, PrincipalKind
from fnctl.gateway.broker import Broker, CallSession
from fnctl.gateway.datacalls import write_op
from fnctl.gateway.httpevent import NOT_RUN_HEADER
from fnctl.gateway.peerinvoke import PeerRunner, outcome_status, peer_payload, run_on_peer
from fnctl.gateway.poolhost import PoolResult
from fnctl.gateway.request import NO_HEADERS, Call, Reject
from fnctl.gateway.triggerhealth import TriggerStates
from fnctl.invocation.outcome import Failure, Outcome
from fnctl.invocation.protocol import EncodedJson
from fnctl.invocation.requestid import new_request_id

log = logging.getLogger("fnctl.gateway")
T = TypeVar("T")
COMMIT_RETRIES = 3  # attempts of a hooked write whose commit met a conflict (no hook with egress)


class HookGateway(PeerRunner, Protocol):
    """What the runner uses of `fnctl.gateway.app.Gateway`: its table, routing and invoke path (a peer's under
    Swarm), and the audit and metrics every invocation ends with."""

    @property
    def table(self) -> router.Table | None: ...

    def _pick(
        self, function: router.FunctionRoute, request: Any, principal: Principal, policies: Any, call: Call
    ) -> int: ...

    async def _call_pool(
        self, call: Call, info: router.RevisionInfo, event: Any, caller: EncodedJson, invocation: str
    ) -> PoolResult: ...

    async def audit_internal(self, call: Call, status: int) -> None: ...


class HookRunner:
    def __init__(self, gateway: HookGateway, broker: Broker, states: TriggerStates) -> None:
        self.gateway, self.broker, self.states = gateway, broker, states
        self.plane = broker.plane
        self._table: router.Table | None = None
        self._hooks: dict[tuple[str, str], tuple[HookSpec, ...]] = {}

    # ---- which hooks ----

    def hooks(self, collection: str, event: str) -> tuple[HookSpec, ...]:
        table = self.gateway.table
        if table is not self._table:
            self._hooks, self._table = hook_specs(table.triggers if table is not None else {}), table
        return self._hooks.get((collection, event), ())

    def applies(self, collection: Any, op: str) -> bool:
        """Does a write of `op` to `collection` run any hook? (Else the write takes the plain path.)"""
        kind = EVENTS.get(op)
        if kind is None or not isinstance(collection, str):
            return False
        return bool(self.hooks(collection, "before" + kind) or self.hooks(collection, "after" + kind))

    # ---- whole transactions ----

    async def commit_writes(
        self,
        caller: Caller,
        ops: Sequence[WriteOp],
        *,
        idempotency_key: str | None = None,
        require_if_match: bool = False,
        budget: Budget | None = None,
    ) -> list[DataDocument | None]:
        """The writes, their hooks and one commit: a result per op (None: deleted)."""
        for op in ops:
            if require_if_match and op.op != "insert" and op.if_match is None:
                raise PreconditionRequired("this request needs an If-Match header with the document's version")
        for attempt in range(COMMIT_RETRIES):
            txn, chain = self.plane.transaction(caller, budget), Chain()
            txn.single = len(ops) == 1  # a single write's stale If-Match is a 412, as without hooks
            try:
                docs = [await self.write(caller, txn, op, chain, idempotency_key=idempotency_key) for op in ops]
                if txn.replayed and not txn.writes:
                    await self.broker.run(txn.rollback)
                    return list(txn.replayed)
                keys = list(txn.writes)
                stored = await self.broker.run(txn.commit)
            except Conflict:
                await self.broker.run(txn.rollback)
                if attempt + 1 < COMMIT_RETRIES and not chain.runs.egress:
                    continue
                raise
            except BaseException:
                await self.broker.run(txn.rollback)
                raise
            committed = dict(zip(keys, stored, strict=False))
            return [
                None if doc is None else committed.get((op.collection, doc.id), doc)
                for op, doc in zip(ops, docs, strict=True)
            ]
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def call(self, session: CallSession, method: str, params: Mapping[str, Any]) -> Any:
        """A handler's `db.insert` / `update` / `replace` / `delete` with its hooks: in its procedure's (or its
        hook chain's) transaction when it has one, else a transaction of its own. Returns the result as JSON."""
        if session.exceeded is not None:
            raise session.exceeded
        try:
            op = write_op(method, params)
            if session.txn is None:
                doc = (await self.commit_writes(session.caller, [op], budget=session.budget))[0]
            else:
                if session.chain is None:
                    session.chain = Chain()
                doc = await self.write(session.caller, session.txn, op, session.chain)
        except DataError as error:
            if error.status == 429 and session.exceeded is None:
                session.exceeded = error
            if isinstance(error, Conflict) and session.txn is not None and session.conflict is None:
                session.conflict = error
            if isinstance(error, HookLoop) and session.loop is None:
                session.loop = error  # the chain stops, caught by the handler or not
            raise
        return None if doc is None else doc.as_json()

    # ---- one write and its hooks ----

    async def write(
        self, caller: Caller, txn: Txn, op: WriteOp, chain: Chain, *, idempotency_key: str | None = None
    ) -> DataDocument | None:
        """Stage `op` into `txn` with its hooks around it (nothing is committed here)."""
        kind = EVENTS.get(op.op)
        if kind is None:
            raise Invalid(f"unknown operation {op.op!r}: insert, replace, patch or delete")
        befores, afters = self.hooks(op.collection, "before" + kind), self.hooks(op.collection, "after" + kind)
        if not befores and not afters:
            return await self.broker.run(partial(_stage, txn, op, idempotency_key))
        await self.states.refresh()
        # A savepoint: a write that fails here (an Abort, a failed hook, a limit) leaves nothing of itself, or
        # of its hooks' writes, in the transaction, which goes on (a procedure may catch the error).
        saved, replayed = dict(txn.writes), list(txn.replayed)

        def restore() -> None:
            txn.writes, txn.replayed = saved, replayed

        try:
            return await self._hooked(caller, txn, op, chain, befores, afters, idempotency_key)
        except Exception:
            # On the data thread, after any call of a hook given up on (a timeout) that is still queued there:
            # calls come in order, and its session is closed, so nothing of it lands after this.
            await self.broker.run(restore)
            raise
        except BaseException:
            restore()
            raise

    async def _hooked(
        self,
        caller: Caller,
        txn: Txn,
        op: WriteOp,
        chain: Chain,
        befores: tuple[HookSpec, ...],
        afters: tuple[HookSpec, ...],
        idempotency_key: str | None,
    ) -> DataDocument | None:
        if op.op == "insert" and idempotency_key is not None:
            replayed = await self.broker.run(partial(_replay, txn, op.collection, idempotency_key))
            if replayed is not None:
                return replayed
        id_ = op.id if op.id is not None else uuid7()
        before, proposed = await self.broker.run(partial(_before, txn, op, id_))
        before_json = None if before is None else before.as_json()
        changed_by: HookSpec | None = None
        for hook in befores:
            event = before_event(hook, _op_name(op), id_, before_json, proposed, caller, chain.depth)
            changed = await self._run(hook, event, caller, txn, chain, id_)
            if changed is not None and op.op != "delete":
                proposed, changed_by = changed, hook
        staged = op if changed_by is None else _as_replace(op, id_, proposed)
        if staged.op == "insert" and staged.id is None:
            staged = replace(staged, id=id_)
        try:
            doc = await self.broker.run(partial(_stage, txn, staged, idempotency_key))
        except (Invalid, DataError) as error:
            if changed_by is None or error.status not in (400, 413):
                raise
            failure = HookFailed(
                f"the document hook {changed_by.name} returned breaks {op.collection!r}: {error.detail_text}",
                violations=error.violations,
            )
            await self.states.fault(changed_by, failure.detail_text)
            raise failure from None
        after_json = None if doc is None else doc.as_json()
        for hook in afters:
            event = after_event(hook, _op_name(op), id_, before_json, after_json, caller, chain.depth)
            await self._run(hook, event, caller, txn, chain, id_)
        return doc

    async def _run(
        self, hook: HookSpec, event: dict[str, Any], caller: Caller, txn: Txn, chain: Chain, id_: str
    ) -> dict[str, Any] | None:
        """One hook run: its verdict (a before-hook's changed document, or None), HookAborted, or a fault
        (counted; refused unless `failurePolicy: ignore`)."""
        if self.states.is_disabled(hook.name):
            if hook.skip_when_disabled or not hook.before:
                return None
            raise TriggerDisabled(
                f"trigger {hook.name} is disabled after repeated faults: writes to {hook.collection!r} are "
                f"refused until `fnctl enable {hook.name}` (or whenDisabled: skip)"
            )
        try:
            inner = chain.enter(hook, id_)
        except HookLoop as error:
            await self.states.fault(hook, error.detail_text)  # the hook that would pass the limit: its fault
            raise
        try:
            outcome = await self.invoke(hook, event, caller, txn, inner)
            reason = None if outcome.ok else abort_reason(outcome.message)
            if reason is not None:
                await self.states.succeeded(hook)  # a verdict, not a fault
                raise HookAborted(f"{hook.name}: {reason}")
            if not outcome.ok:
                what = "timed out" if outcome.failure is Failure.TIMEOUT else "failed"
                raise HookFailed(f"hook {hook.name} {what}: {outcome.message}")
            result = verdict(hook, outcome.result, id_) if hook.before else None
        except (HookFailed, HookOverloaded) as error:
            if isinstance(error, HookFailed):  # an overload ran nothing: no fault (a busy spell disables nothing)
                await self.states.fault(hook, error.detail_text)
            if hook.ignore_failures:
                log.warning("hook %s failed (failurePolicy: ignore): %s", hook.name, error.detail_text)
                return None
            raise
        await self.states.succeeded(hook)
        return result

    async def invoke(self, hook: HookSpec, event: Any, caller: Caller, txn: Txn | None, chain: Chain) -> Outcome:
        """Run the hook's function on the revision the routing weights pick, as the writer, its `context.db`
        calls in `txn` (the writer's transaction; None: each call commits alone) at the chain's next depth.
        Audited and measured like any invocation. HookFailed when no instance could run it; HookOverloaded when
        none had room (a 429 here, or of every peer asked: its Retry-After, the same either way)."""
        gateway = self.gateway
        route = (gateway.table or router.EMPTY).functions.get(hook.function)
        call = Call(new_request_id(), hook.function, hook.name, None)
        call.principal = principal = _principal(caller)
        status = 500
        try:
            if route is None:
                raise Reject(404, f"function {hook.function} is not deployed", "not_found")
            call.revision = gateway._pick(route, NO_HEADERS, principal, {}, call)
            info = route.revisions.get(call.revision)
            if info is None:
                raise Reject(503, "no invocable revision", "unavailable")
            chain.runs.egress = chain.runs.egress or info.data.egress
            info = replace(info, timeout=min(info.timeout, hook.timeout))
            # No instance here (Swarm): a peer runs it as the writer, read-only there; its verdict applies here.
            ran = await run_on_peer(
                gateway, call, route, info, peer_payload(hook.name, event, principal, hook.timeout, True)
            )
            if ran is not None:  # (none ran it, or one failed it: run_on_peer's Reject, its status)
                status = ran.status
                return ran.outcome
            session = self.broker.open_shared(call.request_id, hook.function, call.revision, caller, info.data, txn)
            session.chain = chain
            try:
                async with asyncio.timeout(hook.timeout):  # the trigger's own, not the function's (plus margin)
                    result = await gateway._call_pool(call, info, event, principal.encoded_caller(), call.request_id)
            except TimeoutError:
                raise Reject(504, "Gateway Timeout", "timeout") from None
            finally:
                self.broker.close(call.request_id)
            if session.loop is not None:  # a write of this hook went past a chain limit: the whole chain stops
                call.outcome, status = "error", HookLoop.status
                raise session.loop
            outcome = result.outcome
            if outcome.ok and session.exceeded is not None:
                limit = f"LimitExceeded: {session.exceeded.detail_text}"
                outcome = Outcome(False, None, Failure.HANDLER_ERROR, limit, "", "", outcome.duration_ms)
            status, call.outcome = outcome_status(outcome, hook=True)
            call.cold_start = result.cold_start
            return outcome
        except Reject as reject:
            status, call.outcome = reject.status, reject.outcome
            if reject.headers.get(NOT_RUN_HEADER) == "overloaded":  # no room here, or on every peer asked
                wait = reject.headers.get("Retry-After", "")  # delay-seconds (RFC 9110), as every gateway sends
                seconds = max(1, int(wait)) if wait.isascii() and wait.isdigit() else 1
                reason = f"function {hook.function} is overloaded: try again in {seconds} s"
                raise HookOverloaded(f"hook {hook.name} could not run ({reason})", seconds) from None
            what = "timed out" if reject.status == 504 else f"could not run ({reject.reason})"
            raise HookFailed(f"hook {hook.name} {what}") from None
        finally:
            await gateway.audit_internal(call, status)


def _principal(caller: Caller) -> Principal:
    kind = {"key": PrincipalKind.KEY, "jwt": PrincipalKind.JWT}.get(caller.kind, PrincipalKind.ANONYMOUS)
    subject = caller.subject[4:] if kind is PrincipalKind.JWT and caller.subject.startswith("jwt:") else caller.subject
    return Principal(subject, tuple(sorted(caller.roles)), caller.tenant or None, kind)


def _op_name(op: WriteOp) -> str:
    return {"insert": "create", "delete": "delete"}.get(op.op, "update")


def _as_replace(op: WriteOp, id_: str, data: Any) -> WriteOp:
    """The write with the document a hook changed: an insert stays one, an update becomes a replace."""
    return WriteOp("insert" if op.op == "insert" else "replace", op.collection, id_, data, op.if_match)


# ---- on the broker's data thread ----


def _stage(txn: Txn, op: WriteOp, idempotency_key: str | None) -> DataDocument | None:
    if op.op == "insert":
        return txn.insert(op.collection, op.data, id=op.id, idempotency_key=idempotency_key)
    if op.id is None:
        raise Invalid(f"a {op.op} needs the document's id")
    if op.op == "replace":
        return txn.replace(op.collection, op.id, op.data, if_match=op.if_match)
    if op.op == "patch":
        return txn.patch(op.collection, op.id, op.data, if_match=op.if_match)
    txn.delete(op.collection, op.id, if_match=op.if_match)
    return None


def _replay(txn: Txn, collection: str, key: str) -> DataDocument | None:
    """An insert already answered under this Idempotency-Key: its answer again, no hook run."""
    txn.plane.collection(collection)
    if txn.plane.store.idempotent(txn.caller.tenant, collection, key) is None:
        return None
    txn.insert(collection, {}, idempotency_key=key)  # records the replay in the transaction
    return txn.replayed[-1]


def _before(txn: Txn, op: WriteOp, id_: str) -> tuple[DataDocument | None, Any]:
    """The document as the writer may see it now (its version recorded in the transaction) and the proposed
    one, checked as the write itself will be (NotFound, a stale If-Match, a taken id, the schema): a hook never
    runs for a write bound to fail, nor sees a document that is not valid."""
    info = txn.plane.collection(op.collection)
    before: DataDocument | None = None
    if op.op == "insert":
        if op.id is not None:
            try:
                found = txn.get(op.collection, id_)
            except NotFound:
                found = None
            if found is not None:
                raise Conflict(f"a document {found.id!r} already exists in {op.collection!r}")
    else:
        before = txn.get(op.collection, id_)
        if op.if_match is not None and op.if_match != before.version:
            raise PreconditionFailed(f"document {id_!r} is at version {before.version}, not {op.if_match}")
    if op.op == "delete":
        return before, None
    if op.op == "patch" and not isinstance(op.data, dict):
        raise Invalid("a merge patch is a JSON object")
    proposed = merge_patch(before.data if before else {}, op.data) if op.op == "patch" else op.data
    validate(info, proposed)
    return before, proposed
