"""Revision images, content-addressed: source tree + requirements + runtime + base image → one tag.

An unchanged function is never rebuilt. Its dependencies are installed on the host (`pydeps`: wheels for
the image's Python and every manylinux tag its glibc runs, `imageplatform`) into the image content and cached
by the resolved set, so no container ever needs the network to build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fnctl.engine import dockerio, imageplatform, pydeps
from fnctl.engine.imageplatform import ImagePlatform
from fnctl.engine.sandbox import LABEL
from fnctl.errors import EngineUnavailable
from fnctl.manifest.schemas import data_dir
from fnctl.manifest.source import code_hash, source_files

PYTHON_VERSION = "3.11"
RUNTIME_FILES = ("Dockerfile", "function.Dockerfile", "fnctl_runtime.py")


@dataclass(frozen=True)
class ImageRef:
    tag: str
    content_hash: str
    built: bool  # False when the image was already there


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fnctl"


def runtime_hash(base_id: str) -> str:
    """Hash of the runtime image's content: its Dockerfile, the runtime and the base image."""
    digest = hashlib.sha256(f"base={base_id};python={PYTHON_VERSION}\0".encode())
    for name in RUNTIME_FILES:
        digest.update(hashlib.sha256((data_dir("runtime-image") / name).read_bytes()).digest())
    return digest.hexdigest()


def content_hash(source: Path, runtime: str) -> str:
    """Hash of everything that ends up in a revision image: the runtime image and the code."""
    return hashlib.sha256(f"runtime={runtime}\0code={code_hash(source)}".encode()).hexdigest()


def image_tag(project: str, function: str, digest: str) -> str:
    return f"fnctl/{project}-{function}:{digest[:16]}"


def ensure_image(
    project: str, function: str, source: Path, base_image: str, on_line: Callable[[str], None] = lambda _: None
) -> ImageRef:
    """The revision image for `source`, built only if no image with the same content exists."""
    base_id = dockerio.image_id(base_image)
    if base_id is None:
        raise EngineUnavailable(
            f"the base image {base_image!r} is not in the engine and cannot be pulled here; build it offline "
            "with `bash scripts/build-base-image.sh` (then FNCTL_BASE_IMAGE=fnctl-base:bookworm), or set "
            "build.baseImage in fnctl.toml"
        )
    runtime = ensure_runtime_image(base_image, base_id, on_line)
    digest = content_hash(source, runtime)
    tag = image_tag(project, function, digest)
    if dockerio.image_id(tag) is not None:
        return ImageRef(tag, digest, built=False)
    with tempfile.TemporaryDirectory(prefix="fnctl-build-") as tmp:
        context = Path(tmp)
        _stage(source, context, lambda: imageplatform.probe(base_image, base_id, cache_dir()), on_line)
        dockerio.build_image(
            context,
            tag,
            {"RUNTIME": runtime},
            {f"{LABEL}.project": project, f"{LABEL}.function": function, f"{LABEL}.content-hash": digest},
            on_line,
        )
    return ImageRef(tag, digest, built=True)


def ensure_runtime_image(base_image: str, base_id: str, on_line: Callable[[str], None]) -> str:
    """The runtime layer for `base_image` (built once per base and runtime version); returns its tag."""
    tag = f"fnctl/runtime:{runtime_hash(base_id)[:16]}"
    if dockerio.image_id(tag) is None:
        with tempfile.TemporaryDirectory(prefix="fnctl-runtime-") as tmp:
            for name in ("Dockerfile", "fnctl_runtime.py"):
                shutil.copy2(data_dir("runtime-image") / name, Path(tmp, name))
            dockerio.build_image(Path(tmp), tag, {"BASE": base_image}, {f"{LABEL}.runtime": "true"}, on_line)
    return tag


def _stage(source: Path, context: Path, platform: Callable[[], ImagePlatform], on_line: Callable[[str], None]) -> None:
    shutil.copy2(data_dir("runtime-image") / "function.Dockerfile", context / "Dockerfile")
    code = context / "code"
    for path in source_files(source):
        target = code / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target, follow_symlinks=True)
    code.mkdir(exist_ok=True)
    deps = pydeps.install_dependencies(source, platform, cache_dir(), on_line)
    if deps is not None:
        shutil.copytree(deps, context / "deps")
    else:
        (context / "deps").mkdir()
