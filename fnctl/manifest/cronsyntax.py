"""Whether a cron expression is one the gateway's scheduler (`gateway.cron`, croniter) reads: the cron half of
the slow checks (`fnctl.manifest.slowchecks`). croniter costs ~0.07 s to import (measured), so only a
project with a cron trigger loads this module (`fnctl.cli.slowchecks`).
"""

from __future__ import annotations

from croniter import croniter


def cron_valid(schedule: str) -> bool:
    return bool(croniter.is_valid(schedule))
