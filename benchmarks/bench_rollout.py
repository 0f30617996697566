"""Safety figures of progressive rollouts (issue 6), against a real engine, a real gateway (`fnctl serve`) and
live keep-alive load through it.

One throw-away project (tests/rollout_helpers.py: function `fn`, whose code version and failure rate are set
per deploy) and one gateway serve all four figures, in order:

1. blue-green promote and rollback under load: `--repeats` times (default 10), a new code version is applied
   as a blueGreen preview (autoPromotionEnabled: false, so `fnctl apply` stops at the gate, exit 4),
   `fnctl promote fn` switches it to 100% (exit 0), and once the gateway serves it, `fnctl rollback fn`
   (within scaleDownDelay, so the old revision is still warm) switches back. Target: 0 failed requests
   over the whole sequence, at >= 200 requests/s.
2. canary weights: steps setWeight 10, pause {}, setWeight 50, pause {}, then promoted to 100%. At each
   gate, once the gateway has picked up the step's weight (the weight event's time in the store plus the
   gateway's pickup time), `--step-requests` answers (default 1,000) are counted by their X-Fnctl-Revision
   header. Target: the new revision's share within +/-5 percentage points of the step's weight.
3. automatic rollback of a canary whose new revision fails 20% of requests: setWeight 50 then an analysis
   (maxErrorRate 5%, minRequests, interval). Printed: the time from the first failed request to the rollback
   (the `aborted` event's time in the store), how many requests the bad revision served, when minRequests was
   reached (the minRequests-th answer of the new revision seen by the load) and how late the analysis saw the
   traffic. Target: the rollback comes at most one analysis interval after minRequests was reached, plus the
   metrics flush lag (the gateway writes one-second buckets once each second is over, with a flusher that
   runs every second: about 1 s, allowed here as FLUSH_LAG).
4. `kill -9` of the process driving a rollout (FNCTL_TEST_CRASH_AT) at 5 points across deploy and rollout,
   then a restart (`fnctl apply`, or `fnctl rollout status fn -w`); the gateway's own controller loop also
   drives rollouts whenever the lock is free, by design. Target, for each: the rollout completes or rolls
   back, 0 orphan instances (containers labelled for the project that the store does not know, instance rows
   without a running container) once it settles, and 0 failed requests under load during the whole sequence.

    .venv/bin/python benchmarks/bench_rollout.py [--repeats 10] [--step-requests 1000] [--rate 250]

Needs a Docker engine and FNCTL_BASE_IMAGE (default fnctl-base:bookworm). Bounded by --timeout (default
600 s): past it the run stops, cleans up and fails. Exit code 1 when any target is missed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from deploy_helpers import Result  # noqa: E402
from rollout_helpers import Load, Rollouts, rollout_project  # noqa: E402

from fnctl.state import rolloutstore  # noqa: E402
from fnctl.state.auditlog import AuditFilter, audit_records  # noqa: E402

PICKUP = 1.0  # the gateway reloads the routing table every 0.25 s; counting starts this long after a change
FLUSH_LAG = 1.0  # the metrics flush lag allowed on top of one analysis interval (figure 3)
WEIGHT_TOLERANCE = 5.0  # percentage points (figure 2)
MIN_RATE = 200.0  # requests/s (figure 1)

BLUE_GREEN = """\
rollout:
  strategy: blueGreen
  autoPromotionEnabled: false
  scaleDownDelay: 60s
"""

GATED = """\
rollout:
  strategy: canary
  scaleDownDelay: 3s
  steps:
    - setWeight: 10
    - pause: {}
    - setWeight: 50
    - pause: {}
"""

BAD_CANARY = """\
rollout:
  strategy: canary
  scaleDownDelay: 3s
  steps:
    - setWeight: 50
    - analysis: {{maxErrorRate: 0.05, minRequests: {min_requests}, interval: {interval}s}}
    - setWeight: 100
"""

CRASH_CANARY = """\
rollout:
  strategy: canary
  scaleDownDelay: {delay}
  steps:
    - setWeight: 50
    - analysis: {{maxErrorRate: 0.05, minRequests: 30, interval: 1s{checks}}}
    - setWeight: 80
