"""The data broker: answers the `call` frames (`db.get`, `db.find`, `db.insert`, `db.update`, `db.replace`,
`db.delete`) that handlers send through `context.db`.

Per invocation in flight it holds a `Session`: the function and revision it runs on, its caller (the gateway's
principal, or the function's own role `function:NAME` under `runAs: function`), its `Budget`
(`limits.dbOperations`, documents scanned, bytes) and, for a procedure (`transaction: {...}`), its `Txn`, which
the gateway commits when the handler returned ok and discards otherwise. A call is answered only for the
invocation it names, and only when it comes from an instance of that invocation's own function and revision:
one sandbox can never act under another invocation's caller.

`answer` (synchronous, no I/O of its own beyond the data plane) is the one place a call becomes a data-plane
operation; `fnctl invoke --local` uses it too. In the gateway every operation runs on one worker thread of the
broker's own, in order, off the event loop (the REST API's too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fnctl.data.caller import Caller
from fnctl.data.documents import DEFAULT_LIMIT, Budget, DataPlane, Document, Page, Txn
from fnctl.data.errors import DataError, Invalid
from fnctl.gateway.auth import Principal
from fnctl.gateway.router import DataSettings
from fnctl.invocation.transport import CallFailed
from fnctl.manifest.model import ParseError, Policy, parse_policy
from fnctl.state.store import Store
from fnctl.state.store import connect as connect_store

log = logging.getLogger("fnctl.gateway")
T = TypeVar("T")
METHODS = ("db.get", "db.find", "db.insert", "db.update", "db.replace", "db.delete")


@dataclass
class Session:
    function: str
    revision: int | None
    caller: Caller
    budget: Budget
    txn: Txn | None
    exceeded: DataError | None = None  # a limit was hit: the invocation fails, whatever the handler returns
    calls: int = 0


def caller_of(principal: Principal) -> Caller:
    """The gateway's principal as the data plane's caller: its audit name, roles and tenant."""
    return Caller(principal.audit_name, principal.kind.value, frozenset(principal.roles), principal.tenant or "")


def session_caller(caller: Caller, function: str, revision: int | None, settings: DataSettings) -> Caller:
    """Whose rights an invocation's data calls use: its caller's, or under `runAs: function` the function's
    own role (`function:NAME`), in the caller's tenant; either way recorded as coming from the function."""
    if settings.run_as_function:
        return Caller.for_function(function, revision, caller.tenant)
    return caller.calling_from(function, revision)


def open_session(plane: DataPlane, caller: Caller, function: str, revision: int | None,
                 settings: DataSettings) -> Session:
    acting = session_caller(caller, function, revision, settings)
    txn = plane.transaction(acting, Budget(operations=settings.db_operations)) if settings.transaction else None
    budget = txn.budget if txn is not None and txn.budget is not None else Budget(operations=settings.db_operations)
    return Session(function, revision, acting, budget, txn)


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


def _result(value: Document | Page | None) -> Any:
    return None if value is None else value.as_json()


def answer(plane: DataPlane, session: Session, method: str, params: Mapping[str, Any]) -> Any:
    """One `db.*` call of `session`'s invocation, as the data plane's operation (on the procedure's Txn when
    there is one, else committed at once), its result as JSON. Raises DataError; a limit it hits is remembered
    on the session (the invocation fails even if the handler catches the error)."""
    try:
        return _answer(plane, session, method, params)
    except DataError as error:
        if error.status == 429 and session.exceeded is None:
            session.exceeded = error
        raise


def _answer(plane: DataPlane, session: Session, method: str, params: Mapping[str, Any]) -> Any:
    if method not in METHODS:
        raise Invalid(f"unknown method {method!r}: one of {', '.join(METHODS)}")
    if session.exceeded is not None:  # over a limit once: every later call fails too
        raise session.exceeded
    session.calls += 1
    collection = _str(params, "collection")
    txn, caller, budget = session.txn, session.caller, session.budget
    if method == "db.get":
        id_ = _str(params, "id")
        return _result(txn.get(collection, id_) if txn else plane.get(caller, collection, id_, budget=budget))
    if method == "db.find":
        filter_, order, limit = params.get("filter"), _order(params), _limit(params)
        cursor = _str(params, "cursor", optional=True)
        return _result(txn.find(collection, filter_, order=order, limit=limit, cursor=cursor) if txn else
                       plane.find(caller, collection, filter_, order=order, limit=limit, cursor=cursor, budget=budget))
    if method == "db.insert":
        id_, document = _str(params, "id", optional=True), params.get("document")
        return _result(txn.insert(collection, document, id=id_) if txn else
                       plane.insert(caller, collection, document, id=id_, budget=budget))
    id_, version = _str(params, "id"), _version(params)
    if method == "db.update":
        patch = params.get("patch")
        return _result(txn.patch(collection, id_, patch, if_match=version) if txn else
                       plane.patch(caller, collection, id_, patch, if_match=version, budget=budget))
    if method == "db.replace":
        document = params.get("document")
        return _result(txn.replace(collection, id_, document, if_match=version) if txn else
                       plane.replace(caller, collection, id_, document, if_match=version, budget=budget))
    if txn:
        txn.delete(collection, id_, if_match=version)
    else:
        plane.delete(caller, collection, id_, if_match=version, budget=budget)
    return None


