"""Speed of GitOps deploys: `git push` to a bare repository with fnctl's hook, and a no-op `fnctl sync`.

In a temporary directory (removed afterwards, with every container and image of its uniquely named project):
a project made by `fnctl init` plus --functions - 1 generated functions (each its own source and manifest,
1 instance, immediate strategy) is committed in a clone with two remotes: `hooked`, a bare repository with
`fnctl hook install`, and `plain`, an identical bare repository without the hook (the baseline: pure git).
The first push deploys everything. Then, --runs times, one function's code is changed and pushed, in two kinds:

- warm: the function's source alternates between two versions (A, B) whose images both exist, so its image
  is found in the cache (a new revision, no build) - the case the target names;
- built: a version never seen before, whose image must be built (a real code change).

Each change is pushed to `plain` (timed) and then to `hooked`, `git push` timed as a whole process, the
`remote:` lines stamped as they arrive to derive the phases: fetch (push start -> `deploying commit`: git's
receive, the hook's start-up and fnctl's fetch), validate+plan (-> `building image`), build (-> `starting
instance`), start (-> `health-checking`), health (-> `traffic ->`), switch (-> `... is live`, which includes
draining the old instance). Serving is verified for real: from the `health-checking` line on, the function is
invoked in this process (straight through an instance, as `fnctl invoke --direct` does) until the new version
answers; after the push returns, one `fnctl invoke --direct` process must print the new version.

No-op: `fnctl sync --repo <hooked> --ref main` of the live commit (medians of --runs), next to `fnctl
--version` and `python -c "import fnctl"` (interpreter start-up baselines).

fnctl runs as an installed fnctl does, its bytecode compiled once (PYTHONPYCACHEPREFIX in the temporary
directory; --no-bytecode-cache keeps the environment's settings). When the environment sets
PYTHONDONTWRITEBYTECODE, the no-op sync is also timed as it stands there (fnctl compiled at each start).

Targets (issue 7): push -> new revision serving <= 10 s (warm image cache, immediate); no-op sync <= 1.5 s.

    .venv/bin/python benchmarks/bench_sync.py [--functions 5] [--runs 5] [--timeout 600]

Needs git, a Docker engine and FNCTL_BASE_IMAGE (default fnctl-base:bookworm). Bounded by --timeout: past
it (or on SIGINT/SIGTERM) the run stops, kills the push under way and cleans up.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchcommon import function_manifest, remove_project  # noqa: E402  (beside this script: on sys.path when run as one)

TARGET = "target"  # the function whose code changes
HANDLER = '''"""{name}: a generated function (benchmark)."""


def handler(event, context):
    return {{"function": "{name}", "version": "{version}", "echo": event.get("name")}}
'''
GIT = ["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.org", "-c", "init.defaultBranch=main"]
# (phase, the line that ends it); `{fn}` is the changed function
PHASES = (
    ("fetch", "deploying commit "),
    ("validate+plan", "{fn}: building image for revision"),
    ("build", "{fn}: starting instance"),
    ("start", "{fn}: health-checking revision"),
    ("health", "{fn}: traffic → "),
    ("switch+drain", "✓ {fn}: "),
)
_current: list[subprocess.Popen[str]] = []  # the process under way, killed when the run is cut short


@dataclass
class Bench:
    root: Path  # the temporary directory
    project: str
    env: dict[str, str]
    clone: Path = field(init=False)
    hooked: Path = field(init=False)
    plain: Path = field(init=False)

    def __post_init__(self) -> None:
        self.clone, self.hooked, self.plain = self.root / "clone", self.root / "hooked.git", self.root / "plain.git"

    def run(self, command: list[str], cwd: Path | None = None, timeout: float = 300) -> tuple[float, str]:
        start = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=cwd or self.root,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _current.append(process)
        out, _ = process.communicate(timeout=timeout)
        _current.remove(process)  # still listed when cut short: cleanup kills it
        elapsed = time.perf_counter() - start
        if process.returncode != 0:
            tail = "\n".join(out.splitlines()[-30:])
            raise SystemExit(f"{' '.join(command[:4])} ... exited {process.returncode}; the last lines:\n{tail}")
        return elapsed, out

    def fnctl(self, *args: str, cwd: Path | None = None) -> tuple[float, str]:
        return self.run(fnctl_command() + list(args), cwd=cwd)

    def write(self, name: str, version: str) -> None:
        source = self.clone / "functions" / name
        source.mkdir(parents=True, exist_ok=True)
        (source / "main.py").write_text(HANDLER.format(name=name, version=version))

    def commit(self, message: str) -> None:
        self.run(GIT + ["add", "-A"], cwd=self.clone)
        self.run(GIT + ["commit", "-q", "-m", message], cwd=self.clone)


def fnctl_command() -> list[str]:
    script = Path(sys.executable).with_name("fnctl")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fnctl"]


def setup(bench: Bench, functions: int) -> None:
    """The project in a clone, the two bare repositories, the hook on one of them."""
    bench.fnctl("init", str(bench.clone), "--name", bench.project, "--force")
    names = [TARGET] + [f"fn-{i:02d}" for i in range(1, functions - 1)]
    for name in names:
        bench.write(name, "A")
        (bench.clone / "manifests" / f"{name}.yaml").write_text(
            function_manifest(
                name,
                env={"GREETING": "hello"},
                scaling={"minInstances": 1, "maxInstances": 2},
                parameters={"type": "object", "properties": {"name": {"type": "string"}}},
                healthCheck=[{"event": {"name": "probe"}}],
                rollout={"strategy": "immediate"},
            )
        )
    for bare in (bench.hooked, bench.plain):
        bench.run(GIT + ["init", "-q", "--bare", str(bare)])
    bench.fnctl("hook", "install", "--repo", str(bench.hooked), "--state", bench.env["FNCTL_STATE"])
    bench.run(GIT + ["init", "-q"], cwd=bench.clone)
    for remote, bare in (("hooked", bench.hooked), ("plain", bench.plain)):
        bench.run(GIT + ["remote", "add", remote, str(bare)], cwd=bench.clone)
    bench.commit("benchmark project")


# ---- a push, its remote lines stamped on arrival ----


@dataclass
class Push:
    total: float  # push start -> the `git push` process exited
    lines: list[tuple[float, str]]  # (seconds since push start, remote line)
    answered: float | None = None  # push start -> the new version first answered an invocation
    cli_invoke: float | None = None  # `fnctl invoke --direct` run after the push returned (whole process)

    def at(self, marker: str) -> float:
        found = [t for t, line in self.lines if line.startswith(marker)]
        if not found:
            raise SystemExit(f"no `{marker}` line in the push's output:\n" + "\n".join(l for _, l in self.lines))
        return found[0]

    def phases(self, function: str) -> dict[str, float]:
        marks = [0.0] + [self.at(marker.format(fn=function)) for _, marker in PHASES]
        return {name: marks[n + 1] - marks[n] for n, (name, _) in enumerate(PHASES)}


def push(bench: Bench, remote: str, on_line: Callable[[str, float], None] = lambda _l, _t: None) -> Push:
    start = time.perf_counter()
    process = subprocess.Popen(
        GIT + ["push", remote, "HEAD:main"],
        cwd=bench.clone,
        env=bench.env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        bufsize=1,
        start_new_session=True,
    )
    _current.append(process)
    lines: list[tuple[float, str]] = []
    assert process.stderr is not None
    for raw in process.stderr:  # text mode: git's \r-separated progress becomes lines too
        stamp = time.perf_counter() - start
        if raw.startswith("remote: "):
            line = raw.removeprefix("remote: ").rstrip()
            lines.append((stamp, line))
            on_line(line, start)
    code = process.wait(timeout=300)
    _current.remove(process)  # still listed when cut short: cleanup kills it
    total = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"git push {remote} exited {code}:\n" + "\n".join(l for _, l in lines))
    return Push(total, lines)


class Poller:
    """Invokes the changed function in this process until `version` answers; started from a remote line."""

    def __init__(self, bench: Bench, version: str) -> None:
        self.bench, self.version = bench, version
        self.start: float | None = None
        self.answered: float | None = None
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def on_line(self, line: str, start: float) -> None:
        if self.start is None and line.startswith(f"{TARGET}: health-checking revision"):
            self.start = start
            self.thread.start()

    def _poll(self) -> None:
        from fnctl.commands.invoke import invoke_deployed
        from fnctl.errors import FnctlError
        from fnctl.manifest.project import load_project
        from fnctl.state.location import StateLocation

        project = load_project(self.bench.clone)
        state = StateLocation(Path(self.bench.env["FNCTL_STATE"]))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                outcome, _ = invoke_deployed(
                    project, state, TARGET, {"name": "bench"}, 20, None, key=None, logs=False, direct=True
                )
                if outcome.ok and isinstance(outcome.result, dict) and outcome.result.get("version") == self.version:
                    assert self.start is not None
                    self.answered = time.perf_counter() - self.start
                    return
            except FnctlError:
                pass  # between instances: the poll goes on
            time.sleep(0.02)

    def wait(self) -> float | None:
        if self.start is not None:
            self.thread.join(timeout=90)
        return self.answered


def change(bench: Bench, version: str) -> tuple[Push, Push]:
    """One function's code set to `version`, committed, pushed to `plain` then to `hooked`; serving verified."""
    bench.write(TARGET, version)
    bench.commit(f"{TARGET}: version {version}")
    plain = push(bench, "plain")
    poller = Poller(bench, version)
    hooked = push(bench, "hooked", poller.on_line)
    hooked.answered = poller.wait()
    hooked.cli_invoke, out = bench.fnctl(
        "invoke", TARGET, "--direct", "-d", '{"name": "cli"}', "-o", "json", cwd=bench.clone
    )
    if f'"version": "{version}"' not in out:
        raise SystemExit(f"after the push, `fnctl invoke {TARGET}` did not answer version {version}:\n{out}")
    if hooked.answered is None:
        raise SystemExit(f"version {version} never answered an invocation:\n" + "\n".join(l for _, l in hooked.lines))
    if not any(line.startswith("fnctl: main: DEPLOYED") for _, line in hooked.lines):
        raise SystemExit("the hook did not report DEPLOYED:\n" + "\n".join(l for _, l in hooked.lines))
    return plain, hooked


