"""The command line of `validate` and `init`: output, `-o json` and exit codes (and every command's exit code
for a name that does not exist).

typer's CliRunner calls `fnctl.cli.app.app` directly, so fnctl's own errors (FnctlError) reach the runner as
exceptions; the exit codes of those paths, which `main()` maps, are checked on a real `python -m fnctl`
process, which must also never print a traceback for bad input.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from polling import wait_until
from typer.testing import CliRunner

from fnctl import __version__
from fnctl.cli.app import PARTS, _app_for, _command_name, _part, app

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "invalid"
runner = CliRunner()


def fnctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m fnctl ARGS` in `cwd`, as a user runs it (through main())."""
    return subprocess.run(
        [sys.executable, "-m", "fnctl", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


# --- validate --------------------------------------------------------------------------------------------------


def test_validate_the_project_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "valid: 3 files, 4 functions, 4 triggers, 1 view, 1 policy, 1 collection\n"
    assert result.stderr == ""


def test_validate_paths_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["validate", "manifests/rollouts", "manifests/demo/hello.yaml"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "valid: 2 files, 4 functions, 1 trigger, 0 views, 0 policies\n"


def test_validate_an_invalid_project_exits_2_with_every_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
        "valid": False,
        "files": 1,
        "functions": 1,
        "triggers": 0,
        "views": 0,
        "policies": 0,
        "errors": [
            {
                "file": "manifests/hello.yaml",
                "line": 9,
                "column": 21,
                "path": "$.spec.limits.timeout",
                "message": "timeout exceeds the maximum of 15m",
            },
            {
                "file": "manifests/hello.yaml",
                "line": 9,
                "column": 34,
                "path": "$.spec.limits.memory",
                "message": "memory exceeds the maximum of 4Gi",
            },
        ],
    }
    rendered = [f"{e['file']}:{e['line']}:{e['column']}: {e['path']}: {e['message']}" for e in report["errors"]]
    assert rendered == text.stderr.splitlines()[:-1]
    assert data.stderr == ""


def test_validate_json_of_a_valid_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["validate", "manifests", "--output", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "valid": True,
        "files": 4,
        "functions": 7,
        "triggers": 4,
        "views": 1,
        "policies": 1,
        "collections": 1,
        "errors": [],
    }


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
        "valid": True,
        "files": 1,
        "functions": 1,
        "triggers": 1,
        "views": 0,
        "policies": 0,
        "errors": [],
    }


@pytest.mark.parametrize(
    ("runtime", "handler_file"),
    [("python3.11", "main.py"), ("nodejs22", "index.mjs"), ("typescript", "src/main.ts")],
)
def test_init_each_runtime_scaffolds_a_function_that_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: str, handler_file: str
) -> None:
    target = tmp_path / "app"
    assert runner.invoke(app, ["init", str(target), "--runtime", runtime]).exit_code == 0
    assert (target / "functions" / "hello" / handler_file).is_file()
    assert f"runtime: {runtime}" in (target / "manifests" / "hello.yaml").read_text()
    # through a real process: a TypeScript scaffold is type-checked by tsc and parsed by esbuild
    done = fnctl("validate", cwd=target)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "valid: 1 file, 1 function, 1 trigger, 0 views, 0 policies\n"


def test_init_refuses_an_unknown_runtime(tmp_path: Path) -> None:
    done = fnctl("init", str(tmp_path / "x"), "--runtime", "cobol", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        "error: unknown runtime 'cobol'; fnctl init knows python3.11, nodejs22, typescript\n",
    )
    assert not (tmp_path / "x").exists()


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


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (_a_directory_with_a_file, ["init", "x"], "error: x is not empty; use --force to scaffold into it anyway"),
        (_a_project_already, ["init", "x", "--force"], "error: refusing to overwrite x/fnctl.toml"),
        (_a_file, ["init", "x"], "error: x exists and is not a directory"),
    ],
)
def test_init_refuses_exit_2(tmp_path: Path, setup: Callable[[Path], None], args: list[str], message: str) -> None:
    setup(tmp_path)
    done = fnctl(*args, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", message + "\n")


# --- exit codes and no traceback, through main() -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "yaml-python-tag",
        "yaml-billion-laughs",
        "envelope-binary-file",
        "yaml-duplicate-key",
        "handler-syntax-error",
        "envelope-unknown-kind",
    ],
)
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
    assert (
        done.stderr.splitlines()[0] == "manifests/deep.yaml:1:201: $: document is nested too deeply (over 200 levels)"
    )


