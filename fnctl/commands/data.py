"""`fnctl data ls|get|find|put|patch|rm|check`: the operator's access to the collections (import and
export: `datatransfer`).

Every call goes through `fnctl.data.plane.DataPlane` as `Caller.operator(actor)` (which may read and write
everything, in one tenant at a time): writes land in the hash-chained change log with the operator as their
actor, reads are recorded in the audit log. Replacing, patching or deleting an existing document needs its
version (`--if-match N`, as REST needs If-Match) or an explicit `--force`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fnctl.data.caller import Caller
from fnctl.data.documents import DataDocument, Nonconforming, Page
from fnctl.data.errors import DataError, Invalid, NotFound, PreconditionRequired
from fnctl.data.hooks import hook_specs
from fnctl.data.plane import DataPlane
from fnctl.data.txn import Txn
from fnctl.deploy.actor import actor
from fnctl.errors import BadInput, ExitCode, FnctlError
from fnctl.gateway.router import on_commit_routes
from fnctl.invocation import strictjson
from fnctl.manifest.project import Project
from fnctl.state import docstore
from fnctl.state.location import StateLocation, locate
from fnctl.state.store import Store, connect


class DataCommandError(FnctlError):
    """A data-plane error as the CLI reports it: 2 for bad input, 1 otherwise; violations in the detail."""


@dataclass
class OperatorSession:
    plane: DataPlane
    caller: Caller
    store: Store  # the deployment store: its audit log records the operator's reads
    no_hooks: bool = False  # --no-hooks: write past the collection's data hooks (audited)
    command: str = ""


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    documents: int
    indexes: tuple[tuple[tuple[str, ...], bool], ...]  # (fields, unique)
    version: int

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "documents": self.documents,
            "version": self.version,
            "indexes": [{"fields": list(f), "unique": u} for f, u in self.indexes],
        }


@contextmanager
def session(
    project: Project, state: StateLocation | None, tenant: str | None, command: str, *, no_hooks: bool = False
) -> Iterator[OperatorSession]:
    """The data plane of the project's store, acting as the operator in `tenant` (default: the default one)."""
    path = locate(project, state)
    if not docstore.exists_at(path):
        raise BadInput(
            f"no data store at {docstore.where(path)}: declare a Collection in the manifests and run `fnctl apply`"
        )
    store = connect(path)
    docs = docstore.open_at(path)
    who = actor()

    def audit(caller: Caller, action: str, target: str) -> None:
        store.audit(
            actor=who,
            command=f"data {command}",
            action=action,
            target=target,
            outcome="ok",
            detail=f"tenant {caller.tenant!r}" if caller.tenant else None,
        )

    try:
        # Writes queue events for the onCommit triggers the store holds, as the gateway's writes do.
        routes = on_commit_routes(store.resources("Trigger"))
        plane = DataPlane(docs, lambda: (), audit, outbox=lambda: routes)
        yield OperatorSession(plane, Caller.operator(who, tenant or ""), store, no_hooks, command)
    finally:
        docs.close()
        store.close()


@contextmanager
def reported() -> Iterator[None]:
    """DataErrors as the CLI's errors: bad input (400, 413, 428) exits 2, the rest 1; violations listed."""
    try:
        yield
    except DataError as exc:
        raise _translate(exc) from None


def _translate(exc: DataError) -> FnctlError:
    detail = "\n".join(f"  {path}: {message}" for path, message in exc.violations) or None
    error = DataCommandError(exc.detail_text, detail=detail)
    error.exit_code = ExitCode.BAD_INPUT if exc.status in (400, 413, 428) else ExitCode.FAILED
    return error


def known(s: OperatorSession, collection: str) -> None:
    """Unknown collection → bad input, naming the ones there are."""
    names = s.plane.collection_names()
    if collection not in names:
        raise BadInput(f"no collection {collection!r} (collections: {', '.join(names) or 'none'})")


