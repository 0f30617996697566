"""The esbuild boundary: TypeScript and JavaScript compiled (or only parsed) for Node 22, with the exports
of every entry point as esbuild's metafile lists them, and its errors at FILE:LINE:COL.

Each entry is bundled with the function's own modules and with npm packages left as imports
(`--packages=external`): one output file per entry, whose relative imports need no file extensions at run
time, while node_modules/ is resolved by Node in the image.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fnctl.errors import BuildFailed
from fnctl.toolchain.problems import CodeProblem

TARGET = "node22"
_ERROR = re.compile(r"^✘ \[ERROR\] (.*)$")
_LOCATION = re.compile(r"^\s+(.+?):(\d+):(\d+):$")


@dataclass(frozen=True)
class Compiled:
    problems: list[CodeProblem]
    exports: dict[Path, tuple[str, ...]] = field(default_factory=dict)  # by entry (absolute path)
    inputs: tuple[Path, ...] = ()  # every file bundled (absolute paths)


def compile_entries(
    esbuild: Path, source: Path, entries: list[Path], outdir: Path | None, *, cjs: bool = False
) -> Compiled:
    """Compile `entries` (files under `source`) into `outdir`, keeping their paths relative to `source`, as
    ESM `.mjs` files (`cjs`: CommonJS `.cjs` files). `outdir` None: parse and report only."""
    if not entries:
        return Compiled([])
    with tempfile.TemporaryDirectory(prefix="fnctl-esbuild-") as tmp:
        target = outdir or Path(tmp, "out")
        metafile = Path(tmp, "meta.json")
        extension = ".cjs" if cjs else ".mjs"
        command = [
            str(esbuild),
            *(str(e) for e in entries),
            "--bundle",
            "--packages=external",
            "--platform=node",
            f"--target={TARGET}",
            f"--format={'cjs' if cjs else 'esm'}",
            f"--outdir={target}",
            f"--outbase={source}",
            f"--out-extension:.js={extension}",
            f"--metafile={metafile}",
            "--log-level=error",
            "--log-limit=0",
            "--color=false",
        ]
        try:
            done = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildFailed(f"esbuild could not run: {exc}") from exc
        problems = parse_errors(done.stderr, source)
        if done.returncode != 0:
            if not problems:
                raise BuildFailed(f"esbuild failed (exit {done.returncode})", detail=done.stderr[-4000:])
            return Compiled(problems)
        meta = json.loads(metafile.read_text(encoding="utf-8"))
    exports: dict[Path, tuple[str, ...]] = {}
    for output in meta.get("outputs", {}).values():
        entry = output.get("entryPoint")
        if entry:
            exports[(source / entry).resolve()] = tuple(output.get("exports", ()))
    inputs = tuple((source / name).resolve() for name in meta.get("inputs", {}))
    return Compiled(_escaping(inputs, source), exports, inputs)


def _escaping(inputs: tuple[Path, ...], source: Path) -> list[CodeProblem]:
    """A bundled file from outside the source directory would carry code (or secrets) from elsewhere on the
    host into the image: refused, at the file that was reached."""
    root = source.resolve()
    return [
        CodeProblem(path, 0, 0, f"imported from the function's code, but outside its source directory {source}")
        for path in inputs
        if not path.is_relative_to(root)
    ]


def parse_errors(stderr: str, source: Path) -> list[CodeProblem]:
    """esbuild's `✘ [ERROR] message` blocks, each with the `FILE:LINE:COL:` line under it (its column is
    0-based; ours are 1-based, as tsc's and the manifests' are)."""
    problems: list[CodeProblem] = []
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        error = _ERROR.match(line)
        if not error:
            continue
        place = next((_LOCATION.match(n) for n in lines[i + 1 : i + 4] if _LOCATION.match(n)), None)
        if place:
            file = (source / place.group(1)).resolve()
            problems.append(CodeProblem(file, int(place.group(2)), int(place.group(3)) + 1, error.group(1)))
        else:
            problems.append(CodeProblem(source, 0, 0, error.group(1)))
    return problems
