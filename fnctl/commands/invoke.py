"""`fnctl invoke NAME`: through the project's running gateway when there is one (so that its metrics,
authentication, routing and audit apply), else straight to an instance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fnctl.deploy.session import state_path
from fnctl.gateway.client import find, invoke
from fnctl.invocation.outcome import Outcome
from fnctl.manifest.project import Project
from fnctl.state.store import connect


def invoke_deployed(project: Project, state: Path | None, name: str, event: Any, payload_size: int,
                    revision: int | None, *, key: str | None, logs: bool, direct: bool) -> tuple[Outcome, bool]:
    """`fnctl invoke NAME`: through the project's gateway when it runs (and not `direct`), else straight to an
    instance. Returns the outcome and whether a warm instance served it."""
    # The direct path needs the docker SDK (~0.1 s to import): not loaded when a gateway answers.
    from fnctl.commands.functions import invoke_live

    path = state_path(project, state)
    if not direct and path.exists():
        store = connect(path)
        try:
            store_id = store.id
        finally:
            store.close()
        if find(project.gateway, project.name, store_id):
            call = invoke(project.gateway, name, event, key=key, revision=revision, logs=logs)
            return call.outcome, not call.cold_start
    _, outcome = invoke_live(project, state, name, event, payload_size, revision)
    return outcome, True
