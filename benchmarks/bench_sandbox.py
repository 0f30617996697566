"""Sandbox speed and footprint on the local Docker engine, each figure next to a baseline measured in the same run.

1. warm round trip host → instance → host of a no-op invocation over the instance's socket: p50/p95 of
   sequential calls and throughput of 8 caller threads on one instance; baseline: a bare Unix-socket echo server
2. instance start (container create → ready); baseline: `docker run --rm BASE true`
3. `fnctl invoke --local` as a whole process, image cached, and with --keep-warm on a warm instance;
   baseline: `fnctl --version` (and `python -c pass`, the interpreter alone); wall-clock and CPU time, the runs
   of the four interleaved. As in
   bench_validate.py, every process has its bytecode cached as an installed package has (in a folder of
   the run, whatever PYTHONDONTWRITEBYTECODE says: without it, every fnctl module is compiled from source
   on every run, ~70 ms here); --no-bytecode-cache measures with the environment as it is
4. idle instance memory (the container's cgroup, as `docker stats` counts it): never invoked (one process:
   a synchronous handler's first worker process is forked by its first invocation), after one invocation
   (the supervisor and one worker: issue 16's figure, <= 14.3 MB, what one threaded process took before
   workers) and after the concurrent callers of 1. (a worker each, kept); baseline: an idle python3
   container of the base image

Prints a table and asserts nothing. Everything it starts or builds is removed at the end, also on failure.

    FNCTL_BASE_IMAGE=fnctl-base:bookworm python benchmarks/bench_sandbox.py [--sequential 2000] [--count 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import docker  # noqa: E402
import docker.errors  # noqa: E402
from bench_transport import echo_server, latency, measure_baseline, throughput  # noqa: E402
from bench_validate import bytecode_env, medians, timed  # noqa: E402
from benchcommon import remove_project  # noqa: E402

from fnctl.engine import images, instances
from fnctl.engine.instances import Instance  # noqa: E402
from fnctl.engine.sandbox import labels  # noqa: E402
from fnctl.manifest.model import Function  # noqa: E402
from fnctl.manifest.project import Project, load_project  # noqa: E402
from fnctl.manifest.validate import validate_paths  # noqa: E402

EVENT = {"n": 1}
WARMUP = 200
MB = 1_000_000


@dataclass(frozen=True)
class Row:
    figure: str
    value: float
    baseline: float
    unit: str
    target: str
    meets: bool | None  # None: no target for this figure


# ---- the project under test ---------------------------------------------------------------------------


def find_function(project: Project, name: str) -> Function:
    """The function `name` of the project's manifests, validated as `fnctl apply` would."""
    result = validate_paths(project)
    if not result.ok:
        raise SystemExit("\n".join(d.render() for d in result.diagnostics))
    return next(f for f in result.state.functions if f.name == name)


def write_project(root: Path, base_image: str) -> Project:
    name = f"bench-{secrets.token_hex(4)}"
    (root / "functions" / "noop").mkdir(parents=True)
    (root / "functions" / "noop" / "main.py").write_text("def handler(event, context):\n    return event\n")
    (root / "manifests").mkdir()
    (root / "manifests" / "noop.yaml").write_text(
        "apiVersion: fnctl/v1\nkind: Function\nmetadata: {name: noop}\n"
        "spec: {runtime: python3.11, source: ../functions/noop, handler: main.handler}\n"
    )
    (root / "fnctl.toml").write_text(f'[project]\nname = "{name}"\n\n[build]\nbaseImage = "{base_image}"\n')
    return load_project(root)


def start_instance(project: Project, image: str) -> Instance:
    return instances.start(
        find_function(project, "noop"),
        image=image,
        revision="bench",
        labels=labels(project.name, "noop"),
        secret_values={},
    )


# ---- 1. warm round trip -----------------------------------------------------------------------------------


def round_trip(instance: Instance, args: argparse.Namespace) -> tuple[float, float, float]:
    """p50 and p95 in µs, and invocations per second with `args.threads` callers on one instance."""

    def invoke() -> None:
        outcome = instances.invoke(instance, EVENT)
        if not outcome.ok:
            raise SystemExit(f"the no-op handler failed: {outcome.failure}: {outcome.message}")

    for _ in range(WARMUP):
        invoke()
    p50, p95 = latency(invoke, args.sequential)
    return p50, p95, throughput([invoke] * args.threads, args.count)


