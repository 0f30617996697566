"""The Docker engine runs the offline-built base image under fnctl's hardened container settings, and the
runtime layer built on it."""

from __future__ import annotations

import docker
import pytest
from polling import wait_until

from fnctl.engine import dockerio, images
from fnctl.runtimes.python import PYTHON


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
def test_the_runtime_image_starts_its_runtime_from_bytecode_compiled_on_the_host(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """The runtime layer carries the runtime's bytecode, and its entrypoint reads it instead of compiling the
    source at every start (a script given by path always is compiled: ~22 ms of each cold start)."""
    base_id = dockerio.image_id(base_image)
    assert base_id is not None
    tag = images.ensure_runtime_image(base_image, base_id, lambda line: None, PYTHON)
    entrypoint = docker_client.images.get(tag).attrs["Config"]["Entrypoint"]
    assert entrypoint[0] == "python3"
    # The image's own entrypoint, verbose (-v: the interpreter says where each module's code came from).
    container = docker_client.containers.run(
        tag, entrypoint=[entrypoint[0], "-v", *entrypoint[1:]], network_mode="none", read_only=True, detach=True
    )
    try:
        wait_until(
            lambda: b"import 'fnctl_runtime'" in container.logs(stderr=True),
            what="the runtime to be loaded",
            timeout=60,
        )
        output = container.logs(stderr=True).decode()
    finally:
        container.remove(force=True)
    assert "# code object from '/opt/fnctl/__pycache__/fnctl_runtime.cpython-311.pyc'" in output, output[-2000:]


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
