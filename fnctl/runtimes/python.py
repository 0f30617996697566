"""Python 3.11: the runtime layer is runtime-image/ (Dockerfile + fnctl_runtime.py), handlers are
`module.attr` or `path/file.py:attr`, dependencies come from `requirements.txt` (installed by the engine)."""

from __future__ import annotations

import py_compile
import sys
from dataclasses import dataclass
from pathlib import Path

from fnctl.manifest.schemas import data_dir
from fnctl.manifest.source import code_hash
from fnctl.manifest.sourcechecks import handler_problem
from fnctl.runtimes.files import OnLine, copy_code
from fnctl.toolchain.problems import CodeProblem

PYTHON_VERSION = "3.11"


@dataclass(frozen=True)
class PythonRuntime:
    name: str = f"python{PYTHON_VERSION}"
    image_name: str = "fnctl/runtime"
    version_key: str = f"python={PYTHON_VERSION}"
    pip_requirements: bool = True
    runtime_files: tuple[str, ...] = ("Dockerfile", "function.Dockerfile", "fnctl_runtime.py", "launch.py")

    def base_image(self, configured: str) -> str:
        return configured

    def runtime_dir(self) -> Path:
        return data_dir("runtime-image")

    def stage_runtime(self, context: Path) -> None:
        """The runtime's bytecode beside its source, compiled here when this Python is the image's (3.11 has one
        bytecode format): an instance then loads it instead of compiling ~1,800 lines at every start, which
        left ~3.5 MiB of the compiler's memory in every idle instance (docs/runtime.md#memory). Unchecked-hash:
        the image never compares it with the source's timestamp, which COPY need not keep."""
        cache = context / "__pycache__"
        cache.mkdir(exist_ok=True)  # empty when this Python cannot compile for the image: it compiles itself
        if f"{sys.version_info[0]}.{sys.version_info[1]}" == PYTHON_VERSION:
            py_compile.compile(
                str(context / "fnctl_runtime.py"),
                cfile=str(cache / f"fnctl_runtime.{sys.implementation.cache_tag}.pyc"),
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )

    def function_dockerfile(self) -> Path:
        return self.runtime_dir() / "function.Dockerfile"

    def handler_problem(self, source: Path, handler: str) -> str | None:
        return handler_problem(str(source), handler)

    def code_problems(self, source: Path, handler: str, on_line: OnLine) -> list[CodeProblem]:
        return []  # the manifest checks parse Python handlers (manifest.sourcechecks)

    def content_key(self, source: Path) -> str:
        return code_hash(source)

    def stage(self, source: Path, context: Path, on_line: OnLine) -> None:
        copy_code(source, context / "code")


PYTHON = PythonRuntime()
