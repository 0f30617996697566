"""The event loop `fnctl serve` runs on: uvloop, a dependency on Linux (issue 18: ~10 % less gateway CPU a
request than asyncio's loop), named in the gateway's `listening` event.

A real `fnctl serve` subprocess on 127.0.0.1 in an empty project: no function, so no Docker engine is needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rollout_helpers import free_port


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop has no Windows build: asyncio's loop there")
def test_the_gateway_runs_on_uvloop(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "manifests").mkdir()
    (tmp_path / "fnctl.toml").write_text(
        f'[project]\nname = "loop"\nmanifests = ["manifests"]\n\n[gateway]\naddress = "127.0.0.1:{port}"\n'
    )
    env = os.environ | {"FNCTL_STATE": str(tmp_path / "state" / "state.db")}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "fnctl", "serve"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert gateway.stderr is not None
        listening = None
        for line in gateway.stderr:  # ends when the process does: a gateway that never listens fails below
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("message") == "listening":
                listening = event
                break
        assert listening is not None, "the gateway never listened"
        assert listening["loop"] == "uvloop"
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.communicate(timeout=60)
