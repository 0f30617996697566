"""Which commit each `apply` and `sync` made live (the store's append-only `deploys` table, kept by
fnctl.state.deploylog), and the pure rule a sync follows with it: nothing to do, deploy, or refuse a commit that
would roll production back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fnctl.gitops.commit import Commit, Relation
from fnctl.state import deploylog
from fnctl.state.store import Store


@dataclass(frozen=True)
class Deploy:
    id: int
    at: float
    actor: str
    command: str  # apply | sync
    source: str  # the repository synced, or the work tree applied
    ref: str | None
    commit: Commit
    dirty: bool  # applied from a work tree with uncommitted changes (--allow-dirty)
    preview: bool
    outcome: str  # ok | failed | rolled-back | waiting
    audit_mark: int  # the audit log's last id when it ended: anything audited since changed the live state


class Decision(StrEnum):
    NOTHING = "nothing"  # the commit is live and nothing changed since
    DEPLOY = "deploy"
    HEAL = "heal"  # pull mode: the commit is live, planned again only to heal drift (never `decide`'s answer)
    FAILED = "failed"  # pull mode: the commit's deploy failed and nothing changed since: not tried again
    REWIND = "rewind"  # an ancestor of the live commit
    DIVERGED = "diverged"  # not a descendant of the live commit (history rewritten)


def decide(
    last: Deploy | None, sha: str, relation: Relation | None, audit_mark: int, *, pulling: bool = False
) -> Decision:
    """What a sync of commit `sha` does, given the last deploy and how `sha` stands to its commit; `pulling`
    (pull mode, every interval) never retries a deploy of that commit on its own."""
    if last is None or relation is None:
        return Decision.DEPLOY
    if relation is Relation.SAME:
        untouched = not last.dirty and last.audit_mark == audit_mark  # no rollback, heal or apply since
        if untouched and last.outcome == "ok":
            return Decision.NOTHING
        if pulling:
            # Pull mode never deploys the same commit again: its drift check plans it anyway (and refuses a
            # quarantined spec), and a failed deploy retried every interval would build, start and fail each time.
            return Decision.FAILED if untouched and last.outcome == "failed" else Decision.NOTHING
        return Decision.DEPLOY  # a rollback since: the plan decides (and refuses a quarantined spec)
    if relation is Relation.BEHIND:
        return Decision.REWIND
    if relation is Relation.UNKNOWN:
        # A commit applied from a work tree may never have been pushed: the repository takes over. One that
        # was synced and is gone from the repository was rewritten away.
        return Decision.DEPLOY if last.command == "apply" else Decision.DIVERGED
    return Decision.DIVERGED if relation is Relation.DIVERGED else Decision.DEPLOY


def last(store: Store) -> Deploy | None:
    """The latest deploy of the main line (previews take no traffic, so they never count)."""
    r = deploylog.last(store)
    if r is None:
        return None
    return Deploy(
        r.id,
        r.at,
        r.actor,
        r.command,
        r.source,
        r.ref,
        Commit(r.git_commit, r.git_author, r.git_subject),
        r.dirty,
        r.preview,
        r.outcome,
        r.audit_mark,
    )


def audit_mark(store: Store) -> int:
    return store.audit_mark()


def mark_since(store: Store, last: Deploy) -> int:
    """The audit mark as `last` sees it: the last entry written since it that changed the deployment, previews'
    own entries left out (a preview takes no traffic, so the live commit needs no new deploy after one);
    `last.audit_mark` when none. Which audited actions change no deployment (keys, promote/abort requests):
    fnctl.state.deploylog."""
    return deploylog.mark_since(store, last.id, last.audit_mark)


def record(
    store: Store,
    *,
    at: float,
    actor: str,
    command: str,
    source: str,
    ref: str | None,
    commit: Commit,
    dirty: bool,
    preview: bool,
    outcome: str,
) -> None:
    """Append the deploy of `commit`, marked with the audit log as it stands now (after the deploy's own
    entries), so that the next sync of the same commit can tell whether anything changed since."""
    deploylog.add(
        store,
        at=at,
        actor=actor,
        command=command,
        source=source,
        ref=ref,
        git_commit=commit.sha,
        git_author=commit.author,
        git_subject=commit.subject,
        dirty=dirty,
        preview=preview,
        outcome=outcome,
    )
