"""The data calls of one invocation, decided synchronously: the `CallSession` (caller, budget, a procedure's
Txn) and `answer`, the one place a `db.*` call (`db.get`, `db.find`, `db.insert`, `db.update`, `db.replace`,
`db.delete`) becomes a data-plane operation. Used by the gateway's broker (`fnctl.gateway.broker`, which runs
it off the event loop) and by `fnctl invoke --local`; no asyncio, no HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fnctl.data.caller import Caller
from fnctl.data.documents import DEFAULT_LIMIT, Budget, DataDocument, Page, WriteOp
from fnctl.data.errors import Conflict, DataError, Invalid
from fnctl.data.plane import DataPlane
from fnctl.data.txn import Txn
from fnctl.gateway.router import DataSettings
from fnctl.invocation.protocol import CallFailed
from fnctl.manifest.model import ParseError, Policy, parse_policy

if TYPE_CHECKING:  # only its type: `invoke --local` needs no JWT library
    from fnctl.gateway.auth import Principal

log = logging.getLogger("fnctl.gateway")
METHODS = ("db.get", "db.find", "db.insert", "db.update", "db.replace", "db.delete")
WRITES = {"db.insert": "insert", "db.update": "patch", "db.replace": "replace", "db.delete": "delete"}


@dataclass
class CallSession:
    function: str
    revision: int | None
    caller: Caller
    budget: Budget
    txn: Txn | None
    exceeded: DataError | None = None  # a limit was hit: the invocation fails, whatever the handler returns
    conflict: DataError | None = None  # a procedure's read went stale: it cannot commit (re-run it, or 409)
    calls: int = 0
    busy: int = 0  # calls of this session running on the broker's data thread now
    shared: bool = False  # `txn` is another's (a hook's session in its writer's transaction): never rolled back here
    chain: Any = None  # the hook chain (fnctl.data.hooks.Chain) this invocation's writes continue
    loop: DataError | None = None  # a write of this invocation passed a hook chain's limit (HookLoop)
    read_only: bool = False  # a hook run for another node's writer: its writes cannot join that transaction
    # Told of every read call (method, params) before it is answered: what a view's computation read.
    on_read: Callable[[str, Mapping[str, Any]], None] | None = None


def caller_of(principal: Principal) -> Caller:
    """The gateway's principal as the data plane's caller: its audit name, roles and tenant. Built once per
    principal (a key's or a cached JWT's serves many requests), as `Principal.as_caller` is."""
    caller: Caller | None = principal.__dict__.get("_data_caller")
    if caller is None:
        caller = Caller(principal.audit_name, principal.kind.value, frozenset(principal.roles), principal.tenant or "")
        object.__setattr__(principal, "_data_caller", caller)  # a cache on a frozen value, outside its fields
    return caller


def session_caller(caller: Caller, function: str, revision: int | None, settings: DataSettings) -> Caller:
    """Whose rights an invocation's data calls use: its caller's, or under `runAs: function` the function's
    own role (`function:NAME`), in the caller's tenant; either way recorded as coming from the function."""
    if settings.run_as_function:
        return Caller.for_function(function, revision, caller.tenant)
    return caller.calling_from(function, revision)


def open_session(
    plane: DataPlane,
    caller: Caller,
    function: str,
    revision: int | None,
    settings: DataSettings,
    on_read: Callable[[str, Mapping[str, Any]], None] | None = None,
) -> CallSession:
    acting = session_caller(caller, function, revision, settings)
    txn = plane.transaction(acting, Budget(operations=settings.db_operations)) if settings.transaction else None
    budget = txn.budget if txn is not None and txn.budget is not None else Budget(operations=settings.db_operations)
    return CallSession(function, revision, acting, budget, txn, on_read=on_read)


def _str(params: Mapping[str, Any], name: str, *, optional: bool = False) -> Any:
    value = params.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string")
    return value


def _version(params: Mapping[str, Any]) -> int | None:
    value = params.get("if_version")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid("if_version must be a document version (a whole number)")
    return value


def _order(params: Mapping[str, Any]) -> Sequence[str] | str:
    order = params.get("order")
    if order is None:
        return ()
    if isinstance(order, str) or (isinstance(order, list) and all(isinstance(o, str) for o in order)):
        return order
    raise Invalid("order must be a field name or a list of them")


def _limit(params: Mapping[str, Any]) -> int:
    limit = params.get("limit")
    if limit is None:
        return DEFAULT_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise Invalid("limit must be a whole number")
    return limit


