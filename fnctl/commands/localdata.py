"""`context.db` for `fnctl invoke --local`: the data file a local invocation reads and writes, its Policies,
and the calls of one invocation, answered as the gateway's broker answers them.

Opened by `fnctl.commands.local` on a handler's first `context.db` call, through the opener the caller gives
it (`LocalData.open`): an invocation that makes no call never loads the data plane.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fnctl.data.caller import Caller
from fnctl.data.errors import DataError, Invalid
from fnctl.data.hooks import EVENTS, HookSpec, hook_specs
from fnctl.data.plane import DataPlane
from fnctl.deploy.actor import actor
from fnctl.errors import BadInput
from fnctl.gateway.datacalls import WRITES, CallSession, answer, call_failed, open_session, parse_policies
from fnctl.gateway.router import DataSettings, on_commit_routes
from fnctl.invocation.outcome import Failure, Outcome
from fnctl.invocation.protocol import CallFailed
from fnctl.manifest.model import DesiredState, Function, Policy, RunAs
from fnctl.manifest.project import Project, cache_dir
from fnctl.state import docstore
from fnctl.state.location import StateLocation
from fnctl.state.store import connect as connect_store


class LocalData:
    """`context.db` for `invoke --local`: the data file (the project's own under the user's cache, or a state
    store's with `--data-from`), the Policies that apply (the manifests', or the store's live ones), and the
    calls of one invocation at a time, answered by the gateway broker's `answer` with the same rights,
    budget and procedure semantics. The caller is the operator running the command (every write is in the
    change log as `operator:<user>`); under `runAs: function` the function's own role."""

    def __init__(self, plane: DataPlane, hooks: dict[tuple[str, str], tuple[HookSpec, ...]] | None = None) -> None:
        self.plane = plane
        # A live data file's hooks (--data-from): `invoke --local` runs none, so it writes to none of their
        # collections (the project's private local file has no hooks run on it, by design: docs/hooks.md).
        self.hooks = hooks or {}
        self.session: CallSession | None = None
        self._lock = threading.Lock()  # the transport answers calls on a pool of threads: one at a time here

    @classmethod
    @contextmanager
    def open(cls, project: Project, data_from: StateLocation | None, state: DesiredState | None) -> Iterator[LocalData]:
        hooks: dict[tuple[str, str], tuple[HookSpec, ...]] = {}
        if data_from is not None:
            if data_from.url is None and not data_from.path.exists():
                raise BadInput(f"--data-from {data_from}: no state store there")
            documents = docstore.open_at(data_from)
            policies_of, routes = _store_policies(data_from)
            # the live data file: its writes queue events for the store's onCommit triggers, as the gateway's do
            plane = DataPlane(documents, policies_of, outbox=lambda: routes)
            hooks = _store_hooks(data_from)
        else:
            documents = docstore.connect(local_data_path(project))
            policies = state.policies if state is not None else ()
            plane = DataPlane(documents, lambda: policies)
            if state is not None:  # the local file's collections follow the manifests (never dropping data)
                plane.sync_collections(state.collections, prune=False, force=False)
        try:
            yield cls(plane, hooks)
        finally:
            documents.close()

    def begin(self, function: Function) -> None:
        settings = DataSettings(
            run_as_function=function.run_as is RunAs.FUNCTION,
            transaction=function.transaction is not None,
            retries=0,
            db_operations=function.db_operations,
        )
        self.session = open_session(self.plane, Caller.operator(actor()), function.name, None, settings)

    def on_call(self, invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        with self._lock:
            if self.session is None:
                raise CallFailed("NoInvocation", "no invocation is in flight")
            try:
                self._refuse_hooked(method, params)
                return answer(self.plane, self.session, method, params)
            except DataError as error:
                raise call_failed(error) from None

    def _refuse_hooked(self, method: str, params: dict[str, Any]) -> None:
        op = WRITES.get(method)
        if op is None or not self.hooks:
            return
        kind = EVENTS[op]
        collection = params.get("collection")
        names = [h.name for e in ("before", "after") for h in self.hooks.get((str(collection), e + kind), ())]
        if names:
            raise Invalid(
                f"collection {collection!r} has data hooks ({', '.join(names)}), which `invoke --local` does not "
                "run: invoke the deployed function through the gateway instead"
            )

    def finish(self, outcome: Outcome) -> Outcome:
        """The invocation's outcome after its data: a limit it hit fails it; a procedure commits only when
        the handler returned ok (a conflict fails it: nothing is re-run locally)."""
        session, self.session = self.session, None
        if session is None:
            return outcome
        if session.exceeded is not None:
            return _failed(outcome, f"LimitExceeded: {session.exceeded.detail_text}")
        if session.txn is not None:
            if session.conflict is not None:
                session.txn.rollback()
                return _failed(outcome, f"Conflict: {session.conflict.detail_text} (nothing was written)")
            if not outcome.ok:
                session.txn.rollback()
                return outcome
            try:
                session.txn.commit()
            except DataError as error:
                return _failed(outcome, f"{type(error).__name__}: {error.detail_text} (nothing was written)")
        return outcome


def _failed(outcome: Outcome, message: str) -> Outcome:
    """`outcome` failed after the handler returned, for its data: a handler error with `message`."""
    return replace(outcome, ok=False, result=None, failure=Failure.HANDLER_ERROR, message=message)


def local_data_path(project: Project) -> Path:
    """The project's local data file for `invoke --local`, under the user's cache (one per project root)."""
    where = hashlib.sha256(os.path.realpath(project.root).encode()).hexdigest()[:16]
    return cache_dir() / "local-data" / f"{project.name}-{where}.data.db"


def _store_hooks(state: StateLocation) -> dict[tuple[str, str], tuple[HookSpec, ...]]:
    """The data hooks of the state store at `state` (its published Triggers), read once."""
    store = connect_store(state)
    try:
        return hook_specs(store.resources("Trigger"))
    finally:
        store.close()


def _store_policies(state: StateLocation) -> tuple[Callable[[], tuple[Policy, ...]], dict[str, tuple[str, ...]]]:
    """The live Policies of the state store at `state` and its onCommit triggers by collection, read once."""
    store = connect_store(state)
    try:
        policies = parse_policies(store.resources("Policy"))
        routes = on_commit_routes(store.resources("Trigger"))
    finally:
        store.close()
    return (lambda: policies), routes