"""
FAILING_CHECK = ", checks: [{event: {name: probe}, expect: {version: never}}]"


@dataclass
class Figure:
    name: str
    measured: str
    target: str
    met: bool


@dataclass
class Bench:
    setup: Rollouts
    rate: float
    clients: int
    figures: list[Figure] = field(default_factory=list)
    serial: int = 0

    def version(self, tag: str) -> str:
        self.serial += 1
        return f"{tag}-{self.serial}"

    def fnctl(
        self, *args: str, expect: tuple[int, ...] | None = None, env: dict[str, str] | None = None, timeout: float = 180
    ) -> Result:
        result = self.setup.project.fnctl("--debug", *args, env=env, timeout=timeout)  # tracebacks of internal errors
        if expect is not None and result.code not in expect:
            tail = "\n".join(result.text.splitlines()[-25:])
            raise SystemExit(f"fnctl {' '.join(args)} exited {result.code}, not {expect}; the last lines:\n{tail}")
        return result

    def load(self) -> Load:
        return Load(self.setup.port, rate=self.rate, clients=self.clients)

    def record(self, name: str, measured: str, target: str, met: bool) -> None:
        self.figures.append(Figure(name, measured, target, met))
        print(f"  -> {name}: {measured} (target: {target}): {'MET' if met else 'MISSED'}", flush=True)

    # ---- the store ----

    def latest_rollout(self) -> Any:
        with self.setup.project.store() as store:
            rows = rolloutstore.rollouts(store, "fn")
            return rows[-1] if rows else None

    def events(self, rollout_id: int) -> list[Any]:
        with self.setup.project.store() as store:
            return list(rolloutstore.events(store, rollout_id))

    def live(self) -> int:
        weights = self.setup.routes()
        return max(weights, key=lambda r: (weights[r], r))


def wait_for(condition: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    """Poll `condition` until it is truthy or `timeout` passes; its last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def rate_of(load: Load) -> tuple[int, float, float]:
    """Answers, seconds and answers per second of a finished load."""
    if len(load.answers) < 2:
        return len(load.answers), 0.0, 0.0
    times = sorted(at for at, _, _ in load.answers)
    seconds = times[-1] - times[0]
    return len(times), seconds, (len(times) - 1) / seconds if seconds > 0 else 0.0


def describe(failed: list[tuple[float, int, str]], phases: list[tuple[float, float, str]]) -> str:
    """Failed answers by status and by the phase they fell in."""
    counts: dict[str, int] = {}
    for at, status, revision in failed:
        phase = next((name for start, end, name in phases if start <= at <= end), "between phases")
        key = f"{phase}: status {status} from r{revision or '?'}"
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{key} x{n}" for key, n in sorted(counts.items()))


# ---- figure 1: blue-green promote and rollback under load ------------------------------------------------


