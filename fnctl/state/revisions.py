"""Revisions and instances as the state store keeps them: their records and statuses, and a revision read back
from its row (`revision_from_row`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class RevisionStatus(StrEnum):
    PENDING = "pending"  # being built / started / checked
    READY = "ready"  # passed its checks; may serve traffic
    FAILED = "failed"  # failed to build, start or pass checks
    QUARANTINED = "quarantined"  # rolled away from: apply refuses the same spec without --force
    PREVIEW = "preview"  # a branch's code beside the live revision at 0%: reachable pinned, never rolled back to


class InstanceState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    PAUSED = "paused"  # the gateway's warm reserve (`scaling.warm: paused`): started, frozen, answers nothing


@dataclass(frozen=True)
class Revision:
    function: str
    number: int
    spec_hash: str
    spec: dict[str, Any]
    image: str
    git_commit: str | None
    git_author: str | None
    created_at: float
    created_by: str
    status: RevisionStatus
    reason: str | None
    git_subject: str | None = None


@dataclass(frozen=True)
class InstanceRow:
    id: str
    function: str
    revision: int
    container_id: str | None
    socket_dir: str
    state: InstanceState
    created_at: float


def revision_from_row(row: Any) -> Revision:
    return Revision(
        row[0],
        int(row[1]),
        row[2],
        json.loads(row[3]),
        row[4],
        row[5],
        row[6],
        float(row[7]),
        row[8],
        RevisionStatus(row[9]),
        row[10],
        row[11],
    )
