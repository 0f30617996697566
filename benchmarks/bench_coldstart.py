"""Cold starts through the gateway, and taken apart step by step, beside their baselines in the same rounds.

A generated project (temporary directory; every container and image it made is removed afterwards) deploys
`cold` (minInstances 0) and `warm` (minInstances 0, `scaling.warm: paused`), and one `fnctl serve
--idle-timeout 1s` runs in front of them. Each round, interleaved:

- the engine-level steps of one start (benchmarks/coldsteps.py: docker create, docker start, the process's
  exec, the runtime connecting, its ready frame, configure, the first invocation);
- the baselines: `docker create` + `docker start` of a plain container of the same image, and a socket-pair
  round trip between two processes;
- a cold start through the gateway: `POST /invoke/cold` once `cold` has no instance and no container left
  (the engine is not still removing the last one);
- scale from zero with a paused warm instance: `POST /invoke/warm` once its only container is paused.

With `--compare DIR` (a checkout of other fnctl code, e.g. `git archive main fnctl runtime-image schemas`), a
second project is deployed and served by that code, and its cold and warm starts are timed in the same rounds:
an A/B of two versions under the same load.

Targets (issue 18): cold start median <= 150 ms; with a paused warm instance <= 30 ms. The machine is shared:
the load average is printed at the start and the end; medians over --rounds.

With `--profile`, each round also times `docker start` of `true` plain, in the sandbox profile, and in the
profile less one setting at a time, and what the interpreter and the runtime's imports take in the profile
(benchmarks/coldsteps.py, `profile_round` and `interpreter_round`).

With `--trace`, every gateway runs with its cold-start path wrapped in timestamps (benchmarks/coldtrace.py), and
each cold start is printed as spans: the gateway's own steps, the engine's create and start, the runtime's start
and first invocation; and each warm one: the gateway's steps up to the unpause and the invocation it sends at
once, the engine's unpause, the runtime thawed and answering, when the next reserve's create is asked. The order
of the gateways alternates between rounds.

    .venv/bin/python benchmarks/bench_coldstart.py [--rounds 5] [--compare DIR] [--profile] [--trace]

Needs a Docker engine and FNCTL_BASE_IMAGE (default fnctl-base:bookworm). Bounded by --timeout (300 s).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import coldsteps  # noqa: E402 -- beside this file, found through the path set just above
import coldtrace  # noqa: E402
from bench_gateway import (  # noqa: E402
    FUNCTION,
    NOOP,
    REPO,
    Setup,
    _timeout,
    cleanup,
    cold_starts,
    container_states,
    fnctl,
    http_get,
    http_post,
    instances_of,
    until,
)
from benchcommon import free_port, stop_processes  # noqa: E402

from fnctl.deploy.revisionspec import function_from_spec  # noqa: E402
from fnctl.manifest.model import Limits  # noqa: E402
from fnctl.state.store import connect  # noqa: E402

assert REPO.is_dir()


def make_project(code: Path | None) -> Setup:
    root = Path(tempfile.mkdtemp(prefix="fnctl-bench-cold-"))
    name = f"b-{secrets.token_hex(4)}"
    port = free_port()
    (root / "manifests").mkdir()
    (root / "functions" / "noop").mkdir(parents=True)
    (root / "functions" / "noop" / "main.py").write_text(NOOP)
    (root / "fnctl.toml").write_text(
        f'[project]\nname = "{name}"\nmanifests = ["manifests"]\n\n[gateway]\naddress = "127.0.0.1:{port}"\n'
    )
    (root / "manifests" / "functions.yaml").write_text(
        FUNCTION.format(name="cold", min=0, max=1, concurrency=8, pids=64, warm="")
        + FUNCTION.format(name="warm", min=0, max=2, concurrency=8, pids=64, warm=", warm: paused")
    )
    env = os.environ | {
        "FNCTL_STATE": str(root / "state" / "state.db"),
        "FNCTL_BASE_IMAGE": os.environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm"),
    }
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return Setup(root, name, root / "state" / "state.db", env, port)


def serve(setup: Setup, processes: list[subprocess.Popen[bytes]], trace: bool) -> None:
    # --trace: the gateway runs with its cold-start path wrapped in timestamps (benchmarks/coldtrace.py)
    command = [str(Path(coldtrace.__file__))] if trace else ["-m", "fnctl"]
    processes.append(
        subprocess.Popen(
            [sys.executable, *command, "serve", "--idle-timeout", "1s"],
            cwd=setup.root,
            env=setup.env | {"COLDTRACE": str(setup.root / "trace")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    until(lambda: http_get(setup.port, "/readyz")[0] == 200, "the gateway", 120)
    for name in ("cold", "warm"):  # each pool in use once, as in production (the first request builds the pool)
        if http_post(setup.port, f"/invoke/{name}") != 200:
            raise SystemExit(f"invoking {name} through the gateway failed")


SETTLE = 0.5  # seconds after each measurement: the engine's clean-up of a removed container eats CPU meanwhile


def at_rest(setup: Setup) -> bool:
    """No `cold` container (not even one being removed), and `warm` down to its paused reserve alone."""
    return (
        instances_of(setup.port, "cold") == 0.0
        and not container_states(setup.name, "cold")
        and instances_of(setup.port, "warm") == 1.0
        and container_states(setup.name, "warm") == ["paused"]
    )


def quiet(setups: list[Setup]) -> None:
    """Wait until every gateway is at rest, and still is after SETTLE: a reserve thawed for the last request
    still reads as paused while the engine's unpause is under way (the request was sent to it before)."""
    deadline = time.monotonic() + 60
    while True:
        for setup in setups:
            until(lambda: at_rest(setup), "the gateway at rest", max(deadline - time.monotonic(), 1))
        time.sleep(SETTLE)
        if all(at_rest(setup) for setup in setups):
            return


