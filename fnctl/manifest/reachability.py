"""Warnings about manifests that are valid but cannot work as written: an HTTP trigger in front of a function
that no role may invoke answers 401 to every caller. Pure: the desired state in, findings out."""

from __future__ import annotations

from collections.abc import Iterator

from fnctl.manifest.model import DesiredState, Finding, TriggerType

ANY_FUNCTION = "*"


def unreachable_http_triggers(state: DesiredState) -> Iterator[Finding]:
    """Each HTTP trigger whose function has no `access.roles` and no Policy role granted `invoke` on it."""
    granted = {target for policy in state.policies for grant in policy.roles.values() for target in grant.invoke}
    functions = {function.name: function for function in state.functions}
    for trigger in state.triggers:
        function = functions.get(trigger.function)
        if trigger.type is not TriggerType.HTTP or function is None:
            continue  # an unknown function is an error of its own
        if function.roles or trigger.function in granted or ANY_FUNCTION in granted:
            continue
        yield (
            trigger,
            ("spec", "function"),
            f"HTTP trigger {trigger.name!r} routes to function {trigger.function!r}, which no role may invoke: "
            "every request will get 401. Grant access with `access: {roles: [public]}` (or the callers' roles) "
            f"in {trigger.function}'s spec, or a Policy role with `invoke: [{trigger.function}]`",
        )
