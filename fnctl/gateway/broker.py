"""The data broker: answers the `call` frames (`db.get`, `db.find`, `db.insert`, `db.update`, `db.replace`,
`db.delete`) that handlers send through `context.db`.

Per invocation in flight it holds a `CallSession` (opened by its first call, but a procedure's): the function and revision it runs on, its caller (the gateway's
principal, or the function's own role `function:NAME` under `runAs: function`), its `Budget`
(`limits.dbOperations`, documents scanned, bytes) and, for a procedure (`transaction: {...}`), its `Txn`, which
the gateway commits when the handler returned ok and discards otherwise. A call is answered only for the
invocation it names, and only when it comes from an instance of that invocation's own function and revision:
one sandbox can never act under another invocation's caller.

The calls are answered by `fnctl.gateway.datacalls.answer` (`fnctl invoke --local` uses it too), on one
worker thread of the broker's own, in order, off the event loop (the REST API's data work too); a `db.get`
(one primary-key read) is answered on the event loop itself when no other call of its invocation is running,
and a refusal (no such invocation, an unknown method) at once too: both as `Answered`, which the transport
writes from the frame's read callback, without a task.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from fnctl.data.caller import Caller
from fnctl.data.documents import Budget, DataDocument, WriteOp
from fnctl.data.errors import DataError, Forbidden, Invalid
from fnctl.data.plane import DataPlane
from fnctl.data.txn import Txn
from fnctl.errors import FnctlError
from fnctl.gateway.datacalls import (
    METHODS,
    WRITES,
    CallSession,
    answer,
    call_failed,
    caller_of,
    open_session,
    parse_policies,
    session_caller,
)
from fnctl.gateway.router import DataSettings
from fnctl.invocation.aiotransport import Answered, AsyncCallHandler
from fnctl.invocation.protocol import CallFailed
from fnctl.manifest.model import Policy
from fnctl.state.location import StateLocation
from fnctl.state.store import Store
from fnctl.state.store import connect as connect_store

T = TypeVar("T")
OnRead = Callable[[str, Mapping[str, Any]], None]
log = logging.getLogger("fnctl.gateway")
CHECKPOINT_EVERY = 0.25  # seconds from a write to the data file's checkpoint, taken apart from the writes
_AUDITED = ("function", "operator")  # callers whose reads the audit sink records (on the data thread only)
__all__ = ["Broker", "LivePolicies", "CallSession", "StateAudit", "caller_of"]


class HookWrites(Protocol):
    """The data hooks (`fnctl.gateway.hooks.HookRunner`): the handlers' writes that have hooks go through it."""

    def applies(self, collection: Any, op: str) -> bool: ...

    async def call(self, session: CallSession, method: str, params: Mapping[str, Any]) -> Any: ...

    async def commit_writes(
        self,
        caller: Caller,
        ops: Sequence[WriteOp],
        *,
        idempotency_key: str | None = None,
        require_if_match: bool = False,
        budget: Budget | None = None,
    ) -> list[DataDocument | None]: ...


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

    def __init__(self, store_path: StateLocation) -> None:
        self._path = store_path
        self._store: Store | None = None

    def __call__(self, caller: Caller, action: str, target: str) -> None:
        if self._store is None:
            self._store = connect_store(self._path)
        revision = "" if caller.revision is None else f" r{caller.revision}"
        self._store.audit(
            actor=caller.subject,
            command="data",
            action=action,
            target=target,
            outcome="ok",
            detail=f"runAs: function ({caller.function}{revision}), tenant {caller.tenant!r}",
        )

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class Broker:
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.sessions: dict[str, CallSession] = {}
        # Invocations whose session is opened by their first call (`defer`): most never make one
        self._deferred: dict[str, tuple[str, int, Caller, DataSettings, OnRead | None, bool]] = {}
        self.hooks: HookWrites | None = None  # set by the gateway when it serves data hooks
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="fnctl-data")
        # Writes waiting for the data thread (see `write`), and whether a `_drain` is queued for them.
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[[], Txn], asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []
        self._scheduled = False
        # The data file's checkpoints on a thread of their own: a checkpoint's fsyncs never hold up a commit.
        self._stopping = threading.Event()
        self._written = threading.Event()  # set after every write to the data file: a checkpoint is due
        self._checkpoints: threading.Thread | None = None
        if plane.store.checkpoint_apart(self._written.set):  # (PostgreSQL: no file to checkpoint, no thread)
            self._checkpoints = threading.Thread(target=self._checkpoint, name="fnctl-checkpoint", daemon=True)
            self._checkpoints.start()

    def _checkpoint(self) -> None:
        """One checkpoint CHECKPOINT_EVERY after a write, for it and the writes meanwhile; none while nothing
        is written: the thread sleeps until a write (it used to wake every CHECKPOINT_EVERY, idle or not)."""
        while True:
            self._written.wait()
            if self._stopping.wait(CHECKPOINT_EVERY):
                return  # the store's close checkpoints what is left (SQLite does, closing the last connection)
            self._written.clear()  # before the checkpoint: a write committed during it asks for the next one
            try:
                self.plane.store.checkpoint()
            except FnctlError as exc:  # the committing connection checkpoints itself past CHECKPOINT_SAFETY
                log.warning("data file checkpoints stopped: %s", exc)
                return

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the data plane's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn)

    async def write(self, stage: Callable[[], Txn]) -> list[DataDocument | None]:
        """Stage a one-call write on the data thread (every check: rights, schema, versions), then commit it
        with the other writes staged meanwhile in ONE store transaction (`DataPlane.commit_group`): under
        concurrent writes, one BEGIN/COMMIT and one change-log append serve them all. Each write is still all
        or nothing and gets its own result or error.

        The writes that arrive while the data thread is busy, or in the same turn of the event loop, wait in
        `_pending` and are handed over together: one job on the data thread stages and commits them all, and
        one wake-up of the event loop settles them (a thread hop each way per group rather than per write;
        handing over at the end of the turn doubled the group under 8 concurrent clients, 3.9 → 6.8)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[DataDocument | None]] = loop.create_future()
        with self._lock:
            self._pending.append((stage, loop, done))
            scheduled, self._scheduled = self._scheduled, True
        if not scheduled:
            # Handed over once the loop has run what is ready now: the other requests whose bodies arrived
            # in the same read join this group, and they share one hop to the data thread.
            loop.call_soon(self._worker.submit, self._drain)
        return await done

    def _drain(self) -> None:
        """Stage every pending write and commit those staged as one group (on the data thread)."""
        with self._lock:
            batch, self._pending, self._scheduled = self._pending, [], False
        answers: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        group: list[tuple[Txn, asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []
        for stage, loop, done in batch:
            try:
                group.append((stage(), loop, done))
            except BaseException as exc:  # noqa: BLE001 -- handed to the awaiting request
                answers.setdefault(loop, []).append((done, exc))
        if group:
            try:
                results: list[list[DataDocument | None] | DataError] | BaseException = self.plane.commit_group(
                    [txn for txn, _, _ in group]
                )
            except BaseException as exc:  # noqa: BLE001 -- the store failed: every write of the group learns it
                results = exc
            for i, (_, loop, done) in enumerate(group):
                answers.setdefault(loop, []).append(
                    (done, results if isinstance(results, BaseException) else results[i])
                )
        for loop, settled in answers.items():
            loop.call_soon_threadsafe(_settle, settled)

    def open(
        self,
        invocation_id: str,
        function: str,
        revision: int,
        caller: Caller,
        settings: DataSettings,
        on_read: Callable[[str, Mapping[str, Any]], None] | None = None,
        read_only: bool = False,
    ) -> CallSession:
        """A session opened now (a procedure's: its transaction is the gateway's to commit)."""
        self.defer(invocation_id, function, revision, caller, settings, on_read, read_only)
        return self._open_deferred(invocation_id)

    def defer(
        self,
        invocation_id: str,
        function: str,
        revision: int,
        caller: Caller,
        settings: DataSettings,
        on_read: OnRead | None = None,
        read_only: bool = False,
    ) -> None:
        """`open`, put off until the invocation's first call (`session`): the same session then, the same caller,
        rights and budget; `close` ends it either way. Most invocations never call `context.db`, and opening a
        session for each cost the gateway ~4 % of its CPU per request. Not for a procedure: its transaction
        is the gateway's to commit."""
        if self.in_flight(invocation_id):
            raise ValueError(f"invocation {invocation_id} is in flight already")
        self._deferred[invocation_id] = (function, revision, caller, settings, on_read, read_only)

    def session(self, invocation_id: str) -> CallSession | None:
        """The session of an invocation in flight (opened now, if it was deferred); None when there is none."""
        session = self.sessions.get(invocation_id)
        if session is None and invocation_id in self._deferred:
            session = self._open_deferred(invocation_id)
        return session

    def _open_deferred(self, invocation_id: str) -> CallSession:
        function, revision, caller, settings, on_read, read_only = self._deferred.pop(invocation_id)
        session = self.sessions[invocation_id] = open_session(self.plane, caller, function, revision, settings, on_read)
        session.read_only = read_only
        return session

    def in_flight(self, invocation_id: str) -> bool:
        """Whether an invocation with this id has a session (opened or deferred)."""
        return invocation_id in self.sessions or invocation_id in self._deferred

    def open_shared(
        self, invocation_id: str, function: str, revision: int, caller: Caller, settings: DataSettings, txn: Txn | None
    ) -> CallSession:
        """A hook's session: the writer's identity and rights, its calls in the writer's transaction `txn` (None:
        each call commits alone), which the writer commits or rolls back."""
        if self.in_flight(invocation_id):
            raise ValueError(f"invocation {invocation_id} is in flight already")
        acting = session_caller(caller, function, revision, settings)
        budget = txn.budget if txn is not None and txn.budget is not None else Budget(operations=settings.db_operations)
        session = CallSession(function, revision, acting, budget, txn, shared=True)
        self.sessions[invocation_id] = session
        return session

    def close(self, invocation_id: str) -> CallSession | None:
        """End an invocation's session; the session, when it was opened (deferred and never called: None)."""
        if self._deferred.pop(invocation_id, None) is not None:
            return None
        session = self.sessions.pop(invocation_id, None)
        if session is not None and session.txn is not None and not session.shared and not session.txn.closed:
            session.txn.rollback()  # a failed procedure's buffered writes go with it
        return session

    def handler_for(self, function: str, revision: int) -> AsyncCallHandler:
        """The `on_call` of the transports to instances of (function, revision)."""

        def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Awaitable[Any] | Answered:
            return self.call(function, revision, invocation_id, method, params)

        return on_call

    def call(
        self, function: str, revision: int, invocation_id: str, method: str, params: Mapping[str, Any]
    ) -> Awaitable[Any] | Answered:
        """Answer a call at once when that needs neither the data thread nor a wait (a refusal, a `db.get`),
        else hand it to the data thread and return what to await."""
        session = self.session(invocation_id)
        if session is None or (session.function, session.revision) != (function, revision):
            raise CallFailed("NoInvocation", "no invocation of this instance is in flight with that id")
        try:
            if method not in METHODS:
                raise Invalid(f"unknown method {method!r}: one of {', '.join(METHODS)}")
            if session.read_only and method in WRITES:
                raise Forbidden("a hook run for a write taken by another node's gateway cannot write")
            hooks = self.hooks
            if hooks is not None and method in WRITES and hooks.applies(params.get("collection"), WRITES[method]):
                return self._hooked(hooks, session, method, params)
            if method == "db.get" and session.busy == 0 and session.caller.kind not in _AUDITED:
                # One primary-key read: answered on the event loop (its own connection; WAL readers never
                # wait), with the same checks, rather than a hop to the data thread and back. Only when none
                # of the session's calls is on the data thread: a Txn is used by one thread at a time.
                return Answered(answer(self.plane, session, method, params))
        except DataError as error:
            raise call_failed(error) from None
        return self._call_later(session, method, params)

    async def _hooked(self, hooks: HookWrites, session: CallSession, method: str, params: Mapping[str, Any]) -> Any:
        try:
            return await hooks.call(session, method, params)
        except DataError as error:
            raise call_failed(error) from None

    async def _call_later(self, session: CallSession, method: str, params: Mapping[str, Any]) -> Any:
        session.busy += 1
        try:
            return await self.run(lambda: answer(self.plane, session, method, params))
        except DataError as error:
            raise call_failed(error) from None
        finally:
            session.busy -= 1

    async def commit(self, session: CallSession) -> None:
        """Commit a procedure's writes (raises Conflict when what it read changed meanwhile)."""
        txn = session.txn
        if txn is not None and not txn.closed:
            await self.run(txn.commit)

    def close_all(self) -> None:
        """Stop the data thread (after what it is running), close the audit's and the data file's connections."""
        self.sessions.clear()
        self._deferred.clear()
        self._worker.shutdown(wait=True)
        self._stopping.set()
        self._written.set()  # wakes a checkpointer waiting for a write
        if self._checkpoints is not None:
            self._checkpoints.join()
        audit = self.plane.audit
        if isinstance(audit, StateAudit):
            audit.close()
        self.plane.store.close()


def _settle(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    """Hand each write of a group its result or exception (on the event loop; a request gone meanwhile is
    skipped)."""
    for done, outcome in settled:
        if done.done():
            continue
        if isinstance(outcome, BaseException):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)
