"""Speed of the deploy commands against a real Docker engine and a real state store, as whole processes.

A generated project (temporary directory, removed afterwards with every container and image it made) is
deployed for real: N functions (default 100), each its own source directory, 1 instance each, from a git
work tree (so every mutating command reads the commit, as in CI). Then:

- no-op `fnctl diff` and no-op `fnctl apply` with N functions deployed (medians of --runs runs), next to
  the baseline `fnctl validate` of the same manifests (what any diff must do before asking the engine);
- the same with M functions in the store (default 500): the M - N extra functions are *seeded*, not deployed
  through fnctl: their manifests are real, their revisions, routes and instance rows are written through
  fnctl's store API with the specs fnctl computes, and each instance row has a real running container
  carrying fnctl's labels, made from one shared real revision image with `sleep` as its command (so the
  engine lists M containers, but M - N of them run no runtime). The growth from N to M is printed per
  function;
- one function's code changed among N, then `fnctl apply`: the time to healthy and switched, broken down by
  the progress lines apply prints (startup + diff, build, start, health check, switch), then draining;
- `fnctl rollback` when the old revision's instances are gone (restarted from its image, checked), and when
  they are still there. The second state is made the way a canary at 10% would leave it: the old revision
  keeps one checked instance and 10% of the traffic (set through fnctl's executor API), then rollback.

Targets (issue): no-op diff and apply <= 1.5 s with N = 100; growth to M at most linear; code change
<= 5 s to healthy and switched; rollback <= 1 s with instances, <= 2 s when restarted.

    .venv/bin/python benchmarks/bench_deploy.py [--functions 100] [--store-functions 500] [--runs 5]

Needs a Docker engine and FNCTL_BASE_IMAGE (default fnctl-base:bookworm). Bounded by --timeout (default
900 s): past it, the run stops and cleans up.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchcommon import function_manifest, remove_project  # noqa: E402  (beside this script: on sys.path when run as one)

HANDLER = '''"""{name}: a generated function."""


def handler(event, context):
    return {{"function": "{name}", "version": {version}, "echo": event.get("name")}}
'''


def name_of(i: int) -> str:
    return f"fn-{i:04d}"


@dataclass
class Bench:
    root: Path
    project: str
    state: Path
    env: dict[str, str]

    def fnctl(self, *args: str, expect: int | None = 0, timeout: float = 600) -> tuple[float, str, str]:
        start = time.perf_counter()
        done = subprocess.run(
            fnctl_command() + list(args), cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        elapsed = time.perf_counter() - start
        if expect is not None and done.returncode != expect:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise SystemExit(f"fnctl {' '.join(args)} exited {done.returncode}; the last lines:\n{tail}")
        return elapsed, done.stdout, done.stderr

    def write(self, i: int, version: int = 1) -> None:
        source = self.root / "functions" / name_of(i)
        source.mkdir(parents=True, exist_ok=True)
        (source / "main.py").write_text(HANDLER.format(name=name_of(i), version=version))

    def manifests(self, count: int) -> None:
        docs = [
            function_manifest(
                name_of(i),
                env={"GREETING": "hello"},
                scaling={"minInstances": 1, "maxInstances": 2},
                healthCheck=[{"event": {"name": "probe"}}],
            )
            for i in range(count)
        ]
        for part in range(0, count, 50):  # 50 functions a file
            (self.root / "manifests" / f"part-{part // 50:02d}.yaml").write_text("".join(docs[part : part + 50]))


def fnctl_command() -> list[str]:
    script = Path(sys.executable).with_name("fnctl")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fnctl"]


def interleaved(runs: int, commands: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each command `runs` times, interleaved so that a noisy moment slows all alike; medians."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, run in commands.items():
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}


# ---- the code change, timed by the progress lines apply prints ----

PHASES = (
    ("startup + diff", "building image for revision"),
    ("build", "starting instance"),
    ("start", "health-checking revision"),
    ("health check", "traffic →"),
)


def timed_apply(bench: Bench, function: str) -> tuple[dict[str, float], float, list[str]]:
    """`fnctl apply`, each stderr line stamped on arrival: phase durations, total, and the lines."""
    start = time.perf_counter()
    process = subprocess.Popen(
        fnctl_command() + ["apply"],
        cwd=bench.root,
        env=bench.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=1,
    )
    stamped: list[tuple[float, str]] = []
    assert process.stderr is not None and process.stdout is not None
    for line in process.stderr:
        stamped.append((time.perf_counter() - start, line.rstrip("\n")))
    out = process.stdout.read()
    if process.wait(timeout=300) != 0:
        raise SystemExit(f"apply failed:\n{out}" + "\n".join(line for _, line in stamped))
    total = time.perf_counter() - start

    def first(marker: str) -> float:
        return next(t for t, line in stamped if line.startswith(f"{function}: ") and marker in line)

    marks = [0.0] + [first(marker) for _, marker in PHASES]
    phases = {name: marks[n + 1] - marks[n] for n, (name, _) in enumerate(PHASES)}
    phases["switched at"] = marks[-1]
    return phases, total, [line for _, line in stamped]


# ---- seeding functions into the store ----


def seed(bench: Bench, first: int, count: int, image: str) -> None:
    """Functions first..first+count-1 in the store as if deployed, each with one running container."""
    import docker

    from fnctl.deploy.session import desired_specs
    from fnctl.engine import instances
    from fnctl.engine.sandbox import labels
    from fnctl.manifest.project import load_project
    from fnctl.state.revisions import InstanceRow, InstanceState, Revision, RevisionStatus
    from fnctl.state.store import connect

    os.environ.update(bench.env)
    project = load_project(bench.root)
    store = connect(bench.state)
    client = docker.from_env(timeout=120)
    wanted = {name_of(i) for i in range(first, first + count)}
    specs = [s for s in desired_specs(project, store, None)[0] if s.name in wanted]
    assert len(specs) == count, "the seeded functions must be in the manifests first"

    def run(spec_name: str) -> tuple[str, str, str]:
        instance_id = instances.new_instance_id()
        socket_dir = str(instances.runtime_root() / instance_id)
        container = client.containers.run(
            image,
            ["-c", "import time; time.sleep(100000)"],
            entrypoint=["python3"],
            detach=True,
            network_mode="none",
            mem_limit="16m",
            name=f"fnctl-{spec_name}-{instance_id}",
            labels=labels(project.name, spec_name, revision="1", store=store.id)
            | {"io.fnctl.instance": instance_id, "io.fnctl.socket-dir": socket_dir},
        )
        return spec_name, instance_id, str(container.id)

    with ThreadPoolExecutor(max_workers=4) as pool:
        started = {name: (iid, cid) for name, iid, cid in pool.map(run, [s.name for s in specs])}
    with store.transaction():
        for spec in specs:
            instance_id, container_id = started[spec.name]
            store.add_revision(
                Revision(
                    spec.name,
                    1,
                    spec.spec_hash,
                    spec.spec,
                    image,
                    None,
                    None,
                    time.time(),
                    "bench-seed",
                    RevisionStatus.READY,
                    None,
                )
            )
            store.set_route(spec.name, {1: 100})
            store.add_instance(
                InstanceRow(
                    instance_id,
                    spec.name,
                    1,
                    container_id,
                    str(instances.runtime_root() / instance_id),
                    InstanceState.READY,
                    time.time(),
                )
            )
    store.close()


def canary_state(bench: Bench, function: str, old: int, new: int) -> None:
    """The state a canary at 10% leaves: `old` keeps a checked instance and 10% of the traffic."""
    from fnctl.deploy import executor
    from fnctl.deploy.revisionspec import function_from_spec
    from fnctl.deploy.session import desired_specs
    from fnctl.manifest.project import load_project
    from fnctl.state.store import connect

    os.environ.update(bench.env)
    project = load_project(bench.root)
    store = connect(bench.state)
    try:
        revision = store.revision(function, old)
        assert revision is not None
        ctx = executor.Context(store, project.name, project.base_image, "bench", "bench", None, lambda _: None)
        executor.start_checked(
            ctx,
            function_from_spec(function, revision.spec, project.default_limits),
            old,
            revision.image,
            desired_specs(project, store, None)[1].get(function, {}),
            1,
        )
        executor.switch(ctx, function, {old: 10, new: 90}, "canary at 10% (benchmark)")
    finally:
        store.close()


def _timeout(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError("the benchmark ran past --timeout")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=100)
    parser.add_argument("--store-functions", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=900)
    args = parser.parse_args()
    n, m = args.functions, max(args.store_functions, args.functions)

    workdir = Path(tempfile.mkdtemp(prefix="fnctl-bench-deploy-"))
    project = f"bench-{secrets.token_hex(3)}"
    env = os.environ | {
        "FNCTL_BASE_IMAGE": os.environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm"),
        "FNCTL_STATE": str(workdir / "state" / "state.db"),
        "NO_COLOR": "1",
    }
    bench = Bench(workdir / "project", project, workdir / "state" / "state.db", env)
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(args.timeout)
    lines: list[str] = []
    say = lines.append
    try:
        (bench.root / "manifests").mkdir(parents=True)
        (bench.root / "fnctl.toml").write_text(f'[project]\nname = "{project}"\nmanifests = ["manifests"]\n')
        for i in range(m):
            bench.write(i)
        bench.manifests(n)
        subprocess.run(["git", "init", "-q"], cwd=bench.root, check=True, capture_output=True)
        commit(bench.root, "bench")  # as in CI: a clean work tree (apply refuses uncommitted changes)
        setup, _, _ = bench.fnctl("apply", "--lock-timeout", "5")
        say(f"setup: {n} functions deployed by one `fnctl apply` in {setup:.1f} s ({n} images built, {n} instances)")

        for _ in range(2):  # warm the file cache and the bytecode
            bench.fnctl("diff"), bench.fnctl("apply")
        at_n = interleaved(
            args.runs,
            {
                "version": lambda: bench.fnctl("--version")[0],
                "validate": lambda: bench.fnctl("validate")[0],
                "diff": lambda: bench.fnctl("diff")[0],
                "apply": lambda: bench.fnctl("apply")[0],
            },
        )

        # Code change of one function among N.
        target = name_of(n // 2)
        bench.write(n // 2, version=2)
        commit(bench.root, "code change")
        phases, total, progress = timed_apply(bench, target)
        builds = sum(1 for line in progress if "building image for revision" in line)
        starts = sum(1 for line in progress if "starting instance" in line)

        # Rollback, instances gone: restarted from the old image and checked. Repeated by redeploying.
        restarted = []
        for _ in range(3):
            restarted.append(bench.fnctl("rollback", target, "--to", "1")[0])
            bench.fnctl("apply", "--force")
        # Rollback, instances still there (a canary at 10%).
        kept = []
        for _ in range(3):
            from fnctl.state.store import connect

            store = connect(bench.state)
            live = next(iter(store.routes()[target]))
            store.close()
            canary_state(bench, target, 1, live)
            kept.append(bench.fnctl("rollback", target, "--to", "1")[0])
            bench.fnctl("apply", "--force")

        # M functions in the store: M - N seeded (see the module docstring), then the same no-op commands.
        bench.manifests(m)
        commit(bench.root, f"{m} functions")
        seed(bench, n, m - n, _an_image(bench))
        _, diff_out, _ = bench.fnctl("diff")  # exit 0: the seeded functions are unchanged, without drift
        bench.fnctl("apply")
        at_m = interleaved(
            args.runs,
            {
                "validate": lambda: bench.fnctl("validate")[0],
                "diff": lambda: bench.fnctl("diff")[0],
                "apply": lambda: bench.fnctl("apply")[0],
            },
        )
    finally:
        signal.alarm(0)
        remove_project(project)
        shutil.rmtree(workdir, ignore_errors=True)

    report(lines, n, m, args.runs, at_n, at_m, phases, total, builds, starts, restarted, kept)
    print(f"`fnctl diff` with {m} functions in the store: {diff_out.strip().splitlines()[-1]}")


def commit(root: Path, message: str) -> None:
    git = ["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.org"]
    for command in (["add", "-A"], ["commit", "-q", "-m", message]):
        subprocess.run(git + command, cwd=root, check=True, capture_output=True)


def _an_image(bench: Bench) -> str:
    """A real revision image of the project, shared by the seeded instances."""
    from fnctl.state.store import connect

    store = connect(bench.state)
    try:
        revision = store.revision(name_of(0), 1)
        assert revision is not None
        return revision.image
    finally:
        store.close()


def report(
    lines: list[str],
    n: int,
    m: int,
    runs: int,
    at_n: dict[str, float],
    at_m: dict[str, float],
    phases: dict[str, float],
    total: float,
    builds: int,
    starts: int,
    restarted: list[float],
    kept: list[float],
) -> None:
    for line in lines:
        print(line)
    print(f"\nno-op commands, whole processes, medians of {runs} runs:")
    print(f"  {'':28} {n:>4} functions   {m:>4} functions   per extra function")
    for name in ("validate", "diff", "apply"):
        growth = (at_m[name] - at_n[name]) / (m - n) * 1000 if m > n else 0.0
        print(f"  fnctl {name:22} {at_n[name]:>8.3f} s   {at_m[name]:>10.3f} s   {growth:>8.2f} ms")
    print(f"  fnctl --version (baseline) {at_n['version']:>8.3f} s")
    linear = {name: at_m[name] <= at_n[name] * m / n for name in ("diff", "apply")}
    print(
        f"  {m}/{n} = {m / n:.1f}x functions; time x{at_m['diff'] / at_n['diff']:.2f} (diff), "
        f"x{at_m['apply'] / at_n['apply']:.2f} (apply)"
    )
    print(f"\ncode change of one function among {n}, `fnctl apply` ({builds} image built, {starts} instance started):")
    for name, value in phases.items():
        if name != "switched at":
            print(f"  {name:16} {value:6.3f} s")
    print(
        f"  healthy and switched at {phases['switched at']:.3f} s; process done (old instance drained) at {total:.3f} s"
    )
    print("\nrollback, whole process (median of 3):")
    print(f"  old instances still there (canary at 10%)   {statistics.median(kept):.3f} s   {_fmt(kept)}")
    print(f"  old instances gone: restarted and checked   {statistics.median(restarted):.3f} s   {_fmt(restarted)}")
    targets = {
        f"no-op diff <= 1.5 s ({n})": at_n["diff"] <= 1.5,
        f"no-op apply <= 1.5 s ({n})": at_n["apply"] <= 1.5,
        "diff grows at most linearly": linear["diff"],
        "apply grows at most linearly": linear["apply"],
        "one build, one start": builds == 1 and starts == 1,
        "code change switched <= 5 s": phases["switched at"] <= 5.0,
        "rollback with instances <= 1 s": statistics.median(kept) <= 1.0,
        "rollback restarting <= 2 s": statistics.median(restarted) <= 2.0,
    }
    missed = [name for name, ok in targets.items() if not ok]
    print("\nall targets met" if not missed else f"\nmissed: {'; '.join(missed)}")


def _fmt(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


if __name__ == "__main__":
    main()
