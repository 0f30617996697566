"""Shared helpers of the deploy tests: a throw-away fnctl project in a temporary folder, the CLI run as a
subprocess against it, and the engine's view of what that project left behind.

Every project gets its own name (``t-<random>``) and its own state store, so tests never see each other's
containers; teardown removes the containers and images labelled for the project.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from pgserver import StateFactory
from polling import wait_until

from fnctl.state.auditlog import AuditFilter, audit_records
from fnctl.state.location import StateLocation
from fnctl.state.store import Store, connect

REPO = Path(__file__).resolve().parents[1]

# One handler source for every test: the image of a function is content-addressed, so equal code means
# the engine's build cache answers. `VERSION` is the only line that changes between "code versions".
HANDLER = """\
import hashlib
import os

VERSION = {version!r}
print("loaded version", VERSION, flush=True)  # outside any invocation: the container's own log


def handler(event, context):
    if VERSION == "broken":
        print("probe-failure-marker: the database is unreachable")
        raise RuntimeError("broken on purpose")
    context.logger.info("handled %s", event.get("name"))
    token = os.environ.get("API_TOKEN", "")
    return {{"version": VERSION, "greeting": os.environ.get("GREETING", ""), "name": event.get("name"),
            "token_sha256": hashlib.sha256(token.encode()).hexdigest() if token else None}}