def writable(s: OperatorSession, collection: str) -> None:
    """The operator's CLI runs no data hooks: a hook runs in a sandbox of the gateway, as the writer, inside
    the writer's transaction. A write to a collection with hooks is refused (bad input) naming them, unless
    `--no-hooks`, which writes past them and is audited."""
    known(s, collection)
    hooks = sorted(
        h.name for (c, _), found in hook_specs(s.store.resources("Trigger")).items() if c == collection for h in found
    )
    if not hooks:
        return
    if not s.no_hooks:
        raise BadInput(
            f"collection {collection!r} has data hooks ({', '.join(hooks)}), which `fnctl data` does not run: "
            "write through the gateway's REST API (/v1/collections/...), which runs them, or pass --no-hooks "
            "to write without them (audited)"
        )
    s.store.audit(
        actor=s.caller.subject.removeprefix("operator:"),
        command=f"data {s.command}",
        action="data-no-hooks",
        target=collection,
        outcome="ok",
        detail=f"hooks not run: {', '.join(hooks)}",
    )


# -- reading -------------------------------------------------------------------------------------------------


def collections(s: OperatorSession) -> list[CollectionInfo]:
    rows = s.plane.store.collections()
    result = []
    for name in sorted(rows):
        model = s.plane.collection(name).model
        result.append(
            CollectionInfo(
                name,
                s.plane.store.count(name),
                tuple((tuple(i.fields), i.unique) for i in model.indexes),
                rows[name].version,
            )
        )
    return result


def get(s: OperatorSession, collection: str, id: str) -> DataDocument:
    known(s, collection)
    with reported():
        return s.plane.get(s.caller, collection, id)


def parse_json(text: str, what: str) -> Any:
    try:
        return strictjson.loads(text)
    except strictjson.NotJson as exc:
        raise BadInput(f"{what} is not valid JSON: {exc}") from None


def find(
    s: OperatorSession, collection: str, filter_text: str | None, order: Sequence[str], limit: int, cursor: str | None
) -> Page:
    known(s, collection)
    query = parse_json(filter_text, "the filter") if filter_text else None
    with reported():
        return s.plane.find(s.caller, collection, query, order=order, limit=limit, cursor=cursor)


# -- writing -------------------------------------------------------------------------------------------------


def put(
    s: OperatorSession, collection: str, id: str | None, data: Any, *, if_match: int | None, force: bool
) -> DataDocument:
    """Insert (a new id, or none: a UUIDv7), or replace an existing document (needs --if-match or --force)."""
    writable(s, collection)
    with reported():
        if id is None:
            if if_match is not None:
                raise Invalid("--if-match needs the id of the document to replace")
            return s.plane.insert(s.caller, collection, data)
        txn = s.plane.transaction(s.caller)
        current = _current(txn, collection, id)
        if current is None:
            if if_match is not None:
                raise NotFound(f"no document {id!r} in {collection!r} (--if-match names a version of one)")
            doc = txn.insert(collection, data, id=id)
        else:
            if if_match is None and not force:
                raise PreconditionRequired(
                    f"document {id!r} exists (version {current.version}): pass --if-match "
                    f"{current.version} to replace it, or --force"
                )
            doc = txn.replace(collection, id, data, if_match=if_match)
        results = txn.commit()
        return results[0] or doc if results else doc


def _current(txn: Txn, collection: str, id: str) -> DataDocument | None:
    try:
        return txn.get(collection, id)
    except NotFound:
        return None


def patch(
    s: OperatorSession, collection: str, id: str, merge: Any, *, if_match: int | None, force: bool
) -> DataDocument:
    writable(s, collection)
    if not isinstance(merge, dict):
        raise BadInput("a merge patch is a JSON object")
    _need_version(if_match, force, "patch")
    with reported():
        return s.plane.patch(s.caller, collection, id, merge, if_match=if_match)


def remove(s: OperatorSession, collection: str, id: str, *, if_match: int | None, force: bool) -> None:
    writable(s, collection)
    _need_version(if_match, force, "delete")
    with reported():
        s.plane.delete(s.caller, collection, id, if_match=if_match)


def _need_version(if_match: int | None, force: bool, verb: str) -> None:
    if if_match is None and not force:
        raise BadInput(
            f"to {verb} a document, pass --if-match VERSION (its current version: `fnctl data get`), or --force"
        )


def check(s: OperatorSession, collection: str) -> list[Nonconforming]:
    known(s, collection)
    with reported():
        return s.plane.check(collection)
