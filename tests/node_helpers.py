"""The Node.js 22 binary that scripts/build-node-image.sh pins and leaves on the host (beside the image it
builds), for tests and benchmarks that run the Node runtime as a local process."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_RUNTIME = ROOT / "runtime-image" / "node" / "runtime.mjs"


def node_binary() -> str:
    """The path of the pinned node binary (made by scripts/build-node-image.sh, which scripts/setup.sh runs).

    Not checked here: the module that asks is imported whole, and only the tests that start it need it."""
    script = (ROOT / "scripts" / "build-node-image.sh").read_text()
    found = re.search(r"^NODE_VERSION=(\S+)$", script, re.M)
    assert found is not None, "no NODE_VERSION= in scripts/build-node-image.sh"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return str(cache / "fnctl" / "node" / f"node-{found.group(1)}" / "bin" / "node")
