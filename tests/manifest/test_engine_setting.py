"""`engine` and `[swarm]` in fnctl.toml: read, checked against the schema; the commands that drive Swarm
say so clearly when no manager answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fnctl.errors import BadInput, EngineUnavailable
from fnctl.manifest.project import SwarmSettings, load_project


def project(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "fnctl.toml").write_text(f'{extra}\n[project]\nname = "p"\n' if extra.startswith("engine") else
                                         f'[project]\nname = "p"\n{extra}\n')  # fmt: skip
    return tmp_path


def test_local_is_the_default(tmp_path: Path) -> None:
    loaded = load_project(project(tmp_path, ""))
    assert loaded.engine == "local"


def test_swarm_settings_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    root = project(tmp_path, 'engine = "swarm"\n[swarm]\nnode = "unix:///run/n2.sock"\nmaxPerNode = 1\n')
    loaded = load_project(root)
    assert loaded.engine == "swarm"
    assert loaded.swarm == SwarmSettings("/var/run/docker.sock", "/run/n2.sock", "/run/fnctl/swarm", 1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('engine = "kubernetes"', "engine"),
        ('engine = "swarm"\n[swarm]\nmanager = "tcp://10.0.0.1:2375"', "swarm.manager"),
        ('engine = "swarm"\n[swarm]\ninstanceRoot = "relative"', "swarm.instanceRoot"),
        ('engine = "swarm"\n[swarm]\nreplicas = 3', "swarm"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        load_project(project(tmp_path, extra))


@pytest.mark.parametrize("command", [["apply"], ["status"]])
def test_swarm_without_a_manager_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    """apply and status drive Swarm services now: with no manager answering they say so (the engine's exit
    code, the socket named), and start nothing on the local engine."""
    root = project(tmp_path, 'engine = "swarm"\n[swarm]\nmanager = "unix:///nonexistent/docker.sock"')
    (root / "manifests").mkdir()
    (root / "fn").mkdir()
    (root / "fn" / "main.py").write_text("def handler(event, context):\n    return 1\n")
    (root / "manifests" / "fn.yaml").write_text(
        "apiVersion: fnctl/v1\nkind: Function\nmetadata: {name: fn}\n"
        "spec: {runtime: python3.11, source: ../fn, handler: main.handler}\n"
    )
    state = tmp_path / "state.db"
    if command == ["status"]:
        subprocess.run([sys.executable, "-m", "fnctl", "apply", "--state", str(state)], cwd=root, timeout=60,
                       capture_output=True, check=False)  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "fnctl", *command, "--state", str(state)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == int(EngineUnavailable.exit_code), done.stdout + done.stderr
    assert "/nonexistent/docker.sock" in done.stderr
    assert "Traceback" not in done.stderr
