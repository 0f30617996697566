"""The dashboard's figures (issue 20), in headless Chromium against a real gateway (`fnctl serve`, gateway.ui)
and a real canary stopped at its gate:

1. rollout page weight: every byte the rollout page loads (the HTML, scripts, stylesheet and JSON, uncompressed,
   from the browser's resource timing). Target <= 200 KB.
2. first render on loopback: from navigation start to the rollout page drawn (the page's
   `fnctl:rollout-rendered` mark), median of --repeats loads; baseline: navigating to /healthz (one tiny JSON)
   in the same browser. Target <= 300 ms.
3. update latency: an event appended to the rollout in the store (its commit time) until the open page shows it
   (a MutationObserver in the page takes the time), median of --repeats; baseline: one GET of the rollout view
   over loopback. Target <= 1 s.

Printed, not asserted.

    .venv/bin/python benchmarks/bench_ui.py [--repeats 10]

Needs a Docker engine, FNCTL_BASE_IMAGE (default fnctl-base:bookworm), chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
POLICY = "apiVersion: fnctl/v1\nkind: Policy\nmetadata: {name: ui}\nspec:\n  roles:\n    operator: {ui: ['*']}\n"
OBSERVE = """
const msg = arguments[0]; window.__seen = null;
const view = document.getElementById('view');
const seen = new MutationObserver(() => {
  if (!window.__seen && view.innerText.includes(msg)) { window.__seen = performance.timeOrigin + performance.now(); seen.disconnect(); }
});
seen.observe(view, {childList: true, subtree: true, characterData: true});
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    base_image = __import__("os").environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm")
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
            renders, baselines = [], []
            for _ in range(args.repeats):
                driver.get(f"{setup.url}/healthz")
                baselines.append(driver.execute_script("return performance.getEntriesByType('navigation')[0].duration"))
                driver.get("about:blank")
                driver.get(page)
                wait_for(driver, "the rollout page", lambda d: text_of(d, "#rollout-state") == "paused")
                renders.append(
                    driver.execute_script("return performance.getEntriesByName('fnctl:rollout-rendered')[0].startTime")
                )
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
    render, baseline = statistics.median(renders), statistics.median(baselines)
    latency, view = statistics.median(latencies), statistics.median(direct)
    print(f"rollout page weight: {weight / 1024:.1f} KB uncompressed (target <= 200 KB)")
    print(
        f"first render: median {render:.0f} ms over {args.repeats} loads; baseline /healthz navigation "
        f"{baseline:.0f} ms (x{render / max(baseline, 0.1):.1f}) (target <= 300 ms)"
    )
    print(
        f"update latency, store commit to page: median {latency:.0f} ms (max {max(latencies):.0f}); baseline one GET "
        f"of the view {view:.0f} ms (x{latency / max(view, 0.1):.1f}) (target <= 1000 ms)"
    )


if __name__ == "__main__":
    main()
