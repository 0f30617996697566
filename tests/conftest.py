"""Shared test fixtures: the Docker engine and the runtime base image, plus the CI rule.

Under CI=true, tests marked ``docker`` never skip: a missing engine or image is a failure.
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

DEFAULT_BASE_IMAGE = "fnctl-base:bookworm"


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


@pytest.fixture
def start_runtime(tmp_path: Path) -> Iterator[StartRuntime]:
    """The in-container runtime as a local process (tests/runtime_helpers.py), stopped afterwards."""
    yield from runtime_starter(tmp_path)
