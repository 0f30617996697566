"""The command line of `validate` and `init`: output, `-o json` and exit codes.

typer's CliRunner calls `fnctl.cli.app` directly, so fnctl's own errors (FnctlError) reach the runner as
exceptions; the exit codes of those paths, which `main()` maps, are checked on a real `python -m fnctl`
process, which must also never print a traceback for bad input.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fnctl import __version__
from fnctl.cli import app

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "invalid"
runner = CliRunner()


def fnctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m fnctl ARGS` in `cwd`, as a user runs it (through main())."""
    return subprocess.run([sys.executable, "-m", "fnctl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


# --- validate --------------------------------------------------------------------------------------------------


def test_validate_the_project_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "valid: 2 files, 2 functions, 3 triggers, 1 view, 1 policy\n"
    assert result.stderr == ""


def test_validate_paths_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["validate", "manifests/rollouts", "manifests/demo/hello.yaml"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "valid: 2 files, 4 functions, 1 trigger, 0 views, 0 policies\n"


def test_validate_an_invalid_project_exits_2_with_every_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(fixture("dangling-reference", tmp_path))
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "manifests/hello.yaml:15:13: $.spec.function: function 'helo' is not defined in these manifests",
        "manifests/hello.yaml:23:13: $.spec.function: function 'sumary' is not defined in these manifests",
        "manifests/hello.yaml:31:30: $.spec.roles.public.invoke[1]: function 'goodbye' is not defined in these manifests",
        "invalid: 3 problems in 1 file",
    ]


def test_validate_json_is_the_same_as_the_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(fixture("limit-over-maximum", tmp_path))
    text = runner.invoke(app, ["validate"])
    data = runner.invoke(app, ["validate", "-o", "json"])
    assert text.exit_code == data.exit_code == 2
    report = json.loads(data.stdout)
    assert report == {
        "valid": False, "files": 1, "functions": 1, "triggers": 0, "views": 0, "policies": 0,
        "errors": [
            {"file": "manifests/hello.yaml", "line": 9, "column": 21, "path": "$.spec.limits.timeout",
             "message": "timeout exceeds the maximum of 15m"},
            {"file": "manifests/hello.yaml", "line": 9, "column": 34, "path": "$.spec.limits.memory",
             "message": "memory exceeds the maximum of 4Gi"},
        ],
    }
    rendered = [f"{e['file']}:{e['line']}:{e['column']}: {e['path']}: {e['message']}" for e in report["errors"]]
    assert rendered == text.stderr.splitlines()[:-1]
    assert data.stderr == ""


def test_validate_json_of_a_valid_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["validate", "manifests", "--output", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"valid": True, "files": 3, "functions": 5, "triggers": 3, "views": 1,
                                         "policies": 1, "errors": []}


def test_version_and_help() -> None:
    version = runner.invoke(app, ["--version"])
    assert (version.exit_code, version.stdout) == (0, f"fnctl {__version__}\n")
    help_ = runner.invoke(app, ["validate", "--help"])
    assert help_.exit_code == 0
    assert "Example: fnctl validate manifests/ -o json" in help_.stdout


# --- init -------------------------------------------------------------------------------------------------------


def test_init_creates_a_project_that_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "my_app"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    created = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert created == [".gitignore", "fnctl.toml", "functions/hello/main.py", "manifests/hello.yaml"]
    assert 'name = "my-app"' in (target / "fnctl.toml").read_text()
    assert (target / "manifests" / "hello.yaml").read_text().startswith("# yaml-language-server: $schema=")
    monkeypatch.chdir(target)
    check = runner.invoke(app, ["validate", "-o", "json"])
    assert check.exit_code == 0, check.output
    assert json.loads(check.stdout) | {"errors": []} == {
        "valid": True, "files": 1, "functions": 1, "triggers": 1, "views": 0, "policies": 0, "errors": []}


def test_init_in_the_current_directory_with_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["init", "--name", "Café Project"]).exit_code == 0
    assert 'name = "caf-project"' in (tmp_path / "fnctl.toml").read_text()
    assert runner.invoke(app, ["validate"]).exit_code == 0


def test_init_with_force_writes_beside_other_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "README.md").write_text("mine\n")
    assert runner.invoke(app, ["init", str(tmp_path), "--force"]).exit_code == 0
    assert (tmp_path / "README.md").read_text() == "mine\n"
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["validate"]).exit_code == 0


def _a_directory_with_a_file(root: Path) -> None:
    (root / "x").mkdir()
    (root / "x" / "notes.txt").write_text("mine\n")


def _a_project_already(root: Path) -> None:
    (root / "x").mkdir()
    (root / "x" / "fnctl.toml").write_text("")


def _a_file(root: Path) -> None:
    (root / "x").write_text("a file\n")


@pytest.mark.parametrize("setup, args, message", [
    (_a_directory_with_a_file, ["init", "x"], "error: x is not empty; use --force to scaffold into it anyway"),
    (_a_project_already, ["init", "x", "--force"], "error: refusing to overwrite x/fnctl.toml"),
    (_a_file, ["init", "x"], "error: x exists and is not a directory"),
])
def test_init_refuses_exit_2(tmp_path: Path, setup: Callable[[Path], None], args: list[str], message: str) -> None:
    setup(tmp_path)
    done = fnctl(*args, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", message + "\n")


# --- exit codes and no traceback, through main() -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["yaml-python-tag", "yaml-billion-laughs", "envelope-binary-file", "yaml-duplicate-key",
                                  "handler-syntax-error", "envelope-unknown-kind"])
def test_bad_manifests_exit_2_without_a_traceback(name: str, tmp_path: Path) -> None:
    done = fnctl("validate", cwd=fixture(name, tmp_path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.splitlines()[-1].startswith("invalid: 1 problem in ")


def test_a_deeply_nested_file_exits_2_without_a_crash(tmp_path: Path) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "deep.yaml").write_text("[" * 200_000 + "]" * 200_000)
    done = fnctl("validate", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == "manifests/deep.yaml:1:201: $: document is nested too deeply (over 200 levels)"


@pytest.mark.parametrize("config, message", [
    ("[project\nname = 1\n", "error: {path}: invalid TOML: Expected ']' at the end of a table declaration (at line 1, column 9)"),
    ('[project]\nname = "Bad Name"\n', "error: {path}: project.name: must be a DNS label: lower-case letters, digits and "
                                       "'-', at most 63 characters, starting and ending with a letter or digit, got 'Bad Name'"),
])
def test_a_bad_fnctl_toml_exits_2(tmp_path: Path, config: str, message: str) -> None:
    (tmp_path / "fnctl.toml").write_text(config)
    done = fnctl("validate", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, message.format(path=tmp_path / "fnctl.toml") + "\n")


def test_validate_a_missing_path_exits_2(tmp_path: Path) -> None:
    done = fnctl("validate", "nowhere", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, "nowhere: $: no such file or directory: nowhere\ninvalid: 1 problem in 0 files\n")


def test_a_usage_error_exits_2(tmp_path: Path) -> None:
    done = fnctl("validate", "--bogus", cwd=tmp_path)
    assert done.returncode == 2
    assert "No such option: --bogus" in done.stderr and "Traceback" not in done.stderr


def test_exit_codes_of_a_real_process(tmp_path: Path) -> None:
    assert fnctl("validate", cwd=REPO).returncode == 0
    assert fnctl("--version", cwd=tmp_path).stdout == f"fnctl {__version__}\n"
    assert fnctl("validate", cwd=fixture("schema-enum", tmp_path)).returncode == 2
