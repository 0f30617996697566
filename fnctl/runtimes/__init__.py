"""Language runtimes: how one language's functions are built, checked and started (like pre-commit's
`languages`). One `Runtime` per value of a Function's `spec.runtime`; `engine.images` builds every revision
image through it and never names a language itself.

A revision image is two layers over a base image (see `engine.images`):

- the runtime layer: `runtime_dir()` holds its Dockerfile (built `FROM` `base_image(...)`, given as the build
  argument `BASE`) and the in-container runtime; its tag is `image_name:<hash>`, the hash covering the base
  image's id, `version_key` and the bytes of every file in `runtime_files`;
- the function layer: `function_dockerfile()` (built `FROM` the runtime layer, given as `RUNTIME`) copies the
  build context that `stage` filled: `code/` and `deps/`.

A revision image's content hash is the runtime layer's tag plus `content_key(source)`: everything that makes
two builds of the same source differ must be in one of them (code, lock files, compiler versions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from fnctl.errors import BadInput
from fnctl.runtimes.node import NODEJS, TYPESCRIPT
from fnctl.runtimes.python import PYTHON
from fnctl.toolchain.problems import CodeProblem

OnLine = Callable[[str], None]


class Runtime(Protocol):
    """One language as fnctl builds and runs it."""

    @property
    def name(self) -> str:
        """The manifest's `spec.runtime` value (`python3.11`, `nodejs22`, `typescript`)."""
        ...

    @property
    def image_name(self) -> str:
        """The repository of the runtime layer's tag (`fnctl/runtime` for Python, kept for existing images)."""
        ...

    @property
    def version_key(self) -> str:
        """The language version, hashed into the runtime layer's tag (`python=3.11`)."""
        ...

    @property
    def pip_requirements(self) -> bool:
        """True when `engine.images` installs the source's `requirements.txt` into `deps/` with pip (Python's
        installer lives in the engine); other runtimes fill `deps/` in `stage`."""
        ...

    def base_image(self, configured: str) -> str:
        """The image the runtime layer starts FROM; `configured` is the project's (Python) base image."""
        ...

    def runtime_dir(self) -> Path:
        """The directory holding `runtime_files`."""
        ...

    @property
    def runtime_files(self) -> tuple[str, ...]:
        """The files (in `runtime_dir()`) that make up the runtime layer, the Dockerfile first; all hashed."""
        ...

    def stage_runtime(self, context: Path) -> None:
        """Add what is built from `runtime_files` (already copied into `context`) to the runtime layer's build
        context: Python's bytecode. Derived from the hashed files only, so the layer's tag still covers it."""
        ...

    def function_dockerfile(self) -> Path:
        """The Dockerfile of the function layer."""
        ...

    def handler_problem(self, source: Path, handler: str) -> str | None:
        """Why `handler` cannot be found in `source`, or None; from reading the code, never running it."""
        ...

    def code_problems(self, source: Path, handler: str, on_line: OnLine) -> list[CodeProblem]:
        """Problems of the code itself, for `fnctl validate`, each at its FILE:LINE:COL (type and syntax errors,
        the handler's export, package files); called once `handler_problem` found the handler's file."""
        ...

    def content_key(self, source: Path) -> str:
        """What of `source` (and of the host's toolchain) goes into the image: its hash, for the image's tag."""
        ...

    def stage(self, source: Path, context: Path, on_line: OnLine) -> None:
        """Fill the build context: `context/code` (what lands in /var/task) and `context/deps` (created,
        possibly empty, unless `pip_requirements`). Raise BuildFailed (with the tool's output as `detail`)."""
        ...


RUNTIMES: Mapping[str, Runtime] = {runtime.name: runtime for runtime in (PYTHON, NODEJS, TYPESCRIPT)}


def runtime_for(name: str) -> Runtime:
    """The runtime of a manifest's `spec.runtime` (the schema's enum lists the same names)."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise BadInput(f"unknown runtime {name!r}; fnctl has {', '.join(sorted(RUNTIMES))}") from None
