"""Shared test fixtures: the Docker engine and the runtime base image, plus the CI rule.

A test that needs the engine is a ``docker`` test whether or not it says so: using an engine fixture
(`docker_client`, `base_image`, directly or through another fixture) or living in a folder named ``docker``
marks it (`pytest_collection_modifyitems`); `@pytest.mark.docker` and a module's `pytestmark` still work for a
test that reaches the engine another way (a `fnctl` subprocess). Every other test runs with an engine address
that answers nothing (DOCKER_HOST, inherited by the processes it starts), so a test that reaches the engine
without being marked fails instead of quietly depending on it. Under CI=true, docker tests never skip: a
missing engine or image is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import NoReturn

import docker
import docker.errors
import pytest
from runtime_helpers import StartRuntime, runtime_starter

from fnctl.manifest import fullchecks, slowchecks

# pytester: tests/test_markers.py runs sessions of its own under this file's rules; pgserver: a real PostgreSQL
pytest_plugins = ["pytester", "pgserver", "docbackend"]  # docbackend: the document store's backends

DEFAULT_BASE_IMAGE = "fnctl-base:bookworm"
ENGINE_FIXTURES = frozenset({"docker_client", "base_image"})
# Tests call the manifest and data packages directly, as `fnctl serve` does: with the full slow checks.
slowchecks.install(fullchecks.CHECKS)

NO_ENGINE = "unix:///nonexistent/fnctl-tests-unmarked-no-engine.sock"  # what an unmarked test reaches


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere."""
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: docker tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        error = exc
    _unavailable(f"no Docker engine answers: {error}; run scripts/setup.sh")


@pytest.fixture(scope="session")
def base_image(docker_client: docker.DockerClient) -> str:
    tag = os.environ.get("FNCTL_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    try:
        docker_client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    _unavailable(f"base image {tag} is missing; run scripts/build-base-image.sh")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI=true, turn any skip of a docker-marked test (skipif, pytest.skip, ...) into a failure."""
    report = yield
    if (
        _in_ci()
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("docker") is not None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"docker test skipped under CI=true, which is not allowed: {reason}"
    return report


def needs_engine(item: pytest.Item) -> bool:
    """Whether `item` is a docker test by what it uses or where it lives."""
    return bool(ENGINE_FIXTURES & set(getattr(item, "fixturenames", ()))) or "docker" in item.path.parent.parts


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("docker") is None and needs_engine(item):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(autouse=True)
def _engine_only_for_docker_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An unmarked test (and whatever it starts) finds no engine: needing one then fails it, loudly."""
    if request.node.get_closest_marker("docker") is None:
        monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)  # read by every engine call (engine.dockerapi)
    yield


@pytest.fixture
def start_runtime(tmp_path: Path) -> Iterator[StartRuntime]:
    """The in-container runtime as a local process (tests/runtime_helpers.py), stopped afterwards."""
    yield from runtime_starter(tmp_path)