def traced_start(setup: Setup, name: str, label: str, into: dict[str, list[float]]) -> float:
    """One scale from zero of `name` (cold or warm), its gateway's trace events (ms since the request was sent)
    added to `into`; the events of the second after the answer too (the next warm reserve's start)."""
    began = time.monotonic()
    took = cold_starts(setup.port, 1, name, lambda: True)[0]
    time.sleep(1.0)
    events = coldtrace.read(setup.root / "trace", began, time.monotonic())
    seen = coldtrace.timeline(events, began) | {"answered": took * 1000}
    which, prefix = (coldtrace.SPANS, "") if name == "cold" else (coldtrace.WARM_SPANS, "warm ")
    for span, ms in coldtrace.spans(seen, which).items():
        into.setdefault(f"trace:{label}{prefix}{span}", []).append(ms)
    return took


def run(
    setups: list[Setup], rounds: int, processes: list[subprocess.Popen[bytes]], profile: bool, trace: bool
) -> dict[str, list[float]]:
    for setup in setups:
        serve(setup, processes, trace)
    store = connect(setups[0].state)
    revision = store.revision("cold", 1)
    store.close()
    assert revision is not None
    function = function_from_spec("cold", revision.spec, Limits())
    steps = coldsteps.Rounds()
    figures: dict[str, list[float]] = {}
    for round_ in range(rounds):
        quiet(setups)
        coldsteps.instance_round(function, revision.image, steps)
        time.sleep(SETTLE)
        coldsteps.plain_round(revision.image, steps)
        time.sleep(SETTLE)
        coldsteps.socketpair_round(steps)
        if profile:
            coldsteps.profile_round(function, revision.image, steps)
            coldsteps.interpreter_round(function, revision.image, steps)
        # Alternated: the setup measured first in a round follows the engine-level steps' removals directly.
        for index, setup in sorted(enumerate(setups), reverse=bool(round_ % 2)):
            label = "compare:" if index else ""
            for name in ("cold", "warm"):
                quiet(setups)
                if trace:
                    figures.setdefault(label + name, []).append(traced_start(setup, name, label, figures))
                    continue
                figures.setdefault(label + name, []).extend(cold_starts(setup.port, 1, name, lambda: True))
    return figures | {f"step:{k}": v for k, v in steps.steps.items()}


def report(figures: dict[str, list[float]], rounds: int, load_before: float, compare: Path | None) -> None:
    steps = coldsteps.Rounds({k.removeprefix("step:"): v for k, v in figures.items() if k.startswith("step:")})
    print(
        f"cold-start benchmark: medians of {rounds} interleaved rounds; load average {load_before:.2f} at the "
        f"start, {os.getloadavg()[0]:.2f} at the end ({os.cpu_count()} CPUs)"
    )
    missed = []
    plain = steps.median("plain create+start")
    for key, what, target in (
        ("cold", "cold start through the gateway, minInstances 0", 0.150),
        ("warm", "scale from zero, paused warm instance", 0.030),
    ):
        median = statistics.median(figures[key]) * 1000
        runs = ", ".join(f"{t * 1000:.0f}" for t in figures[key])
        print(f"  {what}: {median:.0f} ms (<= {target * 1000:.0f} ms; {median / plain:.2f}x a plain create+start)")
        print(f"    runs: {runs} ms")
        if compare is not None:
            other = statistics.median(figures[f"compare:{key}"]) * 1000
            runs = ", ".join(f"{t * 1000:.0f}" for t in figures[f"compare:{key}"])
            print(
                f"    the code in {compare}, same rounds: {other:.0f} ms (this code: {median / other:.2f}x); {runs} ms"
            )
        if median > target * 1000:
            missed.append(what)
    print("\n".join(coldsteps.report(steps)))
    for label in ("", "compare:"):
        traced = {
            k.removeprefix(f"trace:{label}"): v
            for k, v in figures.items()
            if k.startswith(f"trace:{label}") and (label or not k.startswith("trace:compare:"))
        }
        if traced:
            print(
                f"  through the gateway, step by step ({'the code in ' + str(compare) if label else 'this code'}; ms):"
            )
            spans = [s for s, *_ in coldtrace.SPANS] + ["warm " + s for s, *_ in coldtrace.WARM_SPANS]
            for span in spans:
                runs = ", ".join(f"{ms:.1f}" for ms in traced.get(span, []))
                print(f"    {span:<40}{statistics.median(traced.get(span) or [0.0]):8.1f}   ({runs})")
    print("\nall targets met" if not missed else f"\nmissed: {', '.join(missed)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=300)
    parser.add_argument("--compare", type=Path, default=None, help="another fnctl checkout, timed in the same rounds")
    parser.add_argument(
        "--profile", action="store_true", help="also time docker start per sandbox setting and the runtime's imports"
    )
    parser.add_argument(
        "--trace", action="store_true", help="time each step of the gateway's cold-start path (coldtrace.py)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(args.timeout)
    load_before = os.getloadavg()[0]
    setups = [make_project(None)] + ([make_project(args.compare.resolve())] if args.compare else [])
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for setup in setups:
            fnctl(setup, "apply")
        figures = run(setups, args.rounds, processes, args.profile, args.trace)
    finally:
        signal.alarm(0)
        stop_processes(processes)
        for setup in setups:
            cleanup(setup)
    report(figures, args.rounds, load_before, args.compare)


if __name__ == "__main__":
    main()
