"""Python 3.11: the runtime layer is runtime-image/ (Dockerfile + fnctl_runtime.py), handlers are
`module.attr` or `path/file.py:attr`, dependencies come from `requirements.txt` (installed by the engine)."""

from __future__ import annotations

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
    runtime_files: tuple[str, ...] = ("Dockerfile", "function.Dockerfile", "fnctl_runtime.py")

    def base_image(self, configured: str) -> str:
        return configured

    def runtime_dir(self) -> Path:
        return data_dir("runtime-image")

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
