"""The dashboard's figures (issue 20), in headless Chromium against a real gateway (`fnctl serve`, gateway.ui)
and a real canary stopped at its gate:

1. rollout page weight: every byte the rollout page loads (the HTML, scripts, stylesheet and JSON, uncompressed,
   from the browser's resource timing). Target <= 200 KB.
2. first render on loopback: from navigation start to the rollout page drawn (the page's
   `fnctl:rollout-rendered` mark), median of --repeats loads, as shipped (index.html's `modulepreload` links
   fetch the five modules at once); baselines in the same run: navigating to /healthz (one tiny JSON), and the
   same page without the `modulepreload` links (a copy of the package served by a second gateway process, so
   the modules load one level of imports at a time); the two again with 50 ms added to every request (Chromium's
   network emulation), where each level of imports costs a round trip. Target <= 300 ms (on loopback).
3. update latency: an event appended to the rollout in the store (its commit time) until the open page shows it
   (a MutationObserver in the page takes the time), median of --repeats; baseline: one GET of the rollout view
   over loopback. Target <= 1 s.

Printed, not asserted.

    .venv/bin/python benchmarks/bench_ui.py [--repeats 10]

Needs a Docker engine, FNCTL_BASE_IMAGE (default fnctl-base:bookworm), chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import docker  # noqa: E402
from browser_helpers import chromium, sign_in, text_of, wait_for  # noqa: E402
from rollout_helpers import call, rollout_project  # noqa: E402

from fnctl.state import rolloutstore  # noqa: E402

GATED = """\
rollout:
  strategy: canary
  steps:
    - setWeight: 30
    - pause: {}
"""
RTT = 50.0  # ms: a page across a network, where the module waterfall costs round trips

POLICY = "apiVersion: fnctl/v1\nkind: Policy\nmetadata: {name: ui}\nspec:\n  roles:\n    operator: {ui: ['*']}\n"
OBSERVE = """
const msg = arguments[0]; window.__seen = null;
const view = document.getElementById('view');
const seen = new MutationObserver(() => {
  if (!window.__seen && view.innerText.includes(msg)) { window.__seen = performance.timeOrigin + performance.now(); seen.disconnect(); }
});
seen.observe(view, {childList: true, subtree: true, characterData: true});
"""


def first_renders(driver: Any, base: str, page: str, repeats: int, rtt: float = 0) -> tuple[list[float], list[float]]:
    """The rollout page's first render (ms from navigation start) and a /healthz navigation, `repeats` times,
    with `rtt` ms added to every request by Chromium's network emulation (0: plain loopback)."""
    driver.execute_cdp_cmd("Network.enable", {})
    conditions = {"offline": False, "latency": rtt, "downloadThroughput": -1, "uploadThroughput": -1}
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", conditions)
    renders, baselines = [], []
    for _ in range(repeats):
        driver.get(f"{base}/healthz")
        baselines.append(driver.execute_script("return performance.getEntriesByType('navigation')[0].duration"))
        driver.get("about:blank")
        driver.get(page)
        wait_for(driver, "the rollout page", lambda d: text_of(d, "#rollout-state") == "paused")
        renders.append(
            driver.execute_script("return performance.getEntriesByName('fnctl:rollout-rendered')[0].startTime")
        )
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {**conditions, "latency": 0})
    return renders, baselines


