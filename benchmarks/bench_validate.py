"""Speed of `fnctl validate` and `fnctl --help`, as whole processes, against a baseline measured in the same run.

A generated project (in a temporary directory, removed afterwards) holds 1,000 functions (each its own
source directory with a main.py), 1,000 HTTP triggers on distinct routes and 200 views, spread over 50
manifest files. Figures are medians of 5 runs, the runs of fnctl and of the baseline interleaved so that
a noisy machine slows both alike. Every process has its bytecode cached, as an installed package has
(in a folder of the run, whatever PYTHONDONTWRITEBYTECODE says), after one warm-up run of each:

- validate: `fnctl validate` (every check) on that project;
- baseline: a `python -c` script that only loads the same files with PyYAML's safe loader (the C one when
  available, as fnctl uses) and checks every document against the same JSON Schemas with jsonschema,
  without any semantic check;
- help: `fnctl --help`.

Targets (issue): validate <= 1.0 s, validate <= 3x baseline, help <= 0.3 s (wall-clock medians). The CPU time
of each process (user + sys) is printed too: on a shared machine it moves less than the wall clock.

    .venv/bin/python benchmarks/bench_validate.py [--runs 5] [--functions 1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FILES = 50
TARGET_SECONDS, TARGET_RATIO, TARGET_HELP = 1.0, 3.0, 0.3

HANDLER = '''"""fn-{i:04d}: a generated function."""

import json


def handler(event, context):
    return {{"n": {i}, "echo": json.dumps(event)}}
'''

FUNCTION = """\
---
apiVersion: fnctl/v1
kind: Function
metadata:
  name: fn-{i:04d}
  labels: {{team: team-{team}}}
spec:
  runtime: python3.11
  source: ../functions/fn-{i:04d}
  handler: main.handler
  env: {{GREETING: hello, INDEX: "{i}"}}
  limits: {{timeout: 5s, memory: 128Mi, cpu: 0.5, pids: 64, tmp: 16Mi, payload: 1Mi, output: 1Mi}}
  scaling: {{minInstances: 1, maxInstances: 4, concurrency: 8}}
  access: {{roles: [public]}}
  parameters:
    type: object
    properties: {{name: {{type: string, maxLength: {maxlen}}}}}
  healthCheck:
    - event: {{name: probe}}
  rollout:
{rollout}"""

CANARY = """\
    strategy: canary
    expectedTraffic: 50
    steps:
      - setWeight: 10
      - pause: 30s
      - analysis: {maxErrorRate: 0.01, maxP95Latency: 200ms, minRequests: 50}
      - setWeight: 50
      - pause: {}
      - setWeight: 100
"""

TRIGGER = """\
---
apiVersion: fnctl/v1
kind: Trigger
metadata:
  name: fn-{i:04d}-http
spec:
  function: fn-{i:04d}
  http: {{path: "/api/v1/fn-{i:04d}/{{id}}", methods: [GET, POST]}}
"""

VIEW = """\
---
apiVersion: fnctl/v1
kind: View
metadata:
  name: view-{i:04d}
spec:
  function: fn-{i:04d}
  cache: {{ttl: 5m, perCaller: {per_caller}}}
  dependsOn: [orders]
"""

# Loads and schema-checks every document, nothing else: what any YAML + JSON Schema tool must do.
BASELINE = """\
import json, pathlib, sys
import yaml, jsonschema
from referencing import Registry, Resource
schemas = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).glob("*.schema.json")]
registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)
by_kind = {s["title"].split()[-1]: jsonschema.Draft202012Validator(s, registry=registry) for s in schemas}
loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
errors = 0
for path in sorted(pathlib.Path(sys.argv[2]).rglob("*.yaml")):
    for doc in yaml.load_all(path.read_text(), Loader=loader):
        errors += sum(1 for _ in by_kind[doc["kind"]].iter_errors(doc))