def blue_green(bench: Bench, repeats: int) -> None:
    print(f"\n[1] blue-green promote + rollback under load, {repeats} repeats", flush=True)
    setup = bench.setup
    phases: list[tuple[float, float, str]] = []
    switches: list[tuple[float, int, float, int]] = []  # (promote began, new, rollback began, stable)
    promote_s: list[float] = []
    rollback_s: list[float] = []
    with bench.load() as load:
        for repeat in range(repeats):
            stable = bench.live()
            setup.deploy_code(bench.version("bg"), BLUE_GREEN)
            start = time.time()
            bench.fnctl("apply", expect=(4,))
            phases.append((start, time.time(), "apply (preview)"))
            new = max(setup.routes())
            assert setup.routes() == {stable: 100, new: 0}, setup.routes()
            promoted = time.time()
            bench.fnctl("promote", "fn", expect=(0,))
            promote_s.append(time.time() - promoted)
            assert setup.routes() == {new: 100, stable: 0}, setup.routes()
            served = wait_for(lambda: any(at > promoted and rev == str(new) for at, _, rev in load.answers[-50:]), 10)
            phases.append((promoted, time.time(), "promote"))
            rolled = time.time()
            bench.fnctl("rollback", "fn", expect=(0,))
            rollback_s.append(time.time() - rolled)
            assert setup.routes() == {stable: 100}, setup.routes()
            back = wait_for(
                lambda: any(at > rolled + PICKUP and rev == str(stable) for at, _, rev in load.answers[-50:]), 10
            )
            phases.append((rolled, time.time(), "rollback"))
            switches.append((promoted, new, rolled, stable))
            print(
                f"  repeat {repeat + 1}: r{new} previewed, promoted in {promote_s[-1]:.2f} s "
                f"({'served' if served else 'NOT served'} by the gateway), rolled back to r{stable} in "
                f"{rollback_s[-1]:.2f} s ({'served' if back else 'NOT served'}); "
                f"{len(load.answers)} answers, {len(load.failed())} failed so far",
                flush=True,
            )
    answers, seconds, rate = rate_of(load)
    failed = load.failed()
    print(
        f"  load: {answers} requests in {seconds:.1f} s = {rate:.0f} requests/s over {bench.clients} keep-alive "
        f"connections; failed: {len(failed)}" + (f" ({describe(failed, phases)})" if failed else "")
    )
    print(
        f"  whole commands: promote {min(promote_s):.2f}-{max(promote_s):.2f} s, rollback {min(rollback_s):.2f}-"
        f"{max(rollback_s):.2f} s (process start, the switch, then the drain of the other revision)"
    )
    to_new, to_old = _switch_times(load, switches)
    print(
        f"  as the load saw it: the first answer of the promoted revision {min(to_new):.2f}-{max(to_new):.2f} s "
        f"after `fnctl promote` began; the last answer of the rolled-back revision {min(to_old):.2f}-"
        f"{max(to_old):.2f} s after `fnctl rollback` began"
    )
    bench.record(
        "1. blue-green promote+rollback",
        f"{repeats}+{repeats} switches, {answers} requests at {rate:.0f}/s, {len(failed)} failed",
        f"0 failed at >= {MIN_RATE:.0f}/s",
        not failed and rate >= MIN_RATE,
    )


def _switch_times(load: Load, switches: list[tuple[float, int, float, int]]) -> tuple[list[float], list[float]]:
    to_new, to_old = [], []
    for promoted, new, rolled, _ in switches:
        to_new.append(
            min((at for at, _, rev in load.answers if at >= promoted and rev == str(new)), default=promoted) - promoted
        )
        to_old.append(
            max((at for at, _, rev in load.answers if at >= rolled and rev == str(new)), default=rolled) - rolled
        )
    return to_new, to_old


# ---- figure 2: canary weights as observed ---------------------------------------------------------------


def canary_weights(bench: Bench, per_step: int) -> None:
    print(f"\n[2] canary weights observed over >= {per_step} requests per step", flush=True)
    setup = bench.setup
    stable = bench.live()
    setup.deploy_code(bench.version("weights"), GATED)
    observed: list[tuple[int, int, int, float]] = []  # (wanted, requests, of the new revision, share %)
    with bench.load() as load:
        bench.fnctl("apply", expect=(4,))
        new = max(setup.routes())
        for wanted, promote in ((10, ("promote", "fn")), (50, ("promote", "fn")), (100, None)):
            assert setup.routes().get(new) == wanted, (wanted, setup.routes())
            row = bench.latest_rollout()
            changed = [e.at for e in bench.events(row.id) if e.kind in ("weight", "completed")][-1]
            since = max(changed + PICKUP, time.time())
            window = wait_for(lambda: _window(load, since, per_step), timeout=per_step / bench.rate * 3 + 10)
            if not window:
                raise SystemExit(f"fewer than {per_step} answers at weight {wanted} in time")
            counts = load.by_revision(since)  # answered with 200, by revision
            total = sum(counts.values())
            share = 100.0 * counts.get(str(new), 0) / total
            observed.append((wanted, total, counts.get(str(new), 0), share))
            others = {r: n for r, n in counts.items() if r not in (str(new), str(stable))}
            print(
                f"  step setWeight {wanted}: r{new} answered {counts.get(str(new), 0)} of {total} = {share:.1f}% "
                f"(wanted {wanted}%, off by {share - wanted:+.1f} pp)"
                + (f"; other revisions: {others}" if others else ""),
                flush=True,
            )
            if promote is not None:
                bench.fnctl(*promote, expect=(0, 4))
        failed = load.failed()
    worst = max(abs(share - wanted) for wanted, _, _, share in observed)
    enough = all(total >= per_step for _, total, _, _ in observed)
    bench.record(
        "2. canary weights",
        ", ".join(f"{share:.1f}% for {wanted}% (n={total})" for wanted, total, _, share in observed)
        + f"; worst {worst:.1f} pp; {len(failed)} failed",
        f"+/-{WEIGHT_TOLERANCE:g} pp over >= {per_step} requests per step",
        worst <= WEIGHT_TOLERANCE and enough and not failed,
    )


