"""A Trigger's hook settings (order, timeout, failurePolicy, disableAfter, whenDisabled, retry) are accepted
only on the kinds of trigger that read them: elsewhere `validate` refuses them at their file:line; and a hook
whose function has minInstances 0 is a warning naming the trigger (its timeout includes a cold start)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fnctl.cli.app import app

runner = CliRunner()

FUNCTION = """\
apiVersion: fnctl/v1
kind: Function
metadata: {name: hello}
spec:
  runtime: python3.11
  source: ../src
  handler: main.handler
  access: {roles: [public]}
  scaling: {minInstances: MIN}
---
"""
KINDS = {
    "http": "http: {path: /hello}",
    "cron": 'cron: {schedule: "0 2 * * *"}',
    "manual": "manual: {event: {}}",
    "before": "on: {collection: orders, event: beforeCreate}",
    "after": "on: {collection: orders, event: afterUpdate}",
    "onCommit": "on: {collection: orders, event: onCommit}",
}
SETTINGS = {
    "order": "order: 2",
    "timeout": "timeout: 1s",
    "failurePolicy": "failurePolicy: ignore",
    "disableAfter": "disableAfter: 5",
    "whenDisabled": "whenDisabled: skip",
    "retry": "retry: {maxAttempts: 3}",
}
# Where each setting means something (what the gateway reads).
ACCEPTED = {
    "order": {"before", "after"},
    "timeout": {"before", "after", "manual"},
    "failurePolicy": {"before", "after"},
    "disableAfter": {"before", "after", "onCommit", "manual"},
    "whenDisabled": {"before"},
    "retry": {"onCommit"},
}


def _validate(tmp_path: Path, trigger: str, minimum: int = 1) -> tuple[int, list[str], dict[str, Any]]:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "main.py").write_text("def handler(event, context):\n    return 1\n")
    (tmp_path / "fnctl.toml").write_text('[project]\nname = "t"\nmanifests = ["manifests"]\n')
    (tmp_path / "manifests").mkdir(exist_ok=True)
    (tmp_path / "manifests" / "m.yaml").write_text(FUNCTION.replace("MIN", str(minimum)) + trigger)
    text = runner.invoke(app, ["validate"])
    data = json.loads(runner.invoke(app, ["validate", "-o", "json"]).stdout)
    return text.exit_code, text.stderr.splitlines(), data


def _trigger(kind: str, setting: str | None = None) -> str:
    text = f"apiVersion: fnctl/v1\nkind: Trigger\nmetadata: {{name: t1}}\nspec:\n  function: hello\n  {KINDS[kind]}\n"
    return text + (f"  {SETTINGS[setting]}\n" if setting else "")


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_a_hook_setting_is_refused_on_a_trigger_that_does_not_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, setting: str
) -> None:
    monkeypatch.chdir(tmp_path)
    code, lines, data = _validate(tmp_path, _trigger(kind, setting))
    if kind in ACCEPTED[setting]:
        assert code == 0 and data["valid"] is True, lines
        return
    assert code == 2, lines
    # the setting's own line of the file (the Function and its separator take 10 lines; the 7th of the Trigger; its value)
    [error] = [line for line in lines if "$.spec." in line]
    assert error.startswith(f"manifests/m.yaml:17:{len(setting) + 5}: $.spec.{setting}: {setting} applies to "), error
    assert [e["path"] for e in data["errors"]] == [f"$.spec.{setting}"]


def test_a_hook_whose_function_may_have_no_instance_is_a_warning_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, lines, data = _validate(tmp_path, _trigger("before", "timeout"), minimum=0)
    assert code == 0, lines  # a warning, not an error
    [warning] = [line for line in lines if line.startswith("warning: ")]
    assert warning.startswith("warning: manifests/m.yaml:15:")
    assert "$.spec.function: hook 't1' runs 'hello', which has minInstances 0" in warning
    assert "scaling: {minInstances: 1}" in warning
    assert [w["path"] for w in data["warnings"]] == ["$.spec.function"]
    for kind in ("after", "onCommit", "manual", "http"):
        _, lines, _ = _validate(tmp_path, _trigger(kind), minimum=0)
        warned = [line for line in lines if "minInstances 0" in line]
        assert warned if kind == "after" else not warned, (kind, lines)
    _, lines, _ = _validate(tmp_path, _trigger("before", "timeout"), minimum=1)
    assert not [line for line in lines if line.startswith("warning: ")], lines
