"""Throw-away fnctl projects for the Docker-backed sandbox tests, and the clean-up that goes with them.

A project is written into a temporary directory with a random name (`t-<hex>`), so parallel runs never
share containers or images; `cleanup` removes every container and image carrying that name.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import pytest
import yaml
from polling import wait_until as poll

from fnctl.engine import images, instances
from fnctl.engine.instances import Instance
from fnctl.engine.sandbox import labels
from fnctl.manifest.model import Function
from fnctl.manifest.project import Project, load_project
from fnctl.manifest.validate import validate_paths

HERE = Path(__file__).resolve().parent
PROBES = HERE / "probes"
WITHDEP = HERE / "withdep"
# Written at test time rather than kept in the repository, where it would trip every tool that parses code.
BROKEN_SYNTAX = "def oops(:\n    return 1\n"
MIB = 1 << 20
T = TypeVar("T")


def project_name() -> str:
    return f"t-{secrets.token_hex(4)}"


def write_project(root: Path, name: str, base_image: str, functions: Mapping[str, Mapping[str, Any]]) -> Project:
    """A project at `root` whose functions (name → spec fields) run code from functions/probes by default."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "fnctl.toml").write_text(f'[project]\nname = "{name}"\n\n[build]\nbaseImage = "{base_image}"\n')
    probes = root / "functions" / "probes"
    shutil.copytree(PROBES, probes, ignore=shutil.ignore_patterns("__pycache__"))
    (probes / "broken_syntax.py").write_text(BROKEN_SYNTAX)
    manifests = root / "manifests"
    manifests.mkdir()
    for function, fields in functions.items():
        spec = {"runtime": "python3.11", "source": "../functions/probes", **fields}
        document = {"apiVersion": "fnctl/v1", "kind": "Function", "metadata": {"name": function}, "spec": spec}
        (manifests / f"{function}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return load_project(root)


@contextmanager
def throwaway(client: docker.DockerClient) -> Iterator[str]:
    """A fresh project name; every container and image carrying it is removed on the way out."""
    name = project_name()
    try:
        yield name
    finally:
        cleanup(client, name, images=True)


def project_fixture(folder: str, functions: Mapping[str, Mapping[str, Any]]) -> object:
    """A module's `project` fixture: a throwaway project of these probe functions, written under `folder`.

    Assign it to the name `project` in the test module (pytest finds fixtures among a module's names)."""

    @pytest.fixture(scope="module")
    def project(
        tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, base_image: str
    ) -> Iterator[Project]:
        with throwaway(docker_client) as name:
            yield write_project(tmp_path_factory.mktemp(folder) / "project", name, base_image, functions)

    return project


def probes_tag(project: Project, function: str = "probes") -> str:
    """The tag of the image built from the project's functions/probes, tagged for `function`."""
    return images.ensure_image(project.name, function, project.root / "functions" / "probes", project.base_image).tag


Start = Callable[..., Instance]


@contextmanager
def starter(project: Project, image: str, revision: str) -> Iterator[Start]:
    """`start(function, **secret_values)` runs an instance of a project function from `image`; each one it
    started is killed on the way out."""
    started: list[Instance] = []

    def start(function: str, **secret_values: str) -> Instance:
        instance = instances.start(
            find_function(project, function),
            image=image,
            revision=revision,
            labels=labels(project.name, function),
            secret_values=secret_values,
        )
        started.append(instance)
        return instance

    try:
        yield start
    finally:
        for instance in started:
            instances.kill(instance)


def start_fixture(revision: str) -> object:
    """A module's `start` fixture: `starter` for its `project` from its `probes_image` fixture's image."""

    @pytest.fixture
    def start(project: Project, probes_image: str) -> Iterator[Start]:
        with starter(project, probes_image, revision) as start_instance:
            yield start_instance

    return start


def leftovers_fixture() -> object:
    """A module's autouse fixture: after each test that used `project`, every container of it is gone, whatever
    the test did."""

    @pytest.fixture(autouse=True)
    def _no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
        yield
        if "project" in request.fixturenames:
            cleanup(request.getfixturevalue("docker_client"), request.getfixturevalue("project").name, images=False)

    return _no_leftovers


def answers(instance: Instance, event: Any = None) -> Any:
    """The result of a normal invocation, failing the test if there is none."""
    outcome = instances.invoke(instance, {"probe": "ok"} if event is None else event)
    assert outcome.ok, f"{outcome.failure}: {outcome.message}\n{outcome.traceback}"
    return outcome.result


def logged(name: str, logs: str) -> int:
    """The number a probe printed as `name=N` before it failed."""
    found = re.search(rf"{name}=(\d+)", logs)
    assert found is not None, f"no {name}= in the logs: {logs!r}"
    return int(found.group(1))


def removed(client: docker.DockerClient, instance: Instance) -> None:
    """The instance's container goes, and its socket directory with it."""
    wait_until(lambda: container_gone(client, instance.container_id), what="the instance's container to go")
    assert not instance.socket_dir.exists()


def find_function(project: Project, name: str) -> Function:
    """The function `name` of the project's manifests, validated as `fnctl apply` would."""
    result = validate_paths(project)
    assert result.ok, [d.render() for d in result.diagnostics]
    return next(f for f in result.state.functions if f.name == name)


def build_wheel(workdir: Path) -> Path:
    """Build the `tinydep` wheel (pure Python, no network, no build tools) with `pip wheel`; returns its dir.

    The package carries its own minimal PEP 517 backend, so pip needs neither setuptools nor wheel.
    """
    package = workdir / "tinydep-src"
    (package / "tinydep").mkdir(parents=True)
    (package / "tinydep" / "__init__.py").write_text('def shout(text):\n    return text.upper() + "!"\n')
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
    (package / "backend.py").write_text(
        textwrap.dedent("""
        import base64, hashlib, os, zipfile

        NAME, VERSION = "tinydep", "1.0"


        def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
            dist = f"{NAME}-{VERSION}.dist-info"
            with open(os.path.join(NAME, "__init__.py"), "rb") as source:
                files = {
                    f"{NAME}/__init__.py": source.read(),
                    f"{dist}/METADATA": f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n".encode(),
                    f"{dist}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: fnctl-tests\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
                }
            name = f"{NAME}-{VERSION}-py3-none-any.whl"
            record = []
            with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
                for path, data in files.items():
                    wheel.writestr(path, data)
                    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                    record.append(f"{path},sha256={digest},{len(data)}")
                wheel.writestr(f"{dist}/RECORD", "\\n".join(record + [f"{dist}/RECORD,,"]) + "\\n")
            return name
    """)
    )
    wheels = workdir / "wheels"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-build-isolation",
            "--no-index",
            "--no-deps",
            "--wheel-dir",
            str(wheels),
            str(package),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(wheels.glob("tinydep-1.0-py3-none-any.whl")), "pip wheel produced no tinydep wheel"
    return wheels


def run_cli(
    project: Project, *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m fnctl ARGS` in the project's directory, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "fnctl", *args],
        cwd=project.root,
        input=stdin if stdin is not None else "",
        env={**os.environ, "FNCTL_BASE_IMAGE": project.base_image, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def wait_until(condition: Callable[[], T | None], *, what: str, timeout: float = 15.0) -> T:
    return poll(condition, what=what, timeout=timeout)


def container_gone(client: docker.DockerClient, container_id: str) -> bool:
    try:
        client.api.inspect_container(container_id)
    except docker.errors.NotFound:
        return True
    return False


def project_containers(client: docker.DockerClient, project: str) -> list[dict[str, Any]]:
    return list(client.api.containers(all=True, filters={"label": f"io.fnctl.project={project}"}))


def cleanup(client: docker.DockerClient, project: str, *, images: bool) -> None:
    """Kill every container of `project` (and its socket directory); with `images`, remove its images too."""
    for container in project_containers(client, project):
        socket_dir = (container.get("Labels") or {}).get("io.fnctl.socket-dir")
        try:
            client.api.remove_container(container["Id"], force=True)
        except docker.errors.NotFound:
            pass
        if socket_dir and Path(socket_dir).parent.name == "fnctl":
            shutil.rmtree(socket_dir, ignore_errors=True)
    if images:
        for image in client.api.images(filters={"label": f"io.fnctl.project={project}"}):
            try:
                client.api.remove_image(image["Id"], force=True)
            except docker.errors.NotFound:
                pass
