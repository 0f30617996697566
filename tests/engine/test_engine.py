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