# ---- no-op sync ----


def noop(bench: Bench, runs: int, uncached: Bench | None) -> tuple[dict[str, float], float]:
    """Interleaved, so that a noisy moment slows all alike: medians; and the median fetch sync reports.
    `uncached`: the same sync with the environment's PYTHONDONTWRITEBYTECODE (fnctl compiled at each start)."""
    sync = ["sync", "--repo", str(bench.hooked), "--ref", "main"]
    commands: dict[str, Callable[[], float]] = {
        "python -c 'import fnctl'": lambda: bench.run([sys.executable, "-c", "import fnctl"])[0],
        "fnctl --version": lambda: bench.fnctl("--version")[0],
        "fnctl sync (no-op)": lambda: _noop_sync(bench, sync),
    }
    fetches: list[float] = []

    def json_sync() -> float:
        elapsed, out = bench.fnctl(*sync, "-o", "json")
        report = json.loads(out)
        assert report["decision"] == "nothing" and report["apply"] is None, out
        fetches.append(report["timings"]["fetch"])
        return elapsed

    commands["fnctl sync -o json (no-op)"] = json_sync
    if uncached is not None:
        commands["fnctl sync (no-op), no bytecode"] = lambda: _noop_sync(uncached, sync)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for run in commands.values():  # warm the file cache and the bytecode
        run()
    fetches.clear()
    for _ in range(runs):
        for name, run in commands.items():
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}, statistics.median(fetches)


