"""Semantic checks of Triggers: cron schedules and time zones, which of the settings a data hook reads
(`order`, `timeout`, `failurePolicy`, `disableAfter`, `whenDisabled`, `retry`) each kind of trigger takes,
and the warning about hooks whose function may have no instance running. Pure: typed values in, findings out.

A setting a trigger does not read is refused rather than ignored: `timeout: 1s` on an HTTP route or
`failurePolicy: ignore` on an onCommit trigger would otherwise look like a promise the gateway does not keep.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fnctl.manifest.model import DesiredState, Finding, Function, Trigger, TriggerType
from fnctl.manifest.slowchecks import slow_checks

# Which kinds of trigger read each setting, and the message naming where it applies. Kinds: "http", "cron",
# "manual", "before" (before-hooks), "after" (after-hooks), "onCommit".
HOOKS = frozenset({"before", "after"})
SETTINGS: Mapping[str, tuple[frozenset[str], str]] = {
    "order": (HOOKS, "order applies to before- and after-hooks only (several on one event run by order)"),
    "timeout": (
        HOOKS | {"manual"},
        "timeout applies to before- and after-hooks and manual triggers only (other runs and onCommit deliveries "
        "take the function's limits.timeout)",
    ),
    "failurePolicy": (
        HOOKS,
        "failurePolicy applies to before- and after-hooks only (an onCommit event is retried: see retry)",
    ),
    "disableAfter": (
        HOOKS | {"manual", "onCommit"},
        "disableAfter applies to data-event and manual triggers only (HTTP and cron runs are not counted as the "
        "trigger's faults)",
    ),
    "whenDisabled": (
        frozenset({"before"}),
        "whenDisabled applies to before-hooks only (a disabled after-hook is skipped, a disabled onCommit "
        "trigger's events wait until `fnctl enable`)",
    ),
    "retry": (frozenset({"onCommit"}), "retry applies to onCommit triggers only (their events are retried)"),
}


def kind(trigger: Trigger) -> str:
    """The trigger's kind as SETTINGS names it."""
    if trigger.type is not TriggerType.DATA:
        return str(trigger.type.value)
    event = str(trigger.config.get("event", ""))
    return "onCommit" if event == "onCommit" else "before" if event.startswith("before") else "after"


def check_trigger(trigger: Trigger) -> Iterator[Finding]:
    yield from _settings(trigger)
    if trigger.type is TriggerType.CRON:
        yield from _cron(trigger)


def _settings(trigger: Trigger) -> Iterator[Finding]:
    spec = trigger.document.data.get("spec") if trigger.document is not None else None
    if not isinstance(spec, Mapping):
        return
    what = kind(trigger)
    for key, (kinds, message) in SETTINGS.items():
        if key in spec and what not in kinds:
            yield trigger, ("spec", key), message


def _cron(trigger: Trigger) -> Iterator[Finding]:
    at = ("spec", "cron")
    # croniter, through the installed slow checks: ~0.07 s to import (measured), which `validate` (1 s
    # budget for 1,000 functions) and every deploy command would pay for projects without cron.
    schedule = trigger.config["schedule"]
    if not slow_checks().cron_valid(schedule):
        yield trigger, at + ("schedule",), f"invalid cron expression {schedule!r} (expected e.g. '*/5 * * * *')"
    zone = trigger.config.get("timezone")
    if zone is not None:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory of zones, e.g. America
            yield trigger, at + ("timezone",), f"unknown time zone {zone!r} (expected e.g. UTC or Europe/Paris)"


def cold_hooks(state: DesiredState) -> Iterator[Finding]:
    """Warnings: each before- or after-hook whose function has `minInstances: 0`. A hook's `timeout` counts
    from the moment the write asks for a run, waiting for an instance included, so a hook that has to start one
    (a cold start: a second or more) may time out and refuse the write."""
    functions: dict[str, Function] = {function.name: function for function in state.functions}
    for trigger in state.triggers:
        function = functions.get(trigger.function)
        if function is None or kind(trigger) not in HOOKS or function.scaling.min_instances > 0:
            continue
        yield (
            trigger,
            ("spec", "function"),
            f"hook {trigger.name!r} runs {function.name!r}, which has minInstances 0: a hook's timeout includes "
            "waiting for an instance, so a run that has to start one may time out and refuse the write. Set "
            f"`scaling: {{minInstances: 1}}` in {function.name}'s spec",
        )
