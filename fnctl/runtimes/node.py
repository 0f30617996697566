"""Node.js 22 and TypeScript (compiled for Node 22 on the host): the runtime layer is runtime-image/node/
(Dockerfile + runtime.mjs, Node's standard library only) over the offline Node base image
(scripts/build-node-image.sh, its tag in FNCTL_NODE_BASE_IMAGE).

Handlers: `index.handler` (the module `index.js`, `.mjs` or `.cjs`; dots are directories) or
`path/file.ext:handler`. A TypeScript file `src/main.ts` is compiled to `src/main.mjs` (`.mts` → `.mjs`,
`.cts` → `.cjs`) beside it in the image, and the in-container runtime loads that file instead
(`compiled_name`). Dependencies: `node_modules/` of the image's /var/task, filled from `deps/`.

The host-side toolchain plugs into `NodeRuntime.stage` through two hooks: `compile` (TypeScript: esbuild,
after `tsc --noEmit`) and `install_dependencies` (`npm ci --omit=dev --ignore-scripts` for linux-x64, cached
by the lock's hash, native addons without a prebuilt binary refused). Both raise BuildFailed naming the file
or package at fault; `content_key` must cover whatever of the toolchain changes their output.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fnctl.manifest.schemas import data_dir
from fnctl.runtimes.files import OnLine, copy_code
from fnctl.toolchain import nodebuild
from fnctl.toolchain.problems import CodeProblem

NODE_MAJOR = "22"
NODE_VERSION = (22, 23, 5)  # as scripts/build-node-image.sh pins it; package.json's engines.node must admit it
DEFAULT_NODE_BASE_IMAGE = "fnctl-node-base:bookworm"
JS_SUFFIXES = (".js", ".mjs", ".cjs")
TS_SUFFIXES = (".ts", ".mts", ".cts")
_COMPILED = {".ts": ".mjs", ".mts": ".mjs", ".cts": ".cjs"}


def compiled_name(path: str) -> str:
    """The file the runtime loads for a handler file: a TypeScript file's compiled output, else itself."""
    pure = PurePosixPath(path)
    return str(pure.with_suffix(_COMPILED[pure.suffix])) if pure.suffix in _COMPILED else path


def handler_candidates(handler: str, typescript: bool) -> tuple[list[str], str]:
    """The files (relative to the code directory, in order of preference) a handler names, and its export."""
    if ":" in handler:
        file_part, attr = handler.rsplit(":", 1)
        return [file_part], attr
    module, attr = handler.rsplit(".", 1)
    stem = "/".join(module.split("."))
    return [stem + suffix for suffix in (TS_SUFFIXES if typescript else JS_SUFFIXES)], attr


@dataclass(frozen=True)
class NodeRuntime:
    name: str
    typescript: bool
    image_name: str = "fnctl/runtime-node"
    version_key: str = f"node={NODE_MAJOR}"
    pip_requirements: bool = False
    runtime_files: tuple[str, ...] = ("Dockerfile", "function.Dockerfile", "runtime.mjs", "support.mjs")

    def base_image(self, configured: str) -> str:
        return os.environ.get("FNCTL_NODE_BASE_IMAGE") or DEFAULT_NODE_BASE_IMAGE

    def runtime_dir(self) -> Path:
        return data_dir("runtime-image") / "node"

    def function_dockerfile(self) -> Path:
        return self.runtime_dir() / "function.Dockerfile"

    def handler_problem(self, source: Path, handler: str) -> str | None:
        candidates, attr = handler_candidates(handler, self.typescript)
        root = os.path.normpath(source)
        for candidate in candidates:
            path = os.path.normpath(os.path.join(root, candidate))
            if not path.startswith(root + os.sep):
                return f"handler file {candidate!r} is outside the source directory"
            if os.path.isfile(path):
                text = Path(path).read_text(encoding="utf-8", errors="replace")
                if not re.search(rf"(?<![\w$]){re.escape(attr)}(?![\w$])", text):
                    return f"{candidate} defines no export {attr!r}"
                return None
        return f"handler file not found in the source directory (looked for {', '.join(candidates)})"

    def content_key(self, source: Path) -> str:
        return nodebuild.content_key(source, self.typescript)

    def code_problems(self, source: Path, handler: str, on_line: OnLine) -> list[CodeProblem]:
        candidates, attr = handler_candidates(handler, self.typescript)
        file = next(source / c for c in candidates if (source / c).is_file())  # handler_problem found it
        return nodebuild.code_problems(
            source, file, attr, typescript=self.typescript, node=NODE_VERSION, on_line=on_line
        )

    def stage_runtime(self, context: Path) -> None:
        pass  # the runtime layer is runtime_files as they are

    def stage(self, source: Path, context: Path, on_line: OnLine) -> None:
        code, deps = context / "code", context / "deps"
        copy_code(source, code)
        if self.typescript:
            self.compile(source, code, on_line)
        deps.mkdir(exist_ok=True)
        self.install_dependencies(source, deps, on_line)

    def compile(self, source: Path, code: Path, on_line: OnLine) -> None:
        """Compile the TypeScript of `source` into `code` (each `X.ts` to `compiled_name(X.ts)`, ESM for Node
        22, dependencies left external), type-checked first (fnctl.toolchain)."""
        nodebuild.compile_typescript(source, code, on_line)

    def install_dependencies(self, source: Path, deps: Path, on_line: OnLine) -> None:
        """Install `package-lock.json`'s production dependencies into `deps` (it becomes /var/task/node_modules).
        npm ci on the host for linux-x64, cached by the lock's hash (fnctl.toolchain)."""
        nodebuild.install_dependencies(source, deps, on_line)


NODEJS = NodeRuntime(f"nodejs{NODE_MAJOR}", typescript=False)
TYPESCRIPT = NodeRuntime("typescript", typescript=True)