def _result(value: DataDocument | Page | None) -> Any:
    return None if value is None else value.as_json()


def answer(plane: DataPlane, session: CallSession, method: str, params: Mapping[str, Any]) -> Any:
    """One `db.*` call of `session`'s invocation, as the data plane's operation (on the procedure's Txn when
    there is one, else committed at once), its result as JSON. Raises DataError; a limit it hits is remembered
    on the session (the invocation fails even if the handler catches the error)."""
    try:
        return _answer(plane, session, method, params)
    except DataError as error:
        if error.status == 429 and session.exceeded is None:
            session.exceeded = error
        if (
            isinstance(error, Conflict)
            and session.txn is not None
            and session.conflict is None
            and not (method == "db.insert" and "already exists" in error.detail_text)
        ):
            session.conflict = error  # a stale read: caught by the handler or not, this transaction cannot commit
        raise


def _answer(plane: DataPlane, session: CallSession, method: str, params: Mapping[str, Any]) -> Any:
    if method not in METHODS:
        raise Invalid(f"unknown method {method!r}: one of {', '.join(METHODS)}")
    if session.exceeded is not None:  # over a limit once: every later call fails too
        raise session.exceeded
    session.calls += 1
    if session.on_read is not None and method in ("db.get", "db.find"):
        session.on_read(method, params)
    collection = _str(params, "collection")
    txn, caller, budget = session.txn, session.caller, session.budget
    if method == "db.get":
        id_ = _str(params, "id")
        return _result(txn.get(collection, id_) if txn else plane.get(caller, collection, id_, budget=budget))
    if method == "db.find":
        filter_, order, limit = params.get("filter"), _order(params), _limit(params)
        cursor = _str(params, "cursor", optional=True)
        return _result(
            txn.find(collection, filter_, order=order, limit=limit, cursor=cursor)
            if txn
            else plane.find(caller, collection, filter_, order=order, limit=limit, cursor=cursor, budget=budget)
        )
    if method == "db.insert":
        id_, document = _str(params, "id", optional=True), params.get("document")
        return _result(
            txn.insert(collection, document, id=id_)
            if txn
            else plane.insert(caller, collection, document, id=id_, budget=budget)
        )
    id_, version = _str(params, "id"), _version(params)
    if method == "db.update":
        patch = params.get("patch")
        return _result(
            txn.patch(collection, id_, patch, if_match=version)
            if txn
            else plane.patch(caller, collection, id_, patch, if_match=version, budget=budget)
        )
    if method == "db.replace":
        document = params.get("document")
        return _result(
            txn.replace(collection, id_, document, if_match=version)
            if txn
            else plane.replace(caller, collection, id_, document, if_match=version, budget=budget)
        )
    if txn:
        txn.delete(collection, id_, if_match=version)
    else:
        plane.delete(caller, collection, id_, if_match=version, budget=budget)
    return None


def write_op(method: str, params: Mapping[str, Any]) -> WriteOp:
    """A `db.insert` / `update` / `replace` / `delete` call as the data plane's write."""
    collection = _str(params, "collection")
    if method == "db.insert":
        return WriteOp("insert", collection, _str(params, "id", optional=True), params.get("document"))
    id_, version = _str(params, "id"), _version(params)
    if method == "db.update":
        return WriteOp("patch", collection, id_, params.get("patch"), version)
    if method == "db.replace":
        return WriteOp("replace", collection, id_, params.get("document"), version)
    if method == "db.delete":
        return WriteOp("delete", collection, id_, None, version)
    raise Invalid(f"{method!r} is not a write")


def call_failed(error: DataError) -> CallFailed:
    """A data error as the reply to a handler's call: its type, status and problem details."""
    return CallFailed(
        type(error).__name__, error.detail_text or error.title, {"status": error.status, "problem": error.problem()}
    )


def parse_policies(specs: Mapping[str, Mapping[str, Any]]) -> tuple[Policy, ...]:
    """The live Policy resources (name → spec, as the routing table holds them) as the data plane's Policies;
    one that does not parse (it passed validation when applied, so: never) grants nothing and is logged."""
    policies = []
    for name, spec in sorted(specs.items()):
        try:
            policies.append(parse_policy(name, dict(spec)))
        except (ParseError, AttributeError, KeyError, TypeError) as exc:
            log.warning("policy %s grants no data access: %s", name, exc)
    return tuple(policies)