def _window(load: Load, since: float, count: int) -> bool:
    return sum(1 for at, status, _ in load.answers if at >= since and status == 200) >= count


# ---- figure 3: automatic rollback of a bad canary ----------------------------------------------------------


def bad_canary(bench: Bench, min_requests: int, interval: float, repeats: int) -> None:
    print(
        f"\n[3] canary failing 20% of requests: analysis maxErrorRate 5%, minRequests {min_requests}, "
        f"interval {interval:g}s; {repeats} runs",
        flush=True,
    )
    runs = [_bad_canary_once(bench, min_requests, interval) for _ in range(repeats)]
    bound = interval + FLUSH_LAG
    worst = max(runs, key=lambda run: run[1])
    bench.record(
        "3. bad canary rolled back",
        "; ".join(
            f"{after_failure:.2f} s after 1st failure, {after_reached:.2f} s after minRequests, bad revision served "
            f"{served} ({failed} failed)"
            for after_failure, after_reached, served, failed in runs
        ),
        f"<= {interval:g} s interval + {FLUSH_LAG:g} s flush lag = {bound:g} s after minRequests",
        worst[1] <= bound,
    )


def _bad_canary_once(bench: Bench, min_requests: int, interval: float) -> tuple[float, float, int, int]:
    """One bad canary rolled out and rolled back: (seconds from the first failure to the rollback, seconds
    from minRequests to the rollback, requests the bad revision served, of which failed)."""
    setup = bench.setup
    stable = bench.live()
    setup.deploy_code(
        bench.version("bad"), BAD_CANARY.format(min_requests=min_requests, interval=f"{interval:g}"), fail_rate=0.2
    )
    with bench.load() as load:
        applied = bench.fnctl("apply", expect=(3,))
        time.sleep(PICKUP + 0.5)  # answers still under way to the canary arrive
    row = bench.latest_rollout()
    new = row.canary
    assert setup.routes() == {stable: 100}, setup.routes()
    events = bench.events(row.id)
    weight_at = next(e.at for e in events if e.kind == "weight")
    aborted = next((e for e in events if e.kind == "aborted"), None)
    measurements = [e for e in events if e.kind == "measurement"]
    canary = sorted((at, status) for at, status, rev in load.answers if rev == str(new))
    failures = [at for at, status in canary if status != 200]
    if aborted is None or not failures or len(canary) < min_requests:
        raise SystemExit(
            f"figure 3 did not run as planned: aborted={aborted}, canary answers {len(canary)}, "
            f"failures {len(failures)}\n{applied.text[-2000:]}"
        )
    first_failure = failures[0]
    reached = canary[min_requests - 1][0]
    by_abort = sum(1 for at, _ in canary if at <= aborted.at)
    print(
        f"  r{new} took traffic at t=0 (setWeight 50); first failed request at +{first_failure - weight_at:.2f} s; "
        f"minRequests ({min_requests}) reached at +{reached - weight_at:.2f} s; rolled back at "
        f"+{aborted.at - weight_at:.2f} s"
    )
    for event in measurements:
        seen = event.data.get("requests", 0)
        sent = sum(1 for at, _ in canary if at <= event.at)
        lag = f"{event.at - canary[seen - 1][0]:.2f} s" if 0 < seen <= len(canary) else "?"
        print(
            f"    measurement at +{event.at - weight_at:.2f} s: {event.data.get('outcome')}: {seen} requests seen "
            f"({event.data.get('errors')} errors) of {sent} answered by then: it saw the traffic up to {lag} "
            "before it (flush lag)"
        )
    print(
        f"  the bad revision served {len(canary)} requests ({len(failures)} failed), {by_abort} of them before "
        f"the rollback was recorded; rollback {aborted.at - first_failure:.2f} s after the first failure, "
        f"{aborted.at - reached:.2f} s after minRequests was reached",
        flush=True,
    )
    return aborted.at - first_failure, aborted.at - reached, len(canary), len(failures)


