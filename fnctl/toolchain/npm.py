"""The npm boundary: `npm ci` from a package-lock.json, and npm's failures as fnctl's BuildFailed."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from fnctl.errors import BuildFailed

OnLine = Callable[[str], None]
TIMEOUT = 600.0  # a cold cache downloads every package; a dead registry must not hang a build forever
# What a function's dependencies are installed for: the image's platform, whatever the host's is.
TARGET_PLATFORM = ("--os=linux", "--cpu=x64", "--libc=glibc")


def ci(directory: Path, *, production: bool) -> None:
    """`npm ci` in `directory` (package.json + package-lock.json). Never runs a package's install scripts;
    `production`: without devDependencies, and optional dependencies picked for linux-x64."""
    npm = shutil.which("npm")
    if npm is None:
        raise BuildFailed("npm is not installed on this host: run bash scripts/install-node-tools.sh")
    command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    if production:
        command += ["--omit=dev", "--install-links", *TARGET_PLATFORM]  # file: packages copied, not linked
    env = {**os.environ, "npm_config_update_notifier": "false"}
    try:
        done = subprocess.run(command, cwd=directory, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise BuildFailed(f"npm ci in {directory} took longer than {TIMEOUT:.0f}s") from exc
    if done.returncode != 0:
        raise BuildFailed(f"npm ci failed (exit {done.returncode})", detail=(done.stdout + done.stderr).strip()[-4000:])
