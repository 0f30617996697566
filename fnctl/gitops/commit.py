"""What fnctl knows of a commit, apart from git itself (`gitrepo` is the boundary): the commit a revision
names, a work tree's commit and uncommitted changes, and how a commit to deploy stands to the live one."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str  # "Name <email>"
    subject: str  # the first line of the message


@dataclass(frozen=True)
class WorkTree:
    commit: Commit
    dirty: tuple[Path, ...]  # absolute paths under the inspected directory with uncommitted changes, untracked too


class Relation(StrEnum):
    """How a commit to deploy stands to the live one."""

    SAME = "same"
    AHEAD = "ahead"  # descends from the live commit: a normal deploy
    BEHIND = "behind"  # an ancestor of the live commit: deploying it would roll back
    DIVERGED = "diverged"  # neither (a force-push, or a branch switch)
    UNKNOWN = "unknown"  # the repository does not have the live commit (gone, or never pushed)