# ---- figure 4: kill -9 of the driving process, then restart -------------------------------------------------


@dataclass(frozen=True)
class Crash:
    point: str  # FNCTL_TEST_CRASH_AT
    what: str
    restart: tuple[str, ...]
    outcome: str  # what the rollout must end as: completed | aborted
    delay: str = "2s"  # scaleDownDelay
    checks: str = ""  # extra analysis fields


CRASHES = (
    Crash(
        "container-started",
        "deploy: the canary's container runs, its row has no container ID yet",
        ("apply",),
        "completed",
    ),
    Crash(
        "rollout-weight",
        "rollout: setWeight 50 committed",
        ("rollout", "status", "fn", "-w", "--timeout", "120"),
        "completed",
    ),
    Crash(
        "rollout-measurement",
        "rollout: the analysis' first measurement recorded, at 50%",
        ("rollout", "status", "fn", "-w", "--timeout", "120"),
        "completed",
    ),
    Crash(
        "rollout-aborted",
        "rollout: the analysis' synthetic check failed, traffic back on stable, canary not stopped yet",
        ("rollout", "status", "fn", "-w", "--timeout", "120"),
        "aborted",
        checks=FAILING_CHECK,
    ),
    Crash(
        "rollout-scaled-down",
        "rollout: completed, scale-down committed, old instance not stopped yet",
        ("apply",),
        "completed",
        delay="0s",
    ),
)
SETTLE_TIMEOUT = 60.0  # for the gateway to stop what a revision left behind once it leaves the table


def crashes(bench: Bench, points: list[str]) -> None:
    chosen = [next(c for c in CRASHES if c.point == point) for point in points]
    print(f"\n[4] kill -9 of the driving process at {len(chosen)} points, then restart, under load", flush=True)
    results: list[tuple[Crash, bool, str]] = []
    phases: list[tuple[float, float, str]] = []
    with bench.load() as load:
        for crash in chosen:
            start = time.time()
            ok, detail = _crash_once(bench, crash)
            phases.append((start, time.time(), crash.point))
            results.append((crash, ok, detail))
            print(
                f"  {crash.point} ({crash.what}): {'OK' if ok else 'FAILED'}: {detail}; "
                f"{len(load.failed())} failed requests so far",
                flush=True,
            )
    failed = load.failed()
    answers, seconds, rate = rate_of(load)
    print(
        f"  load: {answers} requests in {seconds:.1f} s = {rate:.0f}/s; failed: {len(failed)}"
        + (f" ({describe(failed, phases)})" if failed else "")
    )
    for crash, ok, detail in results:
        bench.record(f"4. kill -9 at {crash.point}", detail, f"{crash.outcome}, 0 orphans", ok)
    bench.record("4. requests during the crashes", f"{answers} requests, {len(failed)} failed", "0 failed", not failed)


