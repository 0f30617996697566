"""Who may use the dashboard, decided purely from the live Policies: a role's `ui` grant lists what it may do:
`read` (every page and /v1/ read), and each action by the name of its command (`promote`, `abort`, `retry`,
`rollback`, `enable` a trigger, `replay` dead letters); `*` grants them all. (A manual trigger's Run is the
data plane's own `POST /v1/triggers/NAME/run`, under its `run` grant.) Anonymous callers may do nothing (401); others without the grant get 403."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

UI_GRANT = "ui"
ALL = "*"


class Action(StrEnum):
    READ = "read"
    PROMOTE = "promote"
    ABORT = "abort"
    RETRY = "retry"
    ROLLBACK = "rollback"
    ENABLE = "enable"
    REPLAY = "replay"


def may(roles: tuple[str, ...], policies: Mapping[str, Mapping[str, Any]], action: Action) -> bool:
    """Does a Policy grant one of `roles` the dashboard's `action` (or `*`)?"""
    held = set(roles)
    for policy in policies.values():
        for role, grant in policy.get("roles", {}).items():
            if role in held and isinstance(grant, Mapping):
                granted = grant.get(UI_GRANT, ())
                if action.value in granted or ALL in granted:
                    return True
    return False


def granted(roles: tuple[str, ...], policies: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every action `roles` may take (the page shows only the buttons that will work)."""
    return [action.value for action in Action if may(roles, policies, action)]