def call_failed(error: DataError) -> CallFailed:
    """A data error as the reply to a handler's call: its type, status and problem details."""
    return CallFailed(type(error).__name__, error.detail_text or error.title,
                      {"status": error.status, "problem": error.problem()})


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


class LivePolicies:
    """The policies source of the gateway's DataPlane: the routing table's Policy resources (re-read by the
    table follower when `apply` changes them), parsed once per table."""

    def __init__(self, table: Callable[[], Mapping[str, Mapping[str, Any]] | None]) -> None:
        self._table = table
        self._seen: Mapping[str, Mapping[str, Any]] | None = None
        self._parsed: tuple[Policy, ...] = ()

    def __call__(self) -> tuple[Policy, ...]:
        current = self._table()
        if current is None:
            return ()
        if current is not self._seen:
            self._parsed, self._seen = parse_policies(current), current
        return self._parsed


class StateAudit:
    """The DataPlane's audit sink in the gateway: the reads a function makes with its own rights (`runAs:
    function`) go into the deploy audit's hash chain (its writes are in the data file's change log). Called on
    the broker's data thread only, which owns the connection."""

    def __init__(self, store_path: Path) -> None:
        self._path = store_path
        self._store: Store | None = None

    def __call__(self, caller: Caller, action: str, target: str) -> None:
        if self._store is None:
            self._store = connect_store(self._path)
        revision = "" if caller.revision is None else f" r{caller.revision}"
        self._store.audit(actor=caller.subject, command="data", action=action, target=target, outcome="ok",
                          detail=f"runAs: function ({caller.function}{revision}), tenant {caller.tenant!r}")

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class Broker:
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.sessions: dict[str, Session] = {}
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="fnctl-data")

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the data plane's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn)

    def open(self, invocation_id: str, function: str, revision: int, caller: Caller,
             settings: DataSettings) -> Session:
        if invocation_id in self.sessions:
            raise ValueError(f"invocation {invocation_id} is in flight already")
        session = self.sessions[invocation_id] = open_session(self.plane, caller, function, revision, settings)
        return session

    def close(self, invocation_id: str) -> Session | None:
        session = self.sessions.pop(invocation_id, None)
        if session is not None and session.txn is not None and not session.txn.closed:
            session.txn.rollback()  # a failed procedure's buffered writes go with it
        return session

    def handler_for(self, function: str, revision: int) -> Callable[[str, str, dict[str, Any]], Any]:
        """The `on_call` of the transports to instances of (function, revision)."""

        async def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
            return await self.call(function, revision, invocation_id, method, params)

        return on_call

    async def call(self, function: str, revision: int, invocation_id: str, method: str,
                   params: Mapping[str, Any]) -> Any:
        session = self.sessions.get(invocation_id)
        if session is None or (session.function, session.revision) != (function, revision):
            raise CallFailed("NoInvocation", "no invocation of this instance is in flight with that id")
        try:
            return await self.run(lambda: answer(self.plane, session, method, params))
        except DataError as error:
            raise call_failed(error) from None

    async def commit(self, session: Session) -> None:
        """Commit a procedure's writes (raises Conflict when what it read changed meanwhile)."""
        txn = session.txn
        if txn is not None and not txn.closed:
            await self.run(txn.commit)

    def close_all(self) -> None:
        """Stop the data thread (after what it is running), close the audit's and the data file's connections."""
        self.sessions.clear()
        self._worker.shutdown(wait=True)
        audit = self.plane.audit
        if isinstance(audit, StateAudit):
            audit.close()
        self.plane.store.close()

