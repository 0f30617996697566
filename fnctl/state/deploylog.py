"""Which commit each `apply` and `sync` made live, in the store (`deploys` table, append-only), each marked
with the audit log as it stood when the deploy ended. What a sync decides from them is fnctl.gitops.deploys's.
"""

from __future__ import annotations

from dataclasses import dataclass

from fnctl.state.store import Store


@dataclass(frozen=True)
class DeployRecord:
    """A row of the deploy log, as stored: fnctl.gitops.deploys reads it as a `Deploy` of a git commit."""

    id: int
    at: float
    actor: str
    command: str  # apply | sync
    source: str  # the repository synced, or the work tree applied
    ref: str | None
    git_commit: str
    git_author: str
    git_subject: str
    dirty: bool
    preview: bool
    outcome: str
    audit_mark: int


def last(store: Store) -> DeployRecord | None:
    """The latest record of the main line (previews left out)."""
    rows = store._query(
        "SELECT id, at, actor, command, source, ref, git_commit, git_author, git_subject, dirty, "
        "preview, outcome, audit_mark FROM deploys WHERE preview = 0 ORDER BY id DESC LIMIT 1"
    )
    if not rows:
        return None
    r = rows[0]
    return DeployRecord(
        int(r[0]),
        float(r[1]),
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7] or "",
        r[8] or "",
        bool(r[9]),
        bool(r[10]),
        r[11],
        int(r[12]),
    )


def add(
    store: Store,
    *,
    at: float,
    actor: str,
    command: str,
    source: str,
    ref: str | None,
    git_commit: str,
    git_author: str,
    git_subject: str,
    dirty: bool,
    preview: bool,
    outcome: str,
) -> None:
    """Append a record, marked with the audit log as it stands now (after the deploy's own entries)."""
    store._execute(
        "INSERT INTO deploys (at, actor, command, source, ref, git_commit, git_author, git_subject, "
        "dirty, preview, outcome, audit_mark) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            at,
            actor,
            command,
            source,
            ref,
            git_commit,
            git_author,
            git_subject,
            int(dirty),
            int(preview),
            outcome,
            store.audit_mark(),
        ),
    )


# Audited actions that leave the deployment as it was: API keys, and promote/abort requests (the weight change
# a request leads to is audited by itself, as a route).
_NOT_DEPLOYMENT = "a.action NOT IN ('create key', 'revoke key') AND a.action NOT LIKE '% requested'"


def mark_since(store: Store, deploy_id: int, audit_mark: int) -> int:
    """The id of the last audit record after `audit_mark` that changed the deployment, leaving out the records
    of previews logged after deploy `deploy_id` and the actions that change no deployment; `audit_mark` when
    none. A preview's own records lie between its start (`at`) and its record (its `audit_mark`)."""
    return int(
        store._query(
            f"SELECT COALESCE(MAX(a.id), ?) FROM audit a WHERE a.id > ? AND {_NOT_DEPLOYMENT} AND NOT EXISTS ("
            "SELECT 1 FROM deploys d WHERE d.preview = 1 AND d.id > ? AND a.id <= d.audit_mark AND a.at >= d.at)",
            (audit_mark, audit_mark, deploy_id),
        )[0][0]
    )