def echo_round_trip(workdir: Path, args: argparse.Namespace) -> tuple[float, float, float]:
    with echo_server(workdir) as path:
        figures = measure_baseline(path, args)
    return figures.p50_us, figures.p95_us, figures.per_second


# ---- 2. instance start ------------------------------------------------------------------------------------


def median_seconds(action: Callable[[], None], runs: int, after: Callable[[], None] = lambda: None) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
        after()
    return statistics.median(samples)


def instance_start(project: Project, image: str, runs: int) -> float:
    started: list[Instance] = []
    return median_seconds(
        lambda: started.append(start_instance(project, image)), runs, after=lambda: instances.kill(started.pop())
    )


def docker_run_true(base_image: str, runs: int) -> float:
    return median_seconds(lambda: _run(["docker", "run", "--rm", "--network", "none", base_image, "true"]), runs)


# ---- 3. the whole CLI process -------------------------------------------------------------------------------


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def cli_figures(project: Project, runs: int, bytecode_cache: bool) -> dict[str, tuple[float, float]]:
    """Median wall-clock and CPU seconds of `fnctl --version` and of both invokes, their runs interleaved (a
    noisy machine slows all alike), after one untimed run of each: it fills the bytecode cache, and leaves
    the kept-warm instance."""
    fnctl = [sys.executable, "-m", "fnctl"]
    invoke = [*fnctl, "invoke", "--local", "noop", "-d", "{}"]
    commands = {
        "python": [sys.executable, "-c", "pass"],
        "floor": [*fnctl, "--version"],
        "cold": invoke,
        "warm": [*invoke, "--keep-warm"],
    }
    env = bytecode_env(project.root.parent) if bytecode_cache else dict(os.environ)
    for command in commands.values():
        timed(command, project.root, env)
    return medians(runs, {name: partial(timed, command, project.root, env) for name, command in commands.items()})


# ---- 4. idle memory ----------------------------------------------------------------------------------------


def memory_mb(client: docker.DockerClient, container_id: str) -> float:
    """What `docker stats` shows: cgroup usage less inactive page cache (cgroup v1 or v2)."""
    stats = client.api.stats(container_id, stream=False, one_shot=True)["memory_stats"]
    usage, detail = int(stats["usage"]), stats.get("stats", {})
    inactive = int(detail.get("total_inactive_file", detail.get("inactive_file", 0)))
    return (usage - inactive if inactive < usage else usage) / MB


def idle_python_mb(client: docker.DockerClient, base_image: str, settle: float) -> float:
    container = client.containers.run(
        base_image,
        ["python3", "-c", "import sys; sys.stdin.read()"],
        detach=True,
        stdin_open=True,
        network_mode="none",
        user="65534:65534",
        labels={"io.fnctl.bench": "true"},
    )
    try:
        return settled_memory(client, container.id, settle)
    finally:
        container.remove(force=True)


def settled_memory(client: docker.DockerClient, container_id: str, settle: float) -> float:
    """Median of a few readings taken over `settle` seconds: start-up allocations have been freed by then."""
    readings: list[float] = []
    give_up = time.monotonic() + settle
    while time.monotonic() < give_up or len(readings) < 3:
        readings.append(memory_mb(client, container_id))
    return statistics.median(readings)


# ---- the run -------------------------------------------------------------------------------------------------


@contextmanager
def bench_project(client: docker.DockerClient, base_image: str) -> Iterator[tuple[Project, str]]:
    workdir = Path(tempfile.mkdtemp(prefix="fnbench-"))
    project = write_project(workdir / "project", base_image)
    try:
        image = images.ensure_image(project.name, "noop", project.root / "functions" / "noop", base_image).tag
        yield project, image
    finally:
        remove_project(project.name)
        shutil.rmtree(workdir, ignore_errors=True)


