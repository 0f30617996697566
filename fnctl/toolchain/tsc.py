"""The TypeScript compiler's boundary: `tsc --noEmit` over a function's TypeScript, its errors at
FILE:LINE:COL. TypeScript 7's native compiler (~0.2 s for a handler here; 5.x took ~1.3 s).

The settings are fnctl's, for Node 22 and for how esbuild compiles (`module: preserve`, bundler
resolution: relative imports without extensions, as the output is bundled); a `tsconfig.json` in the
source directory is extended, so its own settings (strictness, paths) count, and fnctl's win where they
must (no output, the files to check, the Node 22 API's types).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

from fnctl.errors import BuildFailed
from fnctl.toolchain.problems import CodeProblem

_ERROR = re.compile(r"^(.+?)\((\d+),(\d+)\): error (TS\d+): (.*)$")
_GLOBAL_ERROR = re.compile(r"^error (TS\d+): (.*)$")


def tsconfig(source: Path, files: list[Path], types: Path, modules: list[Path]) -> dict[str, object]:
    """fnctl's compiler settings; `modules`: where else than next to the code npm packages are found."""
    options: dict[str, object] = {
        "noEmit": True,
        "target": "es2023",
        "lib": ["es2023"],
        "module": "preserve",
        "moduleResolution": "bundler",
        "skipLibCheck": True,
        "types": ["node"],
        "typeRoots": [str(types), *(str(m / "@types") for m in modules)],
    }
    if modules:
        options["paths"] = {"*": [str(m / "*") for m in modules]}
    config: dict[str, object] = {"compilerOptions": options, "files": [str(f.absolute()) for f in files]}
    user = source / "tsconfig.json"
    if user.is_file():
        config["extends"] = str(user)
    else:
        options["strict"] = True
    return config


def type_check(tsc: Path, source: Path, config: dict[str, object]) -> list[CodeProblem]:
    """Every type (and syntax) error tsc finds with `config`, in its order."""
    with tempfile.TemporaryDirectory(prefix="fnctl-tsc-") as tmp:
        path = Path(tmp, "tsconfig.json")
        path.write_text(json.dumps(config), encoding="utf-8")
        try:
            done = subprocess.run(
                [str(tsc), "--project", str(path), "--pretty", "false"],
                cwd=source,
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildFailed(f"tsc could not run: {exc}") from exc
    problems = parse_errors(done.stdout, source)
    if done.returncode not in (0, 1, 2) or (done.returncode and not problems):
        raise BuildFailed(f"tsc failed (exit {done.returncode})", detail=(done.stdout + done.stderr)[-4000:])
    return problems


def parse_errors(output: str, source: Path) -> list[CodeProblem]:
    """`file(line,col): error TSnnnn: message` lines; the indented lines after one continue its message."""
    problems: list[CodeProblem] = []
    for line in output.splitlines():
        found = _ERROR.match(line)
        general = _GLOBAL_ERROR.match(line)
        if found:
            file, row, column, code, message = found.groups()
            problems.append(CodeProblem((source / file).resolve(), int(row), int(column), f"{message} ({code})"))
        elif general:
            problems.append(CodeProblem(source, 0, 0, f"{general.group(2)} ({general.group(1)})"))
        elif line.startswith(" ") and problems and line.strip():
            last = problems[-1]
            problems[-1] = CodeProblem(last.file, last.line, last.column, f"{last.message} {line.strip()}")
    return problems
