"""`fnctl view get NAME [-p k=v]`: a view's result through the project's running gateway (views are cached
there: the CLI has no cache of its own), and `fnctl events ls|replay|purge`: the onCommit outbox of the
data file (`fnctl.state.outbox`), each replay and purge audited."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fnctl.deploy.actor import actor
from fnctl.errors import BadInput, ExitCode, FnctlError
from fnctl.gateway.client import ViewAnswer, find, view
from fnctl.manifest.project import Project
from fnctl.state import docstore
from fnctl.state.location import StateLocation, locate
from fnctl.state.outbox import DEAD, DELIVERED, STATES, OutboxEvent
from fnctl.state.store import connect, exists


class ViewError(FnctlError):
    """A view the gateway refused (exit 2 for bad arguments) or whose function failed (exit 1)."""


def parse_params(pairs: Sequence[str]) -> list[tuple[str, str]]:
    """`-p key=value` options as query pairs (a key may repeat)."""
    out = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise BadInput(f"-p {pair!r}: give NAME=VALUE, e.g. -p customer=c-7")
        out.append((name, value))
    return out


def get_view(
    project: Project, state: StateLocation | None, name: str, params: Sequence[str], key: str | None
) -> ViewAnswer:
    path = locate(project, state)
    query = parse_params(params)
    store_id = None
    if exists(path):
        store = connect(path)
        try:
            store_id = store.id
        finally:
            store.close()
    if store_id is None or not find(project.gateway, project.name, store_id):
        raise FnctlError(f"no gateway of this project answers at {project.gateway}: views are served by `fnctl serve`")
    answer = view(project.gateway, name, query, key=key)
    if answer.status == 200:
        return answer
    body: dict[str, Any] = answer.body if isinstance(answer.body, dict) else {}
    inner = body.get("error")
    problem: dict[str, Any] = inner if isinstance(inner, dict) else body
    message = str(problem.get("detail") or problem.get("message") or problem.get("title") or answer.status)
    listed = body.get("violations")
    violations: list[Any] = listed if isinstance(listed, list) else []
    detail = "\n".join(f"  {v.get('path')}: {v.get('message')}" for v in violations if isinstance(v, dict)) or None
    error = ViewError(f"view {name!r}: {answer.status} {message}", detail=detail)
    error.exit_code = ExitCode.BAD_INPUT if answer.status in (400, 404) else ExitCode.FAILED
    raise error


def _data(project: Project, state: StateLocation | None) -> StateLocation:
    path = locate(project, state)
    if not docstore.exists_at(path):
        raise BadInput(
            f"no data store at {docstore.where(path)}: declare a Collection in the manifests and run `fnctl apply`"
        )
    return path


def _state(value: str | None) -> str | None:
    if value is not None and value not in STATES:
        raise BadInput(f"--status {value!r}: one of {', '.join(STATES)}")
    return value


def list_events(
    project: Project, state: StateLocation | None, which: str | None, trigger: str | None, limit: int, after: int = 0
) -> list[OutboxEvent]:
    if limit < 1:
        raise BadInput("--limit must be at least 1")
    docs = docstore.open_at(_data(project, state))
    try:
        return docs.outbox_list(_state(which), trigger, limit, after)
    finally:
        docs.close()


def event_json(e: OutboxEvent) -> dict[str, Any]:
    """One event as `fnctl events ls -o json` prints it."""
    return {
        "eventId": f"{e.trigger}:{e.seq}",
        "trigger": e.trigger,
        "seq": e.seq,
        "collection": e.collection,
        "tenant": e.tenant,
        "id": e.doc_id,
        "op": e.op,
        "state": e.state,
        "attempts": e.attempts,
        "nextAttempt": e.next_at if e.state == "pending" else None,
        "lastError": e.last_error,
        "at": e.at,
    }


def event_counts(project: Project, state: StateLocation | None) -> dict[str, dict[str, int]]:
    """Per trigger, its events in each state (pending, delivered, dead): what `events ls` lists, counted."""
    docs = docstore.open_at(_data(project, state))
    try:
        counted = docs.outbox_counts()
    finally:
        docs.close()
    out: dict[str, dict[str, int]] = {}
    for (trigger, which), count in sorted(counted.items()):
        out.setdefault(trigger, dict.fromkeys(STATES, 0))[which] = count
    return out


def replay(
    project: Project,
    state: StateLocation | None,
    trigger: str | None,
    seqs: Sequence[int],
    delivered: bool,
    *,
    by: str | None = None,
) -> int:
    """Dead letters (or, with `delivered`, delivered events) made pending again; audited (as `by`, default the
    OS/CI user: the dashboard passes its signed-in principal)."""
    which = DELIVERED if delivered else DEAD
    return _change(project, state, "events-replay", trigger, seqs, which, replay=True, by=by)


def purge(
    project: Project, state: StateLocation | None, which: str | None, trigger: str | None, seqs: Sequence[int]
) -> int:
    """Events deleted (default: the dead letters); audited."""
    return _change(project, state, "events-purge", trigger, seqs, _state(which) or DEAD, replay=False)


def _change(
    project: Project,
    state: StateLocation | None,
    action: str,
    trigger: str | None,
    seqs: Sequence[int],
    which: str,
    *,
    replay: bool,
    by: str | None = None,
) -> int:
    path = _data(project, state)
    docs = docstore.open_at(path)
    store = connect(path)
    try:
        count = docs.outbox_replay(trigger, seqs, which) if replay else docs.outbox_purge(which, trigger, seqs)
        store.audit(
            actor=by or actor(),
            command=action.replace("-", " "),
            action=action,
            target=trigger or "(all triggers)",
            outcome="ok",
            detail=f"{count} {which} event(s)" + (f", seq {', '.join(map(str, seqs))}" if seqs else ""),
        )
        return count
    finally:
        docs.close()
        store.close()
