"""Revision images, content-addressed: source tree + requirements + runtime + base image → one tag.

Each language's files, staging and handler format come from its `fnctl.runtimes.Runtime`; this module builds
the two layers the same way for all. An unchanged function is never rebuilt. `requirements.txt` is installed on the host (pip, wheels for the
image's Python and platform) into the image content and cached by its hash, so no container ever needs
the network to build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fnctl.engine import dockerio
from fnctl.engine.sandbox import LABEL
from fnctl.errors import BuildFailed, EngineUnavailable
from fnctl.runtimes import Runtime, runtime_for
from fnctl.runtimes.python import PYTHON, PYTHON_VERSION

REQUIREMENTS = "requirements.txt"


@dataclass(frozen=True)
class ImageRef:
    tag: str
    content_hash: str
    built: bool  # False when the image was already there


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fnctl"


def runtime_hash(base_id: str, language: Runtime) -> str:
    """Hash of the runtime image's content: its Dockerfile, the runtime and the base image."""
    digest = hashlib.sha256(f"base={base_id};{language.version_key}\0".encode())
    for name in language.runtime_files:
        digest.update(hashlib.sha256((language.runtime_dir() / name).read_bytes()).digest())
    return digest.hexdigest()


def content_hash(source: Path, runtime: str, language: Runtime) -> str:
    """Hash of everything that ends up in a revision image: the runtime image and the code."""
    return hashlib.sha256(f"runtime={runtime}\0code={language.content_key(source)}".encode()).hexdigest()


def image_tag(project: str, function: str, digest: str) -> str:
    return f"fnctl/{project}-{function}:{digest[:16]}"


def ensure_image(
    project: str,
    function: str,
    source: Path,
    base_image: str,
    on_line: Callable[[str], None] = lambda _: None,
    *,
    runtime_name: str = PYTHON.name,
) -> ImageRef:
    """The revision image for `source`, built only if no image with the same content exists; `base_image` is
    the project's (Python) base, `runtime_name` the function's `spec.runtime`."""
    language = runtime_for(runtime_name)
    base_image = language.base_image(base_image)
    base_id = dockerio.image_id(base_image)
    if base_id is None:
        raise EngineUnavailable(_missing_base(base_image, language))
    runtime = ensure_runtime_image(base_image, base_id, on_line, language)
    digest = content_hash(source, runtime, language)
    tag = image_tag(project, function, digest)
    if dockerio.image_id(tag) is not None:
        return ImageRef(tag, digest, built=False)
    with tempfile.TemporaryDirectory(prefix="fnctl-build-") as tmp:
        context = Path(tmp)
        _stage(language, source, context, on_line)
        dockerio.build_image(
            context,
            tag,
            {"RUNTIME": runtime},
            {f"{LABEL}.project": project, f"{LABEL}.function": function, f"{LABEL}.content-hash": digest},
            on_line,
        )
    return ImageRef(tag, digest, built=True)


def _missing_base(base_image: str, language: Runtime) -> str:
    if language.pip_requirements:
        how = (
            "build it offline with `bash scripts/build-base-image.sh` (then FNCTL_BASE_IMAGE=fnctl-base:bookworm), "
            "or set build.baseImage in fnctl.toml"
        )
    else:
        how = "build it offline with `bash scripts/build-node-image.sh` (its tag goes in FNCTL_NODE_BASE_IMAGE)"
    return f"the base image {base_image!r} is not in the engine and cannot be pulled here; {how}"


def ensure_runtime_image(base_image: str, base_id: str, on_line: Callable[[str], None], language: Runtime) -> str:
    """The runtime layer for `base_image` (built once per base and runtime version); returns its tag."""
    tag = f"{language.image_name}:{runtime_hash(base_id, language)[:16]}"
    if dockerio.image_id(tag) is None:
        with tempfile.TemporaryDirectory(prefix="fnctl-runtime-") as tmp:
            for name in language.runtime_files:
                shutil.copy2(language.runtime_dir() / name, Path(tmp, name))
            dockerio.build_image(Path(tmp), tag, {"BASE": base_image}, {f"{LABEL}.runtime": "true"}, on_line)
    return tag


def _stage(language: Runtime, source: Path, context: Path, on_line: Callable[[str], None]) -> None:
    shutil.copy2(language.function_dockerfile(), context / "Dockerfile")
    language.stage(source, context, on_line)
    if not language.pip_requirements:
        return
    deps = context / "deps"
    requirements = source / REQUIREMENTS
    if requirements.is_file():
        shutil.copytree(install_requirements(requirements, on_line), deps)
    else:
        deps.mkdir()


def install_requirements(requirements: Path, on_line: Callable[[str], None]) -> Path:
    """pip-install `requirements` for the image's Python (binary wheels only) into a cache dir keyed by
    the file's hash; returns that dir."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:24]
    target = cache_dir() / "deps" / digest
    if target.is_dir():
        return target
    staging = Path(tempfile.mkdtemp(prefix="deps-", dir=_ensure(cache_dir() / "deps")))
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "--target",
        str(staging),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        "--platform",
        "manylinux2014_x86_64",
        "--platform",
        "linux_x86_64",
        "-r",
        str(requirements),
    ]
    on_line(f"pip install -r {requirements.name} (for Python {PYTHON_VERSION}, cached by hash)")
    done = subprocess.run(command, capture_output=True, text=True, cwd=requirements.parent)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BuildFailed(
            f"installing {requirements} failed (pip exit {done.returncode})",
            detail=(done.stdout + done.stderr).strip()[-4000:],
        )
    try:
        staging.rename(target)
    except OSError:  # another build installed the same requirements meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