def _noop_sync(bench: Bench, sync: list[str]) -> float:
    elapsed, out = bench.fnctl(*sync)
    if "already live: nothing to do" not in out:
        raise SystemExit(f"the sync of the live commit was not a no-op:\n{out}")
    return elapsed


# ---- cleanup, bounds ----


def cleanup(project: str) -> None:
    for process in list(_current):  # a push under way (and its hook: same session), killed by its group id
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    if _current:
        time.sleep(1)  # an engine call the killed hook had sent (a container being created) completes first
    remove_project(project)


def _stop(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGALRM:
        raise TimeoutError("the benchmark ran past --timeout")
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=5, help="functions in the project (>= 2)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run fnctl with the environment's bytecode settings as they are",
    )
    args = parser.parse_args()

    load_at_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="fnctl-bench-sync-"))
    project = f"bench-sync-{secrets.token_hex(3)}"
    env = os.environ | {
        "FNCTL_BASE_IMAGE": os.environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm"),
        "FNCTL_STATE": str(workdir / "state" / "state.db"),
        "XDG_CACHE_HOME": str(workdir / "cache"),
        "NO_COLOR": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    inherited = dict(env)  # the environment's own bytecode settings
    if not args.no_bytecode_cache:  # as installed: bytecode compiled once, here in the temporary directory
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    os.environ.update({k: env[k] for k in ("FNCTL_STATE", "XDG_CACHE_HOME", "FNCTL_BASE_IMAGE")})
    bench = Bench(workdir, project, env)
    for signum in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    signal.alarm(args.timeout)
    warm: list[tuple[Push, Push]] = []
    built: list[tuple[Push, Push]] = []
    try:
        setup(bench, max(args.functions, 2))
        bench.run(GIT + ["push", "-q", "plain", "HEAD:main"], cwd=bench.clone)
        first = push(bench, "hooked")
        first.at("fnctl: main: DEPLOYED")
        change(bench, "B")  # B's image is built here: from now on A and B are both in the image cache
        for i in range(args.runs):
            warm.append(change(bench, "A" if i % 2 == 0 else "B"))
            built.append(change(bench, f"C{i}-{secrets.token_hex(2)}"))
        uncached = None
        if os.environ.get("PYTHONDONTWRITEBYTECODE") and not args.no_bytecode_cache:
            uncached = Bench(workdir, project, inherited)
        noops, fetch = noop(bench, args.runs, uncached)
    finally:
        signal.alarm(0)
        cleanup(project)
        shutil.rmtree(workdir, ignore_errors=True)
    report(args, first, warm, built, noops, fetch)
    python_cache = (
        "the environment's bytecode settings"
        if args.no_bytecode_cache
        else "fnctl's bytecode cached (PYTHONPYCACHEPREFIX in the temporary directory), as an installed fnctl has it"
    )
    print(
        f"\n(fnctl ran with {python_cache}; the machine has {os.cpu_count()} cores, shared with other work: "
        f"load average {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)"
    )


# ---- the report ----


def report(
    args: argparse.Namespace,
    first: Push,
    warm: list[tuple[Push, Push]],
    built: list[tuple[Push, Push]],
    noops: dict[str, float],
    fetch: float,
) -> None:
    functions = max(args.functions, 2)
    print(
        f"setup: {functions} functions deployed by the first `git push` in {first.total:.1f} s "
        f"({functions} images built, {functions} instances)"
    )
    print(
        f"\none function's code changed among {functions}, `git push` to the hooked repository, "
        f"medians of {args.runs} runs (seconds):"
    )
    print(f"  {'':34} {'warm cache':>10}  {'built':>8}")
    for name, _ in PHASES:
        print(
            f"  {name:34} {_median(warm, lambda p: p.phases(TARGET)[name]):10.3f}  "
            f"{_median(built, lambda p: p.phases(TARGET)[name]):8.3f}"
        )
        if name == "fetch":
            hook_up: Callable[[Push], float] = lambda p: p.at("fnctl: main: deploying")
            print(
                f"  {'  of which receive + hook start-up':34} {_median(warm, hook_up):10.3f}  "
                f"{_median(built, hook_up):8.3f}"
            )
    rows: list[tuple[str, Callable[[Push], float]]] = [
        ("traffic switched at", lambda p: p.at(f"{TARGET}: traffic → ")),
        ("new version first answered at", lambda p: p.answered or 0.0),
        ("hook reported DEPLOYED at", lambda p: p.at("fnctl: main: DEPLOYED")),
        ("`git push` returned at", lambda p: p.total),
        ("+ `fnctl invoke --direct` answered", lambda p: p.total + (p.cli_invoke or 0.0)),
    ]
    for label, of in rows:
        print(f"  {label:34} {_median(warm, of):10.3f}  {_median(built, of):8.3f}")
    plain_warm = statistics.median(p.total for p, _ in warm)
    plain_built = statistics.median(p.total for p, _ in built)
    print(f"  {'baseline: `git push`, no hook':34} {plain_warm:10.3f}  {plain_built:8.3f}")
    hooked = statistics.median(h.total for _, h in warm)
    print(f"  push with hook / without: x{hooked / plain_warm:.1f} (warm)")
    print(
        "  per run, warm: push returned "
        + _fmt([h.total for _, h in warm])
        + "; built: "
        + _fmt([h.total for _, h in built])
    )
    print(f"  (fnctl invoke --direct alone, whole process: {_median(warm, lambda p: p.cli_invoke or 0.0):.3f} s)")

    print(f"\nno-op sync (the live commit), whole processes, medians of {args.runs} runs:")
    base = noops["fnctl --version"]
    for name, value in noops.items():
        print(f"  {name:34} {value:7.3f} s   x{value / base:.2f} of fnctl --version")
    print(f"  fetch inside the no-op sync (its -o json timings): {fetch:.3f} s")

    serving = _median(warm, lambda p: p.total + (p.cli_invoke or 0.0))
    answered = _median(warm, lambda p: p.answered or 0.0)
    targets = {
        f"push -> new revision serving <= 10 s (warm; answered at {answered:.2f} s, push + CLI invoke "
        f"{serving:.2f} s)": max(serving, answered) <= 10.0,
        f"no-op sync <= 1.5 s ({noops['fnctl sync (no-op)']:.2f} s"
        + (
            f"; {noops['fnctl sync (no-op), no bytecode']:.2f} s without bytecode cache)"
            if "fnctl sync (no-op), no bytecode" in noops
            else ")"
        ): noops["fnctl sync (no-op)"] <= 1.5,
    }
    print()
    for name, ok in targets.items():
        print(f"{'MET    ' if ok else 'NOT MET'}  {name}")


def _median(pushes: list[tuple[Push, Push]], value: Callable[[Push], float]) -> float:
    return statistics.median(value(hooked) for _, hooked in pushes)


def _fmt(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in values) + ")"


if __name__ == "__main__":
    main()
