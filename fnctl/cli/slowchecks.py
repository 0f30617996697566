"""The manifest package's slow checks (`fnctl.manifest.slowchecks`) as the CLI hands them in: a stand-in that
imports each half the first time a command needs it: jsonschema and referencing (`manifest.schemaexplain`)
when a value fails its compiled schema check, croniter (`manifest.cronsyntax`) when a cron trigger is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

from fnctl.manifest.diagnostics import JsonPath
from fnctl.manifest.slowchecks import install

if TYPE_CHECKING:
    from fnctl.manifest.schemaexplain import SchemaExplainer


@cache
def _schemas() -> SchemaExplainer:
    # Start-up time: jsonschema and referencing cost ~0.12 s to import (measured), which `fnctl validate` of
    # valid manifests, `invoke --local` and `--help` never need.
    from fnctl.manifest.schemaexplain import SchemaExplainer

    return SchemaExplainer()


class _OnFirstUse:
    def kind_errors(self, kind: str, data: Any) -> Iterator[tuple[JsonPath, str]]:
        return _schemas().kind_errors(kind, data)

    def schema_problem(self, schema: Any) -> str | None:
        return _schemas().schema_problem(schema)

    def value_errors(self, schema: Any, value: Any) -> Iterator[tuple[JsonPath, str]]:
        return _schemas().value_errors(schema, value)

    def cron_valid(self, schedule: str) -> bool:
        # Start-up time: croniter costs ~0.07 s to import (measured), for projects with a cron trigger only.
        from fnctl.manifest.cronsyntax import cron_valid

        return cron_valid(schedule)


def install_on_first_use() -> None:
    install(_OnFirstUse())


def install_now() -> None:
    """For a long-running command (`fnctl serve`): a request should not pay the imports."""
    # Imported when the command runs (start-up time, as above): serve needs both halves ready.
    from fnctl.manifest.fullchecks import CHECKS

    install(CHECKS)
