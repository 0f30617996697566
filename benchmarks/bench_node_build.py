"""Speed of building a TypeScript function on this host, against a real Docker engine: what `fnctl apply`
does for a changed function (type-check with tsc, compile with esbuild, build the revision image), and for
an unchanged one (nothing: the image with the same content is there). The baseline, measured in the same run:
the same change to a Python function (no compiler, the same image build).

Each run changes the handler (a new comment line, so nothing is cached but the runtime layer and the tools),
then times, in process:
- type-check: `tsc --noEmit` through the TypeScript runtime's validate checks (type errors, syntax, export);
- build: `ensure_image` (esbuild compile of the source + `docker build` of the function layer);
- unchanged: `ensure_image` again, which must not build.

Target (issue 17): a changed TypeScript function built (compile + type-check + image) <= 2 s; unchanged →
not rebuilt.

    .venv/bin/python benchmarks/bench_node_build.py [--runs 5] [--timeout 300]

Needs a Docker engine, FNCTL_BASE_IMAGE and FNCTL_NODE_BASE_IMAGE (scripts/base-image.env), and the node tools
(scripts/install-node-tools.sh). Its images are removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchcommon import remove_project  # noqa: E402  (beside this script: on sys.path when run as one)

from fnctl.engine.images import ImageRef, ensure_image  # noqa: E402
from fnctl.runtimes.node import TYPESCRIPT  # noqa: E402
from fnctl.toolchain.problems import CodeProblem  # noqa: E402

TS = """\
interface Event {{ name?: string }}
export const handler = async (event: Event, context: {{ functionName: string }}) => {{
  const name: string = event.name ?? "world";
  return {{ message: `hello ${{name}} from ${{context.functionName}}`, version: {version} }};
}};
"""
PY = """\
def handler(event, context):
    return {{"message": f"hello {{event.get('name', 'world')}}", "version": {version}}}
"""


def _timeout(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError("the benchmark ran past --timeout")


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(int(args.timeout))
    base = os.environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm")
    project = f"bench-node-{secrets.token_hex(3)}"
    figures: dict[str, list[float]] = {k: [] for k in ("check", "build", "total", "unchanged", "python")}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-node-build-") as tmp:
            ts, py = Path(tmp, "ts"), Path(tmp, "py")
            ts.mkdir()
            py.mkdir()
            # warm-up: the runtime layers and the tools, built or installed once, outside the figures
            (ts / "main.ts").write_text(TS.format(version=0))
            (py / "main.py").write_text(PY.format(version=0))
            ensure_image(project, "ts", ts, base, runtime_name="typescript")
            ensure_image(project, "py", py, base)
            for run in range(1, args.runs + 1):
                (ts / "main.ts").write_text(TS.format(version=run))
                check = timed(lambda: _no_problems(TYPESCRIPT.code_problems(ts, "main.handler", lambda _: None)))
                build = timed(lambda: _built(ensure_image(project, "ts", ts, base, runtime_name="typescript"), True))
                unchanged = timed(
                    lambda: _built(ensure_image(project, "ts", ts, base, runtime_name="typescript"), False)
                )
                (py / "main.py").write_text(PY.format(version=run))
                python = timed(lambda: _built(ensure_image(project, "py", py, base), True))
                for key, value in (
                    ("check", check),
                    ("build", build),
                    ("total", check + build),
                    ("unchanged", unchanged),
                    ("python", python),
                ):
                    figures[key].append(value)
    finally:
        signal.alarm(0)
        remove_project(project)
    median = {k: statistics.median(v) for k, v in figures.items()}
    print(f"TypeScript function build, medians of {args.runs} runs (each after a change to the handler):")
    print(f"  type-check + syntax + export (tsc, esbuild)  {median['check'] * 1000:8.0f} ms")
    print(f"  image build (esbuild compile + docker build) {median['build'] * 1000:8.0f} ms")
    print(f"  changed TypeScript function, total           {median['total'] * 1000:8.0f} ms   (target <= 2000 ms)")
    print(f"  changed Python function (baseline)           {median['python'] * 1000:8.0f} ms")
    print(f"  TypeScript / Python                          {median['total'] / median['python']:8.2f} x")
    print(f"  unchanged TypeScript function (not rebuilt)  {median['unchanged'] * 1000:8.0f} ms")


def _no_problems(problems: list[CodeProblem]) -> None:
    if problems:
        raise AssertionError(f"the benchmark's handler has problems: {problems}")


def _built(ref: ImageRef, expected: bool) -> None:
    if ref.built is not expected:
        raise AssertionError(f"expected built={expected}, got {ref}")


if __name__ == "__main__":
    main()
