"""The session a deploy command runs in: where the store is, the store's lock, who acts and from which
commit (`session`), and the validated desired state as deploy specs with their secret values."""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fnctl.deploy import executor, lock
from fnctl.deploy.actor import actor
from fnctl.deploy.desired import DeploySpec, deploy_spec
from fnctl.deploy.secrets import fingerprint_key, keyed_fingerprint, resolve
from fnctl.errors import BadInput
from fnctl.gitops.commit import WorkTree
from fnctl.gitops.gitrepo import work_tree
from fnctl.manifest.model import DesiredState
from fnctl.manifest.project import Project
from fnctl.runtimes.validation import validate_project
from fnctl.state.location import StateLocation, locate
from fnctl.state.store import Store, connect

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    state: StateLocation | None = None
    lock_timeout: float = 60.0
    prune: bool = False
    force: bool = False
    wait: bool = True  # follow rollouts until they settle (completed, aborted, or at a gate)
    timeout: float | None = None  # for that
    allow_dirty: bool = False  # deploy from a work tree with uncommitted changes
    on_lock_wait: lock.OnWait | None = None  # shows whom a command waits for when the lock is held (the CLI's)
    actor: str | None = None  # who acts, when not this process's user (the dashboard: the signed-in principal)


@contextmanager
def session(
    project: Project,
    options: Options,
    command: str,
    progress: Progress,
    *,
    mutating: bool = True,
    locked: bool = False,
    source: WorkTree | None = None,
) -> Iterator[executor.Context]:
    """The store and who acts, under the lock when `mutating` (unless the caller holds it: `locked`); the
    commit recorded is `source`'s, else that of the work tree the project sits in."""
    path = locate(project, options.state)
    guard = (
        lock.held(path, options.lock_timeout, command, options.on_lock_wait) if mutating and not locked else _nothing()
    )
    with guard:
        store = connect(path)
        try:
            tree = source or (work_tree(project.root) if mutating else None)
            yield executor.Context(
                store,
                project.name,
                project.base_image,
                options.actor or actor(),
                command,
                tree.commit if tree else None,
                progress,
                swarm=executor.engine_settings(project),
                root=project.root,
            )
        finally:
            store.close()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def desired_specs(
    project: Project, store: Store, paths: list[Path] | None
) -> tuple[list[DeploySpec], dict[str, dict[str, str]]]:
    """Validated desired state as deploy specs, with each function's secret values."""
    specs, values, _ = desired_state(project, store, paths)
    return specs, values


def desired_state(
    project: Project, store: Store, paths: list[Path] | None
) -> tuple[list[DeploySpec], dict[str, dict[str, str]], DesiredState]:
    """As `desired_specs`, plus the whole desired state (its triggers, views and policies)."""
    result = validate_project(project, paths)
    if not result.ok:
        raise BadInput("the manifests are invalid:\n" + "\n".join(d.render() for d in result.diagnostics))
    # Functions without secrets carry a per-store constant (what the salt's hash was, before the salt left the
    # store); those with secrets an HMAC under the host-local key (read only when some function has secrets).
    none_hash = store.setting("secrets-none-hash", _secrets.token_hex(8))
    key: bytes | None = None
    specs, values = [], {}
    for function in result.state.functions:
        values[function.name] = resolve(function, project.root)
        fingerprint = none_hash
        if function.secrets:
            key = key or fingerprint_key()
            fingerprint = keyed_fingerprint(values[function.name], key)
        specs.append(deploy_spec(function, project.base_image, fingerprint))
    return specs, values, result.state
