"""The Node.js runtime's speed and footprint on the local Docker engine, each figure next to the Python
runtime's measured in the same run (the same no-op function, the same sandbox, the same host code):

1. warm round trip host → instance → host of a no-op invocation over the instance's socket: p50 and p95
2. instance start (container create → ready)
3. `fnctl invoke --local` as a whole process with the image cached, and with --keep-warm on a warm instance
   (bytecode cached as installed, as in bench_sandbox.py), wall-clock and CPU time, the runs of both
   runtimes interleaved with two baselines of the same run: `python -c pass` (the interpreter alone) and
   `fnctl --version`
4. idle instance memory (the container's cgroup, as `docker stats` counts it)

Prints a table and asserts nothing. Everything it starts or builds is removed at the end, also on failure.

    set -a; source scripts/base-image.env; set +a; python benchmarks/bench_node.py [--sequential 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import docker  # noqa: E402
from bench_sandbox import median_seconds, round_trip, settled_memory  # noqa: E402
from bench_validate import bytecode_env, medians, timed  # noqa: E402
from benchcommon import remove_project  # noqa: E402

from fnctl.engine import images, instances  # noqa: E402
from fnctl.engine.instances import Instance  # noqa: E402
from fnctl.engine.sandbox import labels  # noqa: E402
from fnctl.manifest.project import Project, load_project  # noqa: E402
from fnctl.manifest.validate import validate_paths  # noqa: E402

# function name -> (runtime, handler, file, code)
FUNCTIONS = {
    "noop-js": ("nodejs22", "index.handler", "index.mjs", "export const handler = async (event) => event;\n"),
    "noop-py": ("python3.11", "main.handler", "main.py", "def handler(event, context):\n    return event\n"),
}


@dataclass(frozen=True)
class Row:
    figure: str
    node: float
    python: float
    unit: str
    target: str
    meets: bool | None


# `python -c pass` and `fnctl --version`: (wall, CPU) medians of the CLI runs, beside which the invokes read.
BASELINES: dict[str, tuple[float, float]] = {}


def write_project(root: Path, base_image: str) -> Project:
    name = f"bench-{secrets.token_hex(4)}"
    (root / "manifests").mkdir(parents=True)
    for function, (runtime, handler, file, code) in FUNCTIONS.items():
        (root / "functions" / function).mkdir(parents=True)
        (root / "functions" / function / file).write_text(code)
        (root / "manifests" / f"{function}.yaml").write_text(
            f"apiVersion: fnctl/v1\nkind: Function\nmetadata: {{name: {function}}}\n"
            f"spec: {{runtime: {runtime}, source: ../functions/{function}, handler: {handler}}}\n"
        )
    (root / "fnctl.toml").write_text(f'[project]\nname = "{name}"\n\n[build]\nbaseImage = "{base_image}"\n')
    return load_project(root)


@contextmanager
def bench_project(base_image: str) -> Iterator[tuple[Project, dict[str, str]]]:
    workdir = Path(tempfile.mkdtemp(prefix="fnbench-node-"))
    project = write_project(workdir / "project", base_image)
    try:
        tags = {
            name: images.ensure_image(
                project.name, name, project.root / "functions" / name, base_image, runtime_name=runtime
            ).tag
            for name, (runtime, *_) in FUNCTIONS.items()
        }
        yield project, tags
    finally:
        remove_project(project.name)
        shutil.rmtree(workdir, ignore_errors=True)


def start(project: Project, name: str, image: str) -> Instance:
    result = validate_paths(project)
    if not result.ok:
        raise SystemExit("\n".join(d.render() for d in result.diagnostics))
    function = next(f for f in result.state.functions if f.name == name)
    return instances.start(function, image=image, revision="bench", labels=labels(project.name, name), secret_values={})


def instance_start(project: Project, name: str, image: str, runs: int) -> float:
    started: list[Instance] = []
    return median_seconds(
        lambda: started.append(start(project, name, image)), runs, after=lambda: instances.kill(started.pop())
    )


def measure(args: argparse.Namespace) -> list[Row]:
    client = docker.from_env(timeout=120)
    figures: dict[str, dict[str, float]] = {name: {} for name in FUNCTIONS}
    with bench_project(args.base_image) as (project, tags):
        for name, tag in tags.items():
            instance = start(project, name, tag)
            try:
                p50, p95, _ = round_trip(instance, args)
                figures[name] |= {"p50": p50 / 1000, "p95": p95 / 1000}
                figures[name]["idle"] = settled_memory(client, instance.container_id, args.settle)
            finally:
                instances.kill(instance)
            figures[name]["start"] = instance_start(project, name, tag, args.starts)
        fnctl = [sys.executable, "-m", "fnctl", "invoke", "--local"]
        env = bytecode_env(project.root.parent)
        commands = {name: [*fnctl, name, "-d", "{}"] for name in FUNCTIONS}
        commands |= {f"{name} warm": [*fnctl, name, "-d", "{}", "--keep-warm"] for name in FUNCTIONS}
        commands |= {"python -c pass": [sys.executable, "-c", "pass"], "fnctl --version": [*fnctl[:3], "--version"]}
        for command in commands.values():
            timed(command, project.root, env)  # fills the bytecode cache, and leaves the kept-warm instances
        cli = medians(
            args.cli_runs, {name: partial(timed, command, project.root, env) for name, command in commands.items()}
        )
        for name in FUNCTIONS:
            figures[name] |= {"cli": cli[name][0], "cli cpu": cli[name][1]}
            figures[name] |= {"warm": cli[f"{name} warm"][0], "warm cpu": cli[f"{name} warm"][1]}
        BASELINES.update({name: cli[name] for name in ("python -c pass", "fnctl --version")})
    node, python = figures["noop-js"], figures["noop-py"]
    return [
        Row("warm round trip p50", node["p50"], python["p50"], "ms", "<= 0.3 ms", node["p50"] <= 0.3),
        Row("warm round trip p95", node["p95"], python["p95"], "ms", "", None),
        Row("instance start (create -> ready)", node["start"], python["start"], "s", "<= 0.5 s", node["start"] <= 0.5),
        Row("invoke --local, image cached", node["cli"], python["cli"], "s", "<= 1.5 s", node["cli"] <= 1.5),
        Row("  its CPU (user + sys)", node["cli cpu"], python["cli cpu"], "s", "", None),
        Row("invoke --local --keep-warm, warm", node["warm"], python["warm"], "s", "<= 0.4 s", node["warm"] <= 0.4),
        Row("  its CPU (user + sys)", node["warm cpu"], python["warm cpu"], "s", "", None),
        Row("idle instance memory", node["idle"], python["idle"], "MB", "", None),
    ]


def report(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"Node.js runtime figures next to Python's, same run (base images {args.base_image} and "
        f"{os.environ.get('FNCTL_NODE_BASE_IMAGE') or 'fnctl-node-base:bookworm'}; {args.sequential} sequential; "
        f"{args.starts} starts; {args.cli_runs} CLI runs; medians)"
    )
    header = f"{'figure':36}{'node':>12}{'python':>12}{'ratio':>8}  {'target':12}{'met':>4}"
    print(header)
    print("-" * len(header))
    for row in rows:
        met = "" if row.meets is None else ("yes" if row.meets else "NO")
        print(
            f"{row.figure:36}{_value(row.node, row.unit):>12}{_value(row.python, row.unit):>12}"
            f"{row.node / row.python:>7.2f}x"
            f"  {row.target:12}{met:>4}"
        )
    print(
        "baselines of the same run (wall, CPU): "
        + "; ".join(f"{name} {wall:.3f} s, {cpu:.3f} s" for name, (wall, cpu) in BASELINES.items())
    )
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _value(value: float, unit: str) -> str:
    return f"{value:.3f} {unit}" if unit == "ms" else f"{value:.2f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-image", default=os.environ.get("FNCTL_BASE_IMAGE") or "fnctl-base:bookworm")
    parser.add_argument("--sequential", type=int, default=2000, help="invocations for p50/p95")
    parser.add_argument("--count", type=int, default=2000, help="invocations for bench_sandbox's throughput (unused)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--starts", type=int, default=5, help="instance starts to time, per runtime")
    parser.add_argument("--cli-runs", type=int, default=3, help="runs of each CLI command")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of idle memory readings")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON as well")
    args = parser.parse_args()
    rows = measure(args)
    report(rows, args)
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))


if __name__ == "__main__":
    main()