"""


def until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    return wait_until(condition, what=what, timeout=timeout)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Project:
    """A fnctl project in `root`, deployed with its own state store, driven through the CLI. `state` is the
    SQLite file, or with `url` set the PostgreSQL database's host-local anchor (the lock file beside it)."""

    root: Path
    name: str
    state: Path
    base_image: str
    client: docker.DockerClient
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None

    @property
    def location(self) -> StateLocation:
        return StateLocation(self.state, self.url)

    # ---- writing the project ----

    def own_function(self, directory: str, code: str, manifest: str) -> None:
        """A test's own function: `code` as functions/<directory>/main.py, `manifest` (its documents, which
        name that source) as manifests/<directory>.yaml."""
        (self.root / "functions" / directory).mkdir(parents=True, exist_ok=True)
        (self.root / "functions" / directory / "main.py").write_text(code, encoding="utf-8")
        (self.root / "manifests" / f"{directory}.yaml").write_text(manifest, encoding="utf-8")

    def function(
        self,
        name: str,
        *,
        version: str = "one",
        env: dict[str, str] | None = None,
        min_instances: int = 1,
        memory: str = "64Mi",
        secret: bool = False,
        requirements: str | None = None,
        source: str | None = None,
    ) -> None:
        """Write (or rewrite) function `name`: its code directory and its manifest."""
        code = self.root / "functions" / (source or name)
        code.mkdir(parents=True, exist_ok=True)
        (code / "main.py").write_text(HANDLER.format(version=version), encoding="utf-8")
        if requirements is not None:
            (code / "requirements.txt").write_text(requirements, encoding="utf-8")
        elif (code / "requirements.txt").exists():
            (code / "requirements.txt").unlink()
        env_yaml = json.dumps(env if env is not None else {"GREETING": "hi"})
        secrets_yaml = "\n  secrets: [{name: API_TOKEN, fromEnv: TEST_API_TOKEN}]" if secret else ""
        manifest = (
            textwrap.dedent(f"""\
            apiVersion: fnctl/v1
            kind: Function
            metadata: {{name: {name}}}
            spec:
              runtime: python3.11
              source: ../functions/{source or name}
              handler: main.handler
              env: {env_yaml}
              limits: {{timeout: 5s, memory: {memory}}}
              scaling: {{minInstances: {min_instances}, maxInstances: 2}}
              healthCheck:
                - event: {{name: probe}}
            """)
            + secrets_yaml
            + "\n"
        )
        (self.root / "manifests" / f"{name}.yaml").write_text(manifest, encoding="utf-8")

    def remove_function(self, name: str) -> None:
        (self.root / "manifests" / f"{name}.yaml").unlink()

    # ---- running fnctl ----

    def fnctl(self, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Result:
        done = subprocess.run(
            [sys.executable, "-m", "fnctl", *args],
            cwd=self.root,
            env=self.environ(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return (
            os.environ
            | {
                "FNCTL_BASE_IMAGE": self.base_image,
                "FNCTL_STATE": self.location.to_arg(),
                "COLUMNS": "200",
                "NO_COLOR": "1",
            }
            | self.env
            | (extra or {})
        )

    def ok(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """Run fnctl and require exit 0."""
        result = self.fnctl(*args, env=env)
        assert result.code == 0, f"fnctl {' '.join(args)} exited {result.code}:\n{result.text}"
        return result

    def invoke(self, function: str, event: dict[str, Any] | None = None) -> dict[str, Any]:
        result = self.ok("invoke", function, "-d", json.dumps(event or {}))
        value: dict[str, Any] = json.loads(result.out)
        return value

    @contextmanager
    def store(self) -> Iterator[Store]:
        store = connect(self.location)
        try:
            yield store
        finally:
            store.close()

    # ---- what the engine and the store show ----

    def containers(self, function: str | None = None) -> list[Any]:
        labels = [f"io.fnctl.project={self.name}"] + ([f"io.fnctl.function={function}"] if function else [])
        # ignore_removed: a container the code under test removes between the engine's list and the SDK's
        # inspect of it is gone, not an error (pull mode heals and drains while tests poll this)
        return list(self.client.containers.list(all=True, filters={"label": labels}, ignore_removed=True))

    def live_revision(self, function: str) -> int:
        with self.store() as store:
            weights = store.routes()[function]
        assert list(weights.values()) == [100], weights
        return next(iter(weights))

    def images(self, function: str) -> list[str]:
        """The image of each revision of `function`, in order."""
        with self.store() as store:
            return [revision.image for revision in store.revisions(function)]

    def instance_containers(self, function: str) -> dict[str, str]:
        """Instance ID → container ID, as the store records them."""
        with self.store() as store:
            return {row.id: row.container_id or "" for row in store.instances(function)}

    def assert_consistent(self) -> None:
        """What every command must leave: each routed revision ready with running, answering instances, no
        container the store does not know, no pending revision, no instance row half-way."""
        with self.store() as store:
            routes, rows, revisions = store.routes(), store.instances(), store.revisions()
            audit = audit_records(store, AuditFilter(), limit=10_000)
        engine = {c.labels.get("io.fnctl.instance"): c for c in self.containers()}
        assert set(engine) == {row.id for row in rows}, "containers and instance rows differ"
        for row in rows:
            assert row.state.value == "ready" and row.container_id, row
            assert engine[row.id].id == row.container_id and engine[row.id].status == "running", row
            # in the routing table: with traffic, or kept warm at 0% (a preview, or during scaleDownDelay)
            assert row.revision in routes.get(row.function, {}), f"instance of an unrouted revision: {row}"
        for function, weights in routes.items():
            for number, weight in weights.items():
                revision = next(r for r in revisions if r.function == function and r.number == number)
                # a preview (a branch's code, pinned requests only) is routed at 0%, never with traffic
                allowed = ("ready", "preview") if weight == 0 else ("ready",)
                assert revision.status.value in allowed and revision.image, revision
                assert any(r.function == function and r.revision == number for r in rows), f"{function} r{number}"
        assert not [r for r in revisions if r.status.value == "pending"]
        for entry in audit:
            assert entry.actor and entry.command and entry.action and entry.at > 0, entry
            assert entry.outcome in ("ok", "failed"), entry


def make_project(
    root: Path, client: docker.DockerClient, base_image: str, states: StateFactory | None = None
) -> Project:
    """A new project in `root`, its state on `states`' backend (the `project_states` fixture), else SQLite."""
    name = f"t-{secrets.token_hex(4)}"
    (root / "manifests").mkdir(parents=True)
    (root / "fnctl.toml").write_text(f'[project]\nname = "{name}"\nmanifests = ["manifests"]\n', encoding="utf-8")
    location = (states or StateFactory(None)).new(root.parent / f"{root.name}-state")
    return Project(root, name, location.path, base_image, client, url=location.url)


def cleanup(project: Project) -> None:
    """Remove what the project left in the engine: containers (and their socket dirs), then images."""
    for container in project.containers():
        socket_dir = container.labels.get("io.fnctl.socket-dir")
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)
    for _ in range(3):  # children first: a parent with dependent images is refused, then goes next round
        left = project.client.images.list(filters={"label": f"io.fnctl.project={project.name}"})
        for image in left:
            try:
                project.client.images.remove(image.id, force=True)
            except docker.errors.APIError:
                pass  # a parent of another image still there, or already gone
        if not left:
            break
