"""Triggers' health in the store (`trigger_state` table): each data-hook or manual trigger's consecutive
faults (errors, timeouts, limits; an Abort is a verdict, not a fault), its last error, and whether it disabled
itself after `disableAfter` of them. The gateway records faults (`fault`, `succeeded`); `fnctl enable` resets a
trigger (`enable`); `fnctl triggers` and `fnctl status` show them (`states`). Disabling and enabling are audited
by the callers, in the audit log."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fnctl.state.store import Store


@dataclass(frozen=True)
class TriggerState:
    name: str
    faults: int
    last_error: str | None
    disabled_at: float | None  # seconds since the epoch; None: enabled

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


def states(store: Store) -> dict[str, TriggerState]:
    """Every trigger that ever faulted (a trigger with no row is healthy and enabled)."""
    rows = store._query("SELECT trigger, faults, last_error, disabled_at FROM trigger_state ORDER BY trigger")
    return {str(r[0]): TriggerState(str(r[0]), int(r[1]), r[2], r[3]) for r in rows}


def is_disabled(store: Store, trigger: str) -> bool:
    return bool(store._query("SELECT 1 FROM trigger_state WHERE trigger = ? AND disabled_at IS NOT NULL", (trigger,)))


def fault(store: Store, trigger: str, error: str, disable_after: int) -> TriggerState:
    """Count one more consecutive fault; at `disable_after` the trigger is disabled (once: the time it first
    was is kept). Returns the new state (`disabled_at` set by this call when it equals the returned state's)."""
    now = time.time()
    with store.transaction():
        store._execute(
            "INSERT INTO trigger_state (trigger, faults, last_error, disabled_at, updated_at) VALUES (?, 1, ?, NULL, ?) "
            "ON CONFLICT (trigger) DO UPDATE SET faults = trigger_state.faults + 1, last_error = excluded.last_error, "
            "updated_at = excluded.updated_at",
            (trigger, error[:500], now),
        )
        store._execute(
            "UPDATE trigger_state SET disabled_at = ? WHERE trigger = ? AND faults >= ? AND disabled_at IS NULL",
            (now, trigger, disable_after),
        )
    return states(store)[trigger]


def succeeded(store: Store, trigger: str) -> None:
    """A run that was not a fault: the count of consecutive faults starts again (a disabled trigger stays so)."""
    store._execute(
        "UPDATE trigger_state SET faults = 0, updated_at = ? WHERE trigger = ? AND faults > 0 AND disabled_at IS NULL",
        (time.time(), trigger),
    )


def enable(store: Store, trigger: str) -> TriggerState | None:
    """Enable the trigger and reset its count; its state before (None: it never faulted)."""
    before = states(store).get(trigger)
    store._execute("DELETE FROM trigger_state WHERE trigger = ?", (trigger,))
    return before
