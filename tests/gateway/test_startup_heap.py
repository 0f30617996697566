"""A serving gateway keeps what its start-up made out of the cyclic collector's way (gc.freeze): left in the
oldest generation, every full collection walked it all (~30 ms of CPU here, 80-200 ms of wall time under load,
every request and context call in flight stalled meanwhile; one came in a 9,000-call benchmark).

A real `fnctl serve` (an empty project) on 127.0.0.1; a SIGUSR1 handler installed before it starts writes the
process's frozen-object count, asked once the gateway answers /readyz.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from polling import wait_until
from rollout_helpers import free_port

REPO = Path(__file__).resolve().parents[2]

# Runs `fnctl serve` in this process, after installing the handler that reports gc.get_freeze_count().
WRAPPER = """
import gc, runpy, signal, sys

out, address = sys.argv[1], sys.argv[2]


def report(signum, frame):
    with open(out + ".tmp", "w") as f:
        f.write(str(gc.get_freeze_count()))
    import os
    os.replace(out + ".tmp", out)


signal.signal(signal.SIGUSR1, report)
sys.argv = ["fnctl", "serve", "--address", address]
runpy.run_module("fnctl", run_name="__main__")
"""


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.docker
def test_a_serving_gateway_has_frozen_its_start_up_heap(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "manifests").mkdir(parents=True)
    (project / "fnctl.toml").write_text('[project]\nname = "heap"\nmanifests = ["manifests"]\n')
    wrapper, out, port = tmp_path / "serve.py", tmp_path / "frozen", free_port()
    wrapper.write_text(WRAPPER)
    env = os.environ | {"FNCTL_STATE": str(tmp_path / "state.db"), "PYTHONPATH": str(REPO)}
    log = (tmp_path / "serve.log").open("wb")
    gateway = subprocess.Popen(
        [sys.executable, str(wrapper), str(out), f"127.0.0.1:{port}"], cwd=project, env=env, stdout=log, stderr=log
    )
    try:
        wait_until(lambda: gateway.poll() is None and _ready(port), what="the gateway to answer /readyz", timeout=60)
        gateway.send_signal(signal.SIGUSR1)
        frozen = wait_until(lambda: out.read_text() if out.exists() else None, what="the frozen count", timeout=10)
        assert int(frozen) > 10_000, f"only {frozen} objects frozen: the start-up heap is still collected"
    finally:
        gateway.terminate()
        try:
            gateway.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
        log.close()
    assert gateway.returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]