def _load(averages: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in averages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    base_image = os.environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, rollout_project(Path(tmp) / "p", docker.from_env(), base_image) as setup:
        with (setup.project.root / "fnctl.toml").open("a", encoding="utf-8") as config:
            config.write("ui = true\n")
        (setup.project.root / "manifests" / "policy.yaml").write_text(POLICY, encoding="utf-8")
        setup.deploy_code("one", GATED)
        setup.project.ok("apply")
        setup.start_gateway()
        setup.deploy_code("two", GATED)
        setup.project.fnctl("apply")  # exit 4: at the gate
        key = setup.project.ok("keys", "create", "bench", "--role", "operator").out.strip()
        page = f"{setup.url}/ui/#/rollout/fn"
        with chromium() as driver:
            sign_in(driver, setup.url, key)
            renders, baselines = first_renders(driver, setup.url, page, args.repeats)
            far = first_renders(driver, setup.url, page, args.repeats, RTT)[0]
            weight = driver.execute_script(
                "return performance.getEntriesByType('navigation')[0].decodedBodySize + "
                "performance.getEntriesByType('resource').reduce((n, r) => n + r.decodedBodySize, 0)"
            )
            with setup.project.store() as store:
                rollout_id = rolloutstore.rollouts(store, "fn")[-1].id
            latencies, direct = [], []
            for i in range(args.repeats):
                message = f"bench marker {i} {time.time()}"
                driver.execute_script(OBSERVE, message)
                with setup.project.store() as store:
                    rolloutstore.add_event(store, rollout_id, "ignored", 3, message)
                committed = time.time() * 1000
                wait_for(driver, "the page to show the change", lambda d: d.execute_script("return window.__seen"), 10)
                latencies.append(driver.execute_script("return window.__seen") - committed)
                started = time.perf_counter()
                call(setup.port, "GET", "/v1/functions/fn/rollout/view", headers={"Authorization": f"Bearer {key}"})
                direct.append((time.perf_counter() - started) * 1000)
            # The same page without modulepreload: the gateway restarted from a copy of the package whose
            # index.html lacks those links (the store, the rollout and the signed-in tab stay).
            setup.stop_gateway()
            copy = Path(tmp) / "nopreload"
            shutil.copytree(REPO / "fnctl", copy / "fnctl", ignore=shutil.ignore_patterns("__pycache__"))
            for shared in ("schemas", "runtime-image"):  # beside the package in a source checkout
                (copy / shared).symlink_to(REPO / shared)
            html = copy / "fnctl" / "dashboard" / "static" / "index.html"
            kept = [line for line in html.read_text(encoding="utf-8").splitlines() if "modulepreload" not in line]
            html.write_text("\n".join(kept) + "\n", encoding="utf-8")
            setup.project.env["PYTHONPATH"] = str(copy)
            setup.start_gateway()
            plain, _ = first_renders(driver, setup.url, page, args.repeats)
            plain_far = first_renders(driver, setup.url, page, args.repeats, RTT)[0]
    load_after = os.getloadavg()
    render, baseline = statistics.median(renders), statistics.median(baselines)
    latency, view = statistics.median(latencies), statistics.median(direct)
    far_m, plain_far_m = statistics.median(far), statistics.median(plain_far)
    print(f"load average (1, 5, 15 min): {_load(load_before)} at the start, {_load(load_after)} at the end; 2 cores")
    print(f"rollout page weight: {weight / 1024:.1f} KB uncompressed (target <= 200 KB)")
    print(
        f"first render (modulepreload): median {render:.0f} ms over {args.repeats} loads (max {max(renders):.0f}); "
        f"baselines: /healthz navigation {baseline:.0f} ms (x{render / max(baseline, 0.1):.1f}), without "
        f"modulepreload {statistics.median(plain):.0f} ms (x{render / max(statistics.median(plain), 0.1):.2f}) "
        "(target <= 300 ms)"
    )
    print(
        f"first render with {RTT:.0f} ms added per request (Chromium's network emulation): modulepreload median "
        f"{far_m:.0f} ms; baseline without modulepreload {plain_far_m:.0f} ms (x{far_m / max(plain_far_m, 0.1):.2f})"
    )
    print(
        f"update latency, store commit to page: median {latency:.0f} ms (max {max(latencies):.0f}); baseline one GET "
        f"of the view {view:.0f} ms (x{latency / max(view, 0.1):.1f}) (target <= 1000 ms)"
    )


if __name__ == "__main__":
    main()
