"""Who may use the dashboard (pure: the `ui` grant of Policies), and how it is turned on (`--ui`,
`gateway.ui`), without a browser or an engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fnctl.dashboard.access import Action, granted, may
from fnctl.gateway.serve import options_for
from fnctl.manifest.project import load_project

POLICIES = {
    "a": {"roles": {"release": {"ui": ["*"]}, "dev": {"ui": ["read", "promote"]}, "svc": {"invoke": ["*"]}}},
}


def test_the_ui_grant_names_each_action_and_star_grants_all() -> None:
    assert all(may(("release",), POLICIES, action) for action in Action)
    assert may(("dev",), POLICIES, Action.READ) and may(("dev",), POLICIES, Action.PROMOTE)
    assert not may(("dev",), POLICIES, Action.ABORT) and not may(("dev",), POLICIES, Action.ROLLBACK)
    assert granted(("dev",), POLICIES) == ["read", "promote"]


def test_invoke_grants_and_unknown_roles_give_no_dashboard_access() -> None:
    assert granted(("svc",), POLICIES) == []  # `invoke: ["*"]` is not a ui grant
    assert granted((), POLICIES) == [] and granted(("nobody",), POLICIES) == []


def test_gateway_ui_in_fnctl_toml_or_the_flag_turns_the_dashboard_on(tmp_path: Path) -> None:
    (tmp_path / "fnctl.toml").write_text('[project]\nname = "demo"\n', encoding="utf-8")
    project = load_project(tmp_path)
    assert not options_for(project).ui
    assert options_for(project, ui=True).ui
    (tmp_path / "fnctl.toml").write_text('[project]\nname = "demo"\n[gateway]\nui = true\n', encoding="utf-8")
    assert options_for(load_project(tmp_path)).ui


def test_serve_help_shows_ui_with_an_example() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "fnctl", "serve", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "--ui" in shown and "fnctl serve --ui" in shown
