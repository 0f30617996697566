"""The slow checks (`fnctl.manifest.slowchecks.SlowChecks`) whole: jsonschema's explanations
(`schemaexplain`) and croniter's reading of cron expressions (`cronsyntax`), for a program that needs them
ready (`fnctl serve`, the tests). The CLI's commands import each half only when it is needed instead.
"""

from __future__ import annotations

from fnctl.manifest import cronsyntax
from fnctl.manifest.schemaexplain import SchemaExplainer


class FullChecks(SchemaExplainer):
    def cron_valid(self, schedule: str) -> bool:
        return cronsyntax.cron_valid(schedule)


CHECKS = FullChecks()