def measure(args: argparse.Namespace) -> list[Row]:
    client = docker.from_env(timeout=120)
    rows: list[Row] = []
    with bench_project(client, args.base_image) as (project, image):
        instance = start_instance(project, image)
        try:
            # A synchronous handler's worker processes are forked by invocations and stay (docs/runtime.md):
            # idle memory never invoked, with one worker, and with the workers the concurrent callers forked.
            fresh = settled_memory(client, instance.container_id, args.settle)
            instances.invoke(instance, EVENT)
            one = settled_memory(client, instance.container_id, args.settle)
            p50, p95, rate = round_trip(instance, args)
            idle = settled_memory(client, instance.container_id, args.settle)
        finally:
            instances.kill(instance)
        echo_p50, echo_p95, echo_rate = echo_round_trip(Path(tempfile.mkdtemp(prefix="fnecho-")), args)
        rows += [
            Row("warm round trip p50", p50 / 1000, echo_p50 / 1000, "ms", "<= 0.5 ms", p50 <= 500),
            Row("warm round trip p95", p95 / 1000, echo_p95 / 1000, "ms", "", None),
            Row(f"throughput, {args.threads} callers, 1 instance", rate, echo_rate, "/s", ">= 2,000/s", rate >= 2000),
        ]
        start = instance_start(project, image, args.starts)
        rows.append(
            Row(
                "instance start (create -> ready)",
                start,
                docker_run_true(args.base_image, args.starts),
                "s",
                "<= 0.8 s",
                start <= 0.8,
            )
        )
        figures = cli_figures(project, args.cli_runs, bytecode_cache=not args.no_bytecode_cache)
        (floor, floor_cpu), (cold, cold_cpu), (warm, warm_cpu) = figures["floor"], figures["cold"], figures["warm"]
        python = figures["python"][0]
        python_mb = idle_python_mb(client, args.base_image, args.settle)
        rows += [
            Row("python -c pass (the interpreter alone)", python, floor, "s", "", None),
            Row("invoke --local, image cached", cold, floor, "s", "<= 1.5 s", cold <= 1.5),
            Row("  its CPU time (user + sys)", cold_cpu, floor_cpu, "s", "", None),
            Row("invoke --local --keep-warm, warm", warm, floor, "s", "<= 0.4 s", warm <= 0.4),
            Row("  its CPU time (user + sys)", warm_cpu, floor_cpu, "s", "", None),
            Row("idle instance memory, never invoked", fresh, python_mb, "MB", "", None),
            Row("idle instance memory, 1 worker", one, python_mb, "MB", "<= 14.3 MB", one <= 14.3),
            Row(f"  after {args.threads} concurrent callers", idle, python_mb, "MB", "", None),
        ]
    return rows


def report(rows: list[Row], args: argparse.Namespace) -> None:
    cache = "without" if args.no_bytecode_cache else "with"
    print(
        f"sandbox figures (base {args.base_image}; {args.sequential} sequential, {args.count} with "
        f"{args.threads} threads; {args.starts} starts; {args.cli_runs} CLI runs {cache} bytecode cache; medians)"
    )
    print(
        "baselines: echo server (round trip), `docker run --rm BASE true` (start), `fnctl --version` (CLI), "
        "idle python3 container (memory)"
    )
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = f"{'figure':40}{'median':>14}{'baseline':>14}{'ratio':>8}  {'target':12}{'met':>4}"
    print(header)
    print("-" * len(header))
    for row in rows:
        met = "" if row.meets is None else ("yes" if row.meets else "NO")
        print(
            f"{row.figure:40}{_value(row.value, row.unit):>14}{_value(row.baseline, row.unit):>14}"
            f"{row.value / row.baseline:>7.2f}x  {row.target:12}{met:>4}"
        )


def _value(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}/s"
    return f"{value:.3f} {unit}" if unit == "ms" else f"{value:.2f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-image", default=os.environ.get("FNCTL_BASE_IMAGE") or "fnctl-base:bookworm")
    parser.add_argument("--sequential", type=int, default=2000, help="invocations for p50/p95")
    parser.add_argument("--count", type=int, default=10000, help="invocations for the throughput figure")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--starts", type=int, default=10, help="instance starts (and docker runs) to time")
    parser.add_argument("--cli-runs", type=int, default=5, help="runs of each CLI command")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of idle memory readings")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run the CLI with this environment as it is (it may compile every module each run)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON as well")
    args = parser.parse_args()
    rows = measure(args)
    report(rows, args)
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))


if __name__ == "__main__":
    main()