def _crash_once(bench: Bench, crash: Crash) -> tuple[bool, str]:
    setup = bench.setup
    stable = bench.live()
    with setup.project.store() as store:
        newest = max(r.number for r in store.revisions("fn"))
    setup.deploy_code(bench.version("crash"), CRASH_CANARY.format(delay=crash.delay, checks=crash.checks))
    killed = bench.fnctl("apply", env={"FNCTL_TEST_CRASH_AT": crash.point})
    killed_at = time.time()
    if killed.code != -9:
        return False, f"fnctl apply was not killed at {crash.point} (exit {killed.code}): {killed.text[-1500:]}"
    after_kill = setup.routes()
    restart = bench.fnctl(*crash.restart)
    left = _orphans(bench, unrouted=True)  # what the restart left for the gateway to clean up
    row = bench.latest_rollout()
    if row is None or row.canary <= newest:
        return False, f"no rollout of a new revision after the restart (exit {restart.code}): {restart.text[-500:]}"
    winner = row.canary if crash.outcome == "completed" else stable
    started = time.monotonic()
    settled = wait_for(lambda: _settled(bench, row.id, winner), SETTLE_TIMEOUT, step=0.25)
    took = time.monotonic() - started
    orphans = _orphans(bench)
    row = bench.latest_rollout()
    events = bench.events(row.id)
    kinds = [e.kind for e in events]
    with setup.project.store() as store:
        revisions = [f"r{r.number} {r.status.value}" for r in store.revisions("fn") if r.number > newest]
        drivers = sorted(
            {
                e.command
                for e in audit_records(store, AuditFilter(target="fn"), limit=200)
                if e.at > killed_at and e.action.startswith(("route", "rollout"))
            }
        )
    measured = next((e.data.get("outcome") for e in events if e.kind == "measurement"), None)
    repeated = [k for k in ("started", "completed", "aborted", "scaled-down") if kinds.count(k) > 1]
    repeated += ["weight"] if kinds.count("weight") > 2 else []
    half = sum(after_kill.values()) != 100
    detail = (
        f"killed: traffic {rollout_text(after_kill)}"
        + (f", the first measurement {measured}" if crash.point == "rollout-measurement" else "")
        + f"; restart `fnctl {' '.join(crash.restart)}` exit {restart.code}"
        + (f"; just after it: {'; '.join(left)}" if left else "")
        + f"; driven after the kill by: {', '.join(drivers) or 'nobody'}; {row.state} "
        f"({', '.join(revisions)}), traffic {rollout_text(setup.routes())}, "
        f"{'settled' if settled else 'NOT settled'} {took:.1f} s after the restart; orphans: "
        f"{'; '.join(orphans) if orphans else 0}; events: {' '.join(kinds)}"
        + (f"; REPEATED: {repeated}" if repeated else "")
        + ("; HALF-APPLIED WEIGHTS" if half else "")
    )
    ok = (
        settled
        and not orphans
        and row.state == crash.outcome
        and not repeated
        and not half
        and restart.code in ((0,) if crash.outcome == "completed" else (3,))
    )
    return ok, detail


def rollout_text(weights: dict[int, int]) -> str:
    return ", ".join(f"r{r}={w}%" for r, w in sorted(weights.items()))


def _settled(bench: Bench, rollout_id: int | None, winner: int) -> bool:
    """The rollout over (completed and scaled down, or aborted), all traffic on `winner`, and the engine as
    the store says: each instance row of a routed revision backed by its running container, nothing else."""
    row = bench.latest_rollout()
    if row is None or row.id != rollout_id or row.state not in ("completed", "aborted"):
        return False
    if row.state == "completed" and not row.detail.get("scaledDown"):
        return False
    if bench.setup.routes() != {winner: 100}:
        return False
    return not _orphans(bench, unrouted=True)


def _orphans(bench: Bench, *, unrouted: bool = False) -> list[str]:
    """Containers labelled for the project that the store does not know, instance rows without a running
    container (and with `unrouted`, instances of revisions the routing table no longer lists)."""
    project = bench.setup.project
    with project.store() as store:
        rows = store.instances()
        routes = store.routes()
    # One engine call (the SDK's high-level list inspects each container, racing the removal of any of them).
    listed = project.client.api.containers(all=True, filters={"label": f"io.fnctl.project={project.name}"})
    containers = {(c.get("Labels") or {}).get("io.fnctl.instance"): c for c in listed}
    found = [
        f"container {(c.get('Names') or ['?'])[0].lstrip('/')} unknown to the store ({c.get('State')})"
        for key, c in containers.items()
        if key not in {row.id for row in rows}
    ]
    for row in rows:
        container = containers.get(row.id)
        if container is None or container.get("State") != "running" or row.container_id != container.get("Id"):
            found.append(f"row {row.id} (r{row.revision}, {row.state.value}) without its running container")
        elif unrouted and row.revision not in routes.get(row.function, {}):
            found.append(f"instance {row.id} of unrouted r{row.revision}")
    return found


