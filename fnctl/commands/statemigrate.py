"""`fnctl state migrate`: move a project's deployment state from its SQLite file to PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fnctl.deploy import lock
from fnctl.errors import BadInput
from fnctl.state import location
from fnctl.state.location import StateLocation
from fnctl.state.store import connect, exists
from fnctl.state.transfer import Transfer, copy_state


@dataclass(frozen=True)
class Migration:
    source: StateLocation
    target: StateLocation
    transfer: Transfer


def parse_source(text: str) -> StateLocation:
    """`--from`: `sqlite:PATH` (or a bare path) naming an existing SQLite state file."""
    if location.is_postgres_url(text):
        raise BadInput("--from must name a SQLite state file (sqlite:PATH): copying from PostgreSQL is not supported")
    path = Path(text.removeprefix("sqlite:")).expanduser()
    found = StateLocation(path)
    if not exists(found) or not path.is_file():
        raise BadInput(f"--from {text}: no state store at {path}")
    return found


def parse_target(text: str) -> StateLocation:
    """`--to`: a postgresql:// URL (its host-local anchor as `location.parse` chooses)."""
    if not location.is_postgres_url(text):
        raise BadInput(f"--to must be a postgresql:// URL, not {text[:40]!r}")
    return location.parse(text)


def migrate(source_text: str, target_text: str, lock_timeout: float, command: str) -> Migration:
    """Copy the source state into the (empty) target database and check the copy. Deploys on the source are
    kept out meanwhile (its lock), and its writers wait for the copy's transaction."""
    source, target = parse_source(source_text), parse_target(target_text)
    with lock.held(source, lock_timeout, command):
        src = connect(source)
        try:
            dst = connect(target)
            try:
                transfer = copy_state(src, dst)
            finally:
                dst.close()
        finally:
            src.close()
    return Migration(source, target, transfer)