print(errors, "schema errors")
"""


def generate(root: Path, functions: int) -> None:
    """A project of `functions` functions, as many HTTP triggers and functions/5 views, in FILES files."""
    (root / "fnctl.toml").write_text('[project]\nname = "bench"\nmanifests = ["manifests"]\n')
    (root / "manifests").mkdir()
    parts: list[list[str]] = [[] for _ in range(FILES)]
    for i in range(functions):
        source = root / "functions" / f"fn-{i:04d}"
        source.mkdir(parents=True)
        (source / "main.py").write_text(HANDLER.format(i=i))
        rollout = CANARY if i % 10 == 0 else "    strategy: immediate\n"
        part = parts[i % FILES]
        part.append(FUNCTION.format(i=i, team=i % 7, maxlen=50 + i, rollout=rollout))
        part.append(TRIGGER.format(i=i))
        if i % 5 == 0:
            part.append(VIEW.format(i=i, per_caller=str(i % 2 == 0).lower()))
    for n, docs in enumerate(parts):
        (root / "manifests" / f"part-{n:02d}.yaml").write_text(
            "# yaml-language-server: $schema=../schemas/manifest.schema.json\n" + "".join(docs)
        )


def bytecode_env(workdir: Path) -> dict[str, str]:
    """The environment of every measured process: bytecode cached as an installed package has it (pip
    compiles it at install), even where PYTHONDONTWRITEBYTECODE is set, in a folder of this run only."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    return env


def timed(command: list[str], cwd: Path, env: dict[str, str], expect: int = 0) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds) of one run of `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def medians(runs: int, commands: dict[str, Callable[[], tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """Each command `runs` times, interleaved, then the median wall-clock and CPU time of each."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, run in commands.items():
            times[name].append(run())
    return {
        name: (statistics.median(t[0] for t in values), statistics.median(t[1] for t in values))
        for name, values in times.items()
    }


def fnctl_command() -> list[str]:
    script = Path(sys.executable).with_name("fnctl")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fnctl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--functions", type=int, default=1000)
    parser.add_argument("--keep", type=Path, help="generate the project here and keep it")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="fnctl-bench-"))
    project = args.keep or workdir / "project"
    try:
        project.mkdir(parents=True)
        generate(project, args.functions)
        fnctl = fnctl_command()
        baseline_command = [sys.executable, "-c", BASELINE, str(REPO / "schemas"), str(project / "manifests")]
        env = bytecode_env(workdir)
        timed(fnctl + ["validate"], project, env)  # warm the file cache and the bytecode of all three
        timed(baseline_command, project, env)
        timed(fnctl + ["--help"], project, env)
        figures = medians(
            args.runs,
            {
                "validate": lambda: timed(fnctl + ["validate"], project, env),
                "baseline": lambda: timed(baseline_command, project, env),
                "help": lambda: timed(fnctl + ["--help"], project, env),
            },
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    (validate, validate_cpu), (baseline, baseline_cpu), (help_, help_cpu) = (
        figures["validate"],
        figures["baseline"],
        figures["help"],
    )
    ratio = validate / baseline
    views = (args.functions + 4) // 5
    print(f"project: {args.functions} functions, {args.functions} HTTP triggers, {views} views in {FILES} files")
    print(f"medians of {args.runs} runs, whole processes ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}):")
    print(f"  fnctl validate   {validate:6.3f} s  (CPU {validate_cpu:.3f} s)  target <= {TARGET_SECONDS} s")
    print(f"  baseline         {baseline:6.3f} s  (CPU {baseline_cpu:.3f} s)  yaml + jsonschema only")
    print(f"  ratio            {ratio:6.2f}x  (CPU {validate_cpu / baseline_cpu:.2f}x)  target <= {TARGET_RATIO}x")
    print(f"  fnctl --help     {help_:6.3f} s  (CPU {help_cpu:.3f} s)  target <= {TARGET_HELP} s")
    missed = [
        name
        for name, ok in (
            ("validate", validate <= TARGET_SECONDS),
            ("ratio", ratio <= TARGET_RATIO),
            ("help", help_ <= TARGET_HELP),
        )
        if not ok
    ]
    print("all targets met" if not missed else f"missed: {', '.join(missed)}")


if __name__ == "__main__":
    main()
