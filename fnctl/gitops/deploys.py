"""Which commit each `apply` and `sync` made live (the store's append-only `deploys` table), and the pure rule
a sync follows with it: nothing to do, deploy, or refuse a commit that would roll production back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fnctl.gitops.gitrepo import Commit, Relation
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


def decide(last: Deploy | None, sha: str, relation: Relation | None, audit_mark: int, *,
           pulling: bool = False) -> Decision:
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
    rows = store.query("SELECT id, at, actor, command, source, ref, git_commit, git_author, git_subject, dirty, "
                       "preview, outcome, audit_mark FROM deploys WHERE preview = 0 ORDER BY id DESC LIMIT 1")
    if not rows:
        return None
    r = rows[0]
    return Deploy(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], Commit(r[6], r[7] or "", r[8] or ""), bool(r[9]),
                  bool(r[10]), r[11], int(r[12]))


def audit_mark(store: Store) -> int:
    return int(store.query("SELECT COALESCE(MAX(id), 0) FROM audit")[0][0])


# Audited actions that leave the deployment as it was: API keys, and promote/abort requests (the weight change
# a request leads to is audited by itself, as a route).
_NOT_DEPLOYMENT_SQL = "a.action NOT IN ('create key', 'revoke key') AND a.action NOT LIKE '% requested'"


def mark_since(store: Store, last: Deploy) -> int:
    """The audit mark as `last` sees it: the last entry written since it that changed the deployment, previews'
    own entries left out (a preview takes no traffic, so the live commit needs no new deploy after one);
    `last.audit_mark` when none. A preview's own entries lie between its start (`at`) and its record."""
    return int(store.query(
        f"SELECT COALESCE(MAX(a.id), ?) FROM audit a WHERE a.id > ? AND {_NOT_DEPLOYMENT_SQL} AND NOT EXISTS ("
        "SELECT 1 FROM deploys d WHERE d.preview = 1 AND d.id > ? AND a.id <= d.audit_mark AND a.at >= d.at)",
        (last.audit_mark, last.audit_mark, last.id))[0][0])


def record(store: Store, *, at: float, actor: str, command: str, source: str, ref: str | None, commit: Commit,
           dirty: bool, preview: bool, outcome: str) -> None:
    """Append the deploy of `commit`, marked with the audit log as it stands now (after the deploy's own
    entries), so that the next sync of the same commit can tell whether anything changed since."""
    store.execute("INSERT INTO deploys (at, actor, command, source, ref, git_commit, git_author, git_subject, dirty, "
                  "preview, outcome, audit_mark) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (at, actor, command, source, ref, commit.sha, commit.author, commit.subject, int(dirty), int(preview),
                   outcome, audit_mark(store)))
