"""Several gateways on one PostgreSQL state, measured with the gateway's own parts (bench_scale.py's
"gateways" section): each gateway is a process of its own running what `fnctl serve` runs for the purpose —
the routing table's follower (`gateway.table`: StoreTable and TableFollower, the gateway's reload interval) or
the leadership (`gateway.leadership`) — without instances, so the figures are the state's and the network's,
not the engine's.

    python benchmarks/scale_gateways.py follow STATE [--poll-only]   one line "seen <fn> <weights> <time>" per change
    python benchmarks/scale_gateways.py lead STATE                   "leading <time>" when it takes the lead
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fnctl.gateway.leadership import Leadership  # noqa: E402
from fnctl.gateway.request import GatewayLimits  # noqa: E402
from fnctl.gateway.table import StoreTable, TableFollower  # noqa: E402
from fnctl.state import location, pgopener  # noqa: E402

pgopener.install()  # a long-running program, as `fnctl serve`: PostgreSQL's opener whole


class _NoPools:
    async def reconcile(self, routes: Mapping[str, Mapping[int, int]]) -> None:
        pass


async def follow(state: location.StateLocation, poll_only: bool) -> None:
    source = StoreTable(state)
    if poll_only:
        source.listener = None  # the baseline: the gateway's poll alone
    follower = TableFollower(source, _NoPools(), GatewayLimits().reload_interval)
    seen: dict[str, dict[int, int]] = {}

    def changed() -> None:
        now = time.time()
        for name, weights in (follower.table.routes if follower.table else {}).items():
            if seen.get(name) != weights:
                seen[name] = dict(weights)
                print(f"seen {name} {json.dumps(weights, sort_keys=True)} {now:.6f}", flush=True)

    follower.on_change.append(changed)
    await follower.start()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until killed


async def lead(state: location.StateLocation) -> None:
    def on_change(leading: bool) -> None:
        print(f"{'leading' if leading else 'following'} {time.time():.6f}", flush=True)

    print("ready", flush=True)
    await Leadership(state, lambda stop: [], on_change).run(asyncio.Event())


if __name__ == "__main__":
    where = location.parse(sys.argv[2])
    asyncio.run(follow(where, "--poll-only" in sys.argv) if sys.argv[1] == "follow" else lead(where))