@pytest.mark.parametrize(
    "config, message",
    [
        (
            "[project\nname = 1\n",
            "error: {path}: invalid TOML: Expected ']' at the end of a table declaration (at line 1, column 9)",
        ),
        (
            '[project]\nname = "Bad Name"\n',
            "error: {path}: project.name: must be a DNS label: lower-case letters, digits and "
            "'-', at most 63 characters, starting and ending with a letter or digit, got 'Bad Name'",
        ),
    ],
)
def test_a_bad_fnctl_toml_exits_2(tmp_path: Path, config: str, message: str) -> None:
    (tmp_path / "fnctl.toml").write_text(config)
    done = fnctl("validate", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, message.format(path=tmp_path / "fnctl.toml") + "\n")


@pytest.mark.parametrize(
    "state, message",
    [
        ("mysql://db.internal/shop", "error: unsupported state location 'mysql://db.internal/shop': mysql:// is not"),
        (
            "postgresql://127.0.0.1:1/shop?bogus=1",
            "error: invalid PostgreSQL URL postgresql://127.0.0.1:1/shop?bogus=1",
        ),
    ],
)
def test_a_state_url_fnctl_cannot_use_exits_2_and_creates_nothing(tmp_path: Path, state: str, message: str) -> None:
    done = fnctl("keys", "create", "ci", "--role", "deployer", "--state", state, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith(message), done.stderr
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []  # no ./mysql:/… SQLite file


def test_a_sqlite_state_may_be_given_as_a_url_as_state_migrate_takes_it(tmp_path: Path) -> None:
    done = fnctl("keys", "create", "ci", "--role", "deployer", "--state", "sqlite:state.db", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = fnctl("keys", "list", "--state", str(tmp_path / "state.db"), "-o", "json", cwd=tmp_path)
    assert [key["name"] for key in json.loads(listed.stdout)] == ["ci"]


def test_validate_a_missing_path_exits_2(tmp_path: Path) -> None:
    done = fnctl("validate", "nowhere", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        "nowhere: $: no such file or directory: nowhere\ninvalid: 1 problem in 0 files\n",
    )


def test_validate_outside_any_project_says_so(tmp_path: Path) -> None:
    done = fnctl("validate", cwd=tmp_path)
    assert (done.returncode, done.stderr.splitlines()[0]) == (
        2,
        f"manifests: $: no such file or directory: {tmp_path / 'manifests'} "
        f"(no fnctl.toml in {tmp_path} or above: run `fnctl init`, or name the manifest files)",
    )


def test_a_usage_error_exits_2(tmp_path: Path) -> None:
    done = fnctl("validate", "--bogus", cwd=tmp_path)
    assert done.returncode == 2
    assert "No such option: --bogus" in done.stderr and "Traceback" not in done.stderr


def test_exit_codes_of_a_real_process(tmp_path: Path) -> None:
    assert fnctl("validate", cwd=REPO).returncode == 0
    assert fnctl("--version", cwd=tmp_path).stdout == f"fnctl {__version__}\n"
    assert fnctl("validate", cwd=fixture("schema-enum", tmp_path)).returncode == 2


# --- start-up: only the command asked for, plain output without rich --------------------------------------------


def _names(typer_app: typer.Typer) -> set[str]:
    """The commands and groups `typer_app` would build, those of its parts merged in without a name included."""
    names = {_command_name(c) for c in typer_app.registered_commands}
    for group in typer_app.registered_groups:
        if not isinstance(group.name, str) and group.typer_instance is not None:  # merged without a name
            names |= _names(group.typer_instance)
        else:
            names.add(group.name or "")
    return names


@pytest.mark.parametrize(
    ("args", "only"),
    [
        (["invoke", "--local", "hello"], {"invoke"}),
        (["--debug", "validate", "manifests"], {"validate"}),
        (["sandbox", "check"], {"sandbox"}),
        (["keys", "list", "--help"], {"keys"}),
    ],
)
def test_a_named_command_is_built_alone_and_app_keeps_every_command(args: list[str], only: set[str]) -> None:
    everything = _names(app)
    assert _names(_app_for(args)) == only
    assert _names(app) == everything and only < everything


@pytest.mark.parametrize("part", sorted(PARTS))
def test_the_table_of_parts_names_exactly_the_commands_each_part_defines(part: str) -> None:
    assert set(PARTS[part]) == _names(_part(part).app)


IMPORTED_PARTS = """
import sys
sys.argv = ["fnctl", *sys.argv[1:]]
from fnctl.cli.app import main
try:
    main()
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m.startswith("fnctl.cli.") or m in ("docker", "jsonschema")), file=sys.stderr)
"""


def test_a_named_command_imports_its_part_of_the_cli_alone(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED_PARTS, "invoke", "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert "--keep-warm" in done.stdout
    imported = set(json.loads(done.stderr.strip().splitlines()[-1].replace("'", '"')))
    assert "fnctl.cli.develop" in imported
    assert not imported & {f"fnctl.cli.{part}" for part in PARTS if part != "develop"}


SLOW_LIBRARIES = """
import sys
sys.argv = ["fnctl", *sys.argv[1:]]
from fnctl.cli.app import main
try:
    main()
except SystemExit as exit:
    print(exit.code, file=sys.stderr)
print(sorted(m for m in ("jsonschema", "referencing", "croniter", "docker") if m in sys.modules), file=sys.stderr)
"""


def _validate_loading(project: Path) -> tuple[int, str, list[str]]:
    """`fnctl validate` in `project` (through main()): its exit code, its standard error, the slow libraries
    it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", SLOW_LIBRARIES, "validate"], cwd=project, capture_output=True, text=True, timeout=120
    )
    *said, code, loaded = done.stderr.strip().splitlines()
    return int(code), "\n".join(said), json.loads(loaded.replace("'", '"'))


CRON = """---
apiVersion: fnctl/v1
kind: Trigger
metadata: {name: nightly}
spec:
  function: hello
  cron: {schedule: "%s"}
"""


def test_validate_loads_jsonschema_and_croniter_only_for_what_needs_them(tmp_path: Path) -> None:
    """Issue 13: the manifest package imports no slow library; the CLI hands it checks that load jsonschema
    when a value fails its compiled check and croniter when a cron trigger is read, never for valid input."""
    assert fnctl("init", "p", cwd=tmp_path).returncode == 0
    project = tmp_path / "p"
    assert _validate_loading(project) == (0, "", [])
    manifest = project / "manifests" / "hello.yaml"
    text = manifest.read_text()
    manifest.write_text(text.replace("memory: 128Mi", "memory: lots"))
    code, said, loaded = _validate_loading(project)
    assert code == 2 and "spec.limits.memory" in said and "lots" in said, said
    assert loaded == ["jsonschema", "referencing"]
    manifest.write_text(text + CRON % "61 * * * *")
    code, said, loaded = _validate_loading(project)
    assert code == 2 and "invalid cron expression '61 * * * *'" in said, said
    assert loaded == ["croniter"]
    manifest.write_text(text + CRON % "*/5 * * * *")
    assert _validate_loading(project) == (0, "", ["croniter"])


@pytest.mark.parametrize("args", [[], ["--help"], ["--version"], ["invok"], ["--debug"], ["--debug", "--help"]])
def test_the_root_help_version_and_unknown_names_get_every_command(args: list[str]) -> None:
    assert _app_for(args) is app


def test_subcommands_of_groups_and_the_debug_flag_work_through_main(tmp_path: Path) -> None:
    keys = fnctl("keys", "--help", cwd=tmp_path)
    assert keys.returncode == 0 and {"create", "list", "revoke"} <= set(keys.stdout.split())
    assert fnctl("--debug", "validate", cwd=REPO).returncode == 0
    typo = fnctl("invok", cwd=tmp_path)
    assert typo.returncode == 2 and "Did you mean 'invoke'?" in typo.stderr


OUTCOME_SCRIPT = """
import sys
from fnctl.invocation.outcome import Failure, Outcome
from fnctl.cli.render import Output, Progress, render_outcome
with Progress() as progress:
    progress("a [b]progress[/b] line")
failed = Outcome(False, None, Failure.TIMEOUT, "cut at [1s]", "Traceback: [red]x[/red]", "a log [b]line[/b]\\n", 2.25)
render_outcome(failed, output=Output.TEXT, show_logs=True, warm=True)
render_outcome(Outcome(True, {"a": [1]}, None, "", "", "", 0.5), output=Output.TEXT, show_logs=False, warm=False)
print("rich" in sys.modules, file=sys.stderr)
"""


def test_results_in_a_pipe_are_plain_text_written_without_loading_rich(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    done = subprocess.run(
        [sys.executable, "-c", OUTCOME_SCRIPT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert done.stdout == '{"a": [1]}\n'
    lines = done.stderr.splitlines()
    assert lines[0] == "a [b]progress[/b] line"  # user text is never taken as markup
    assert " logs " in lines[1] and lines[2] == "a log [b]line[/b]" and " logs " not in lines[3]
    assert lines[4:] == [
        "error (timeout): cut at [1s]",
        "Traceback: [red]x[/red]",
        "2.2 ms (warm instance)",
        "0.5 ms",
        "False",
    ]


def test_validate_warns_about_an_http_trigger_nobody_may_invoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16: valid, but every request would get 401: a warning naming the trigger and how to grant."""
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["init", "--name", "closed"]).exit_code == 0
    manifest = tmp_path / "manifests" / "hello.yaml"
    manifest.write_text(manifest.read_text().replace("  access: {roles: [public]}\n", ""))
    text = runner.invoke(app, ["validate"])
    assert text.exit_code == 0, text.output  # a warning, not an error
    [warning] = [line for line in text.stderr.splitlines() if line.startswith("warning: ")]
    assert warning.startswith("warning: manifests/hello.yaml:")
    assert warning.endswith(
        "$.spec.function: HTTP trigger 'hello-http' routes to function 'hello', which no role may invoke: every "
        "request will get 401. Grant access with `access: {roles: [public]}` (or the callers' roles) in hello's "
        "spec, or a Policy role with `invoke: [hello]`"
    )
    data = json.loads(runner.invoke(app, ["validate", "-o", "json"]).stdout)
    assert data["valid"] is True and [w["path"] for w in data["warnings"]] == ["$.spec.function"]
    manifest.write_text(manifest.read_text() + "---\napiVersion: fnctl/v1\nkind: Policy\nmetadata: {name: p}\n"
                        "spec: {roles: {ops: {invoke: [hello]}}}\n")  # fmt: skip
    assert "warning" not in runner.invoke(app, ["validate"]).stderr


def test_serve_on_a_port_already_in_use_is_a_clear_error(tmp_path: Path) -> None:
    """Exit 2 with one line naming the address, not "internal error (a bug in fnctl)"."""
    assert fnctl("init", cwd=tmp_path).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = fnctl("serve", "--address", f"127.0.0.1:{port}", "--state", str(tmp_path / "s.db"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "internal error" not in done.stderr
    assert "Traceback" not in done.stderr


# --- names that do not exist ------------------------------------------------------------------------------------

NOT_DEPLOYED = "error: function 'nope' is not deployed ("
ENGINE = pytest.mark.docker  # the command first recovers what a crashed deploy left, which lists containers


def _ready(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["invoke", "nope"], NOT_DEPLOYED),  # through the project's gateway, which answers 404 itself
        (["invoke", "nope", "--direct"], NOT_DEPLOYED),
        (["invoke", "nope", "-o", "json"], NOT_DEPLOYED),  # the JSON error object on stdout, as before
        (["invoke", "nope", "--local"], "error: function 'nope' is not in the manifests (known: hello)"),
        pytest.param(["rollback", "nope"], NOT_DEPLOYED, marks=ENGINE),
        pytest.param(["delete", "nope"], NOT_DEPLOYED, marks=ENGINE),
        (["logs", "nope"], NOT_DEPLOYED),
        (["history", "nope"], "error: function 'nope' was never deployed (see `fnctl get revisions`)"),
        (["rollout", "status", "nope"], NOT_DEPLOYED),
        (["promote", "nope"], NOT_DEPLOYED),
        (["abort", "nope"], NOT_DEPLOYED),
        pytest.param(["retry", "nope"], NOT_DEPLOYED, marks=ENGINE),
        (["abtest", "report", "nope"], NOT_DEPLOYED),
        (["keys", "revoke", "nope"], "error: API key 'nope' does not exist (see `fnctl keys list`)"),
        (["run", "nope"], "error: trigger 'nope' does not exist (see `fnctl triggers`)"),
        (["enable", "nope"], "error: trigger 'nope' does not exist (see `fnctl triggers`)"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_a_name_that_does_not_exist_is_bad_input_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    """Whichever command names it, a function, trigger or API key that does not exist is bad input (exit 2,
    DESIGN.md's table), one line saying what is missing and how to list what exists; never exit 1."""
    project = tmp_path / "project"
    assert fnctl("init", str(project), cwd=tmp_path).returncode == 0
    state = str(tmp_path / "state.db")
    assert fnctl("keys", "create", "ci", "--role", "deployer", "--state", state, cwd=project).returncode == 0
    with socket.socket() as probe:  # a free port: without --direct, invoke asks the gateway configured there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = project / "fnctl.toml"
    config.write_text(config.read_text().replace("127.0.0.1:8080", f"127.0.0.1:{port}"), encoding="utf-8")
    gateway = None
    if args[0] == "invoke" and "--direct" not in args and "--local" not in args:
        address = f"127.0.0.1:{port}"
        gateway = subprocess.Popen(  # noqa: S603 -- our own CLI
            [sys.executable, "-m", "fnctl", "serve", "--address", address, "--state", state],
            cwd=project,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    try:
        if gateway is not None:
            wait_until(lambda: _ready(port) or gateway.poll() is not None, what="the gateway to be ready", timeout=60)
            assert gateway.poll() is None, "fnctl serve exited"
        done = fnctl(*args, "--state", state, cwd=project)
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message) and len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    if "json" in args:
        assert json.loads(done.stdout)["error"]["message"] == done.stderr.removeprefix("error: ").strip()
    else:
        assert done.stdout == ""
