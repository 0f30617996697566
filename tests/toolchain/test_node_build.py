"""Node.js and TypeScript functions built into images (real Docker): an unchanged TypeScript function is never
rebuilt (nor recompiled), a changed one is; a TypeScript function with an npm dependency from the registry
is deployed and invoked, its dependencies installed once per lock and taken from the cache after."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from deploy_helpers import Project, cleanup, make_project

from fnctl.engine.images import ensure_image
from fnctl.manifest.project import cache_dir
from fnctl.runtimes.node import DEFAULT_NODE_BASE_IMAGE
from fnctl.toolchain import nodebuild, npmdeps

pytestmark = pytest.mark.docker
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "node"


@pytest.fixture
def node_base(docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch) -> str:
    tag = os.environ.get("FNCTL_NODE_BASE_IMAGE") or DEFAULT_NODE_BASE_IMAGE
    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        pytest.fail(f"the Node base image {tag} is missing; run scripts/build-node-image.sh", pytrace=False)
    monkeypatch.setenv("FNCTL_NODE_BASE_IMAGE", tag)
    return tag


@pytest.fixture
def project(tmp_path: Path, docker_client: docker.DockerClient, base_image: str, node_base: str) -> Iterator[Project]:
    made = make_project(tmp_path / "project", docker_client, base_image)
    made.env["FNCTL_NODE_BASE_IMAGE"] = node_base
    try:
        yield made
    finally:
        cleanup(made)


def test_an_unchanged_typescript_function_is_not_rebuilt(
    project: Project, base_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = project.root / "functions" / "ts"
    source.mkdir(parents=True)
    (source / "main.ts").write_text("export const handler = async (e: { n: number }) => ({ twice: e.n * 2 });\n")
    first = ensure_image(project.name, "ts", source, base_image, runtime_name="typescript")
    assert first.built

    def no_compile(*_: object) -> None:
        raise AssertionError("an unchanged function was compiled again")

    monkeypatch.setattr(nodebuild, "compile_typescript", no_compile)
    again = ensure_image(project.name, "ts", source, base_image, runtime_name="typescript")
    assert (again.tag, again.built) == (first.tag, False)

    monkeypatch.undo()
    (source / "main.ts").write_text("export const handler = async (e: { n: number }) => ({ thrice: e.n * 3 });\n")
    changed = ensure_image(project.name, "ts", source, base_image, runtime_name="typescript")
    assert changed.built and changed.tag != first.tag


def _deploy_with_dependency(project: Project) -> Path:
    source = project.root / "functions" / "dep"
    shutil.copytree(FIXTURES / "with-dependency", source)
    (project.root / "manifests" / "dep.yaml").write_text(
        textwrap.dedent("""\
            apiVersion: fnctl/v1
            kind: Function
            metadata: {name: dep}
            spec:
              runtime: typescript
              source: ../functions/dep
              handler: src/main.ts:handler
              limits: {timeout: 5s, memory: 64Mi}
              scaling: {minInstances: 1, maxInstances: 1}
              healthCheck:
                - event: {words: health-check}
                  expect: {camel: healthCheck}
            """)
    )
    return source


def test_typescript_with_an_npm_dependency_is_deployed_and_invoked(project: Project, tmp_path: Path) -> None:
    source = _deploy_with_dependency(project)
    project.ok("apply")
    assert project.invoke("dep", {"words": "stored-functions-next-to-data"}) == {"camel": "storedFunctionsNextToData"}
    key = npmdeps.dependencies_key(source)
    assert key is not None
    assert (cache_dir() / "npm-deps" / key / "node_modules" / "camelcase" / "package.json").is_file()

    # A new revision of the code with the same lock: the dependencies come from the cache, npm never runs
    # (an npm that fails is first on the PATH).
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "npm").write_text("#!/bin/sh\necho 'npm ran' >&2\nexit 1\n")
    (fake / "npm").chmod(0o755)
    main = source / "src" / "main.ts"
    main.write_text(main.read_text() + 'console.log("revision 2");\n')
    project.ok("apply", env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert project.invoke("dep", {"words": "a-b"}) == {"camel": "aB"}
    assert project.live_revision("dep") == 2
