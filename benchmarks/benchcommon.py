"""What the benchmarks share: removing every container and image a benchmark project left on the engine."""

from __future__ import annotations

import shutil
from pathlib import Path


def remove_project(project: str) -> None:
    """Every container and image labelled with `project`, and the instances' socket directories (only where
    fnctl creates them)."""
    import docker

    from fnctl.engine.instances import runtime_root

    client = docker.from_env(timeout=120)
    for container in client.api.containers(all=True, filters={"label": f"io.fnctl.project={project}"}):
        client.api.remove_container(container["Id"], force=True)
        socket_dir = (container.get("Labels") or {}).get("io.fnctl.socket-dir", "")
        if socket_dir and Path(socket_dir).parent == runtime_root():
            shutil.rmtree(socket_dir, ignore_errors=True)
    for image in client.api.images(filters={"label": f"io.fnctl.project={project}"}):
        try:
            client.api.remove_image(image["Id"], force=True)
        except docker.errors.APIError:
            pass  # a parent of another image still there, or already gone
