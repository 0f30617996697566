"""Revision images, content-addressed: source tree + requirements + runtime + base image → one tag.

Each language's files, staging and handler format come from its `fnctl.runtimes.Runtime`; this module builds
the two layers the same way for all. An unchanged function is never rebuilt. A Python function's dependencies
are installed on the host (`pydeps`: wheels for the image's Python and every manylinux tag its glibc runs,
`imageplatform`) into the image content and cached by the resolved set, so no container ever needs the network
to build.
"""

from __future__ import annotations

import hashlib
import importlib.util
import py_compile
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fnctl.engine import dockerio, imageplatform, pydeps
from fnctl.engine.imageplatform import ImagePlatform
from fnctl.engine.sandbox import LABEL
from fnctl.errors import EngineUnavailable
from fnctl.manifest.project import cache_dir
from fnctl.runtimes import Runtime, runtime_for
from fnctl.runtimes.python import PYTHON


@dataclass(frozen=True)
class ImageRef:
    tag: str
    content_hash: str
    built: bool  # False when the image was already there


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
        _stage(language, source, context, lambda: imageplatform.probe(base_image, base_id, cache_dir()), on_line)
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
            _precompile(Path(tmp))
            dockerio.build_image(Path(tmp), tag, {"BASE": base_image}, {f"{LABEL}.runtime": "true"}, on_line)
    return tag


# Where the runtime image's Dockerfile puts its Python runtime (runtime-image/Dockerfile): its bytecode is
# compiled for that path.
PYTHON_RUNTIME_PATH = "/opt/fnctl/runtime.py"


def _precompile(context: Path) -> None:
    """The bytecode of a Python runtime layer's runtime (`__pycache__/runtime.<tag>.pyc`, checked against the
    source by its hash), so that an instance's interpreter does not compile the ~1,700 lines at every start:
    ~22 ms of CPU here, on every cold start's path. Compiled by this interpreter: it serves an image whose
    Python has the same version (3.11, like fnctl's), and is ignored (the source compiled as before) by any other."""
    source = context / "fnctl_runtime.py"
    if not source.is_file():
        return  # a runtime of another language
    cache = context / "__pycache__"
    cache.mkdir(exist_ok=True)
    target = cache / Path(importlib.util.cache_from_source("runtime.py")).name
    py_compile.compile(
        str(source),
        cfile=str(target),
        dfile=PYTHON_RUNTIME_PATH,
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
    )


def _stage(
    language: Runtime,
    source: Path,
    context: Path,
    platform: Callable[[], ImagePlatform],
    on_line: Callable[[str], None],
) -> None:
    shutil.copy2(language.function_dockerfile(), context / "Dockerfile")
    language.stage(source, context, on_line)
    if not language.pip_requirements:
        return
    deps = pydeps.install_dependencies(source, platform, cache_dir(), on_line)
    if deps is not None:
        shutil.copytree(deps, context / "deps")
    else:
        (context / "deps").mkdir()