# ---- the run ---------------------------------------------------------------------------------------------


class OutOfTime(Exception):
    pass


class Stopped(Exception):
    """SIGTERM: raised in the main thread so that the gateway, containers and images are cleaned up."""


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise OutOfTime(f"the benchmark passed its --timeout of {seconds} s")

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise Stopped(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGALRM, expire)
    previous_term = signal.signal(signal.SIGTERM, terminate)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        signal.signal(signal.SIGTERM, previous_term)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="blue-green promote+rollback repeats (figure 1)")
    parser.add_argument("--step-requests", type=int, default=1000, help="answers counted per canary step (figure 2)")
    parser.add_argument("--rate", type=float, default=250.0, help="load in requests/s through the gateway")
    parser.add_argument("--clients", type=int, default=5, help="keep-alive connections of the load")
    parser.add_argument(
        "--min-requests", type=int, default=300, help="the bad canary's analysis minRequests (figure 3)"
    )
    parser.add_argument("--interval", type=float, default=2.0, help="the bad canary's analysis interval, s (figure 3)")
    parser.add_argument("--bad-repeats", type=int, default=5, help="bad canaries rolled out (figure 3)")
    parser.add_argument(
        "--crash-points",
        default=",".join(c.point for c in CRASHES),
        help="comma-separated kill points of figure 4 (default: all five)",
    )
    parser.add_argument("--only", default="1234", help="which figures to run, e.g. 13")
    parser.add_argument("--timeout", type=int, default=600, help="bound of the whole run, s")
    args = parser.parse_args()

    import docker

    client = docker.from_env(timeout=60)
    base_image = os.environ.get("FNCTL_BASE_IMAGE") or "fnctl-base:bookworm"
    os.environ.setdefault("CI", "true")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fnctl-bench-rollout-") as tmp:
        with rollout_project(Path(tmp) / "project", client, base_image) as setup:  # removes what it made
            bench = Bench(setup, args.rate, args.clients)
            print(
                f"project {setup.project.name}: gateway on {setup.url}; load {args.rate:g} requests/s over "
                f"{args.clients} keep-alive connections",
                flush=True,
            )
            try:
                with deadline(args.timeout):  # off again before the clean-up
                    setup.deploy_code(bench.version("base"), BLUE_GREEN)
                    bench.fnctl("apply", expect=(0,))
                    setup.start_gateway()
                    if "1" in args.only:
                        blue_green(bench, args.repeats)
                    if "2" in args.only:
                        canary_weights(bench, args.step_requests)
                    if "3" in args.only:
                        bad_canary(bench, args.min_requests, args.interval, args.bad_repeats)
                    if "4" in args.only:
                        crashes(bench, args.crash_points.split(","))
            except Exception as exc:  # noqa: BLE001 - recorded as a missed target, the summary still prints
                traceback.print_exc()
                bench.record("run", f"stopped: {type(exc).__name__}: {exc}", "runs to the end", False)
            except SystemExit as exc:
                bench.record("run", f"stopped: {exc}", "runs to the end", False)
    print(f"\nsummary ({time.monotonic() - began:.0f} s)")
    width = max(len(f.name) for f in bench.figures)
    for figure in bench.figures:
        print(
            f"  {'MET   ' if figure.met else 'MISSED'} {figure.name.ljust(width)}  {figure.measured}  "
            f"[target: {figure.target}]"
        )
    return 0 if all(f.met for f in bench.figures) else 1


if __name__ == "__main__":
    sys.exit(main())
