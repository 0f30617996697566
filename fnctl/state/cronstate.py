"""The cron triggers' claimed ticks in the store (`cron_state` table): a tick is run by whoever claims it,
and only one claim of a tick ever succeeds, across restarts and gateways sharing the store. The schedules
and runs are fnctl.gateway.cron's."""

from __future__ import annotations

import time

from fnctl.state.store import Store


def last_tick(store: Store, trigger: str, default: float) -> float:
    """The trigger's last claimed tick, recording `default` when it has none yet."""
    store._execute(
        "INSERT INTO cron_state (trigger, last_tick, updated_at) VALUES (?, ?, ?) ON CONFLICT (trigger) DO NOTHING",
        (trigger, default, time.time()),
    )
    return float(store._query("SELECT last_tick FROM cron_state WHERE trigger = ?", (trigger,))[0][0])


def claim(store: Store, trigger: str, tick: float) -> bool:
    """Atomically take `tick` for this process: true for exactly one claimant, ever. last_tick only grows."""
    return (
        store._execute(
            "UPDATE cron_state SET last_tick = ?, updated_at = ? WHERE trigger = ? AND last_tick < ?",
            (tick, time.time(), trigger, tick),
        )
        == 1
    )
