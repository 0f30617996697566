"""The Docker engine runs the offline-built base image under fnctl's hardened container settings."""

from __future__ import annotations

import docker
import pytest


@pytest.mark.docker
def test_base_image_runs_python_311_hardened(docker_client: docker.DockerClient, base_image: str) -> None:
    container = docker_client.containers.run(
        base_image,
        ["python3", "-c", "import sys; print(sys.version_info[:2])"],
        user="65534:65534",
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        detach=True,
    )
    try:
        status = container.wait(timeout=60)
        output = container.logs(stdout=True, stderr=True).decode()
        assert status["StatusCode"] == 0, output
        assert output.strip() == "(3, 11)"
    finally:
        container.remove(force=True)


@pytest.mark.docker
def test_base_image_has_no_set_uid_or_set_gid_file(docker_client: docker.DockerClient, base_image: str) -> None:
    """Nothing in a sandbox can gain privileges through a set-uid file, even where no-new-privileges cannot be
    asked of the engine (a Swarm service, docs/swarm.md): scripts/build-base-image.sh leaves none."""
    found = docker_client.containers.run(
        base_image,
        ["find", "/", "-xdev", "-type", "f", "-perm", "/6000"],
        user="0",
        network_mode="none",
        read_only=True,
        remove=True,
    )
    assert found.decode().split() == []
