"""`engine` and `[swarm]` in fnctl.toml: read, checked against the schema, and refused by the commands that
do not drive Swarm services yet (exit 2, nothing started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fnctl.errors import BadInput
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


def test_apply_refuses_swarm_with_exit_2(tmp_path: Path) -> None:
    root = project(tmp_path, 'engine = "swarm"')
    (root / "manifests").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "fnctl", "apply", "--state", str(tmp_path / "state.db")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert 'engine = "swarm"' in done.stderr and "docs/swarm.md" in done.stderr
    assert "Traceback" not in done.stderr
