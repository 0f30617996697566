"""`fnctl validate` end to end (without the CLI): every example is valid, and each class of error is reported
with its exact file, line, column, JSON path and message.

Each invalid fixture in tests/fixtures/invalid/<class>/ is a small project of its own (fnctl.toml, manifests,
function sources). It is copied into tmp_path and validated from there, as `fnctl validate` run in it would;
symlinks are created in the copy by the test, never committed.
"""

from __future__ import annotations

import copy
import json
import random
import re
import resource
import shutil
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from fnctl.manifest import fastschema, schemaexplain, schemas
from fnctl.manifest.files import MAX_FILE_BYTES
from fnctl.manifest.loader import MAX_DOCUMENTS, load_file
from fnctl.manifest.project import load_project
from fnctl.manifest.validate import ValidationResult, validate_paths

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "invalid"
HANDLER = "def handler(event, context):\n    return {'ok': True}\n"
FUNCTION = """\
apiVersion: fnctl/v1
kind: Function
metadata:
  name: {name}
spec:
  runtime: python3.11
  source: ../functions/hello
  handler: main.handler
"""


def run(project: Path, monkeypatch: pytest.MonkeyPatch) -> ValidationResult:
    monkeypatch.chdir(project)
    return validate_paths(load_project())


def lines(result: ValidationResult) -> list[str]:
    return [d.render() for d in result.diagnostics]


def copy_fixture(name: str, tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(FIXTURES / name, project)
    return project


def make_project(tmp_path: Path, manifests: dict[str, str | bytes]) -> Path:
    """A project with functions/hello/main.py and the given files under manifests/."""
    project = tmp_path / "project"
    (project / "functions" / "hello").mkdir(parents=True)
    (project / "functions" / "hello" / "main.py").write_text(HANDLER)
    (project / "fnctl.toml").write_text('[project]\nname = "generated"\n')
    (project / "manifests").mkdir()
    for name, content in manifests.items():
        target = project / "manifests" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    return project


# --- every example is valid ---------------------------------------------------------------------------------


def test_the_repository_examples_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = validate_paths(load_project(), [REPO / "manifests"])
    assert lines(result) == []
    assert {f.name for f in result.state.functions} == {
        "hello",
        "greet",
        "orders",
        "order-book",
        "stats-canary",
        "stats-bluegreen",
        "stats-ab",
    }
    assert len(result.files) == 4


def test_the_project_default_manifests_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(REPO, monkeypatch)
    assert result.ok, lines(result)
    assert result.files and all(f.is_relative_to(REPO / "manifests" / "demo") for f in result.files)


def test_the_examples_in_the_manifest_reference_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every complete YAML example of docs/manifest.md, against sources laid out as the page describes."""
    text = (REPO / "docs" / "manifest.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "apiVersion:" in b]
    assert len(blocks) >= 5
    project = make_project(tmp_path, {f"example-{i:02d}.yaml": b for i, b in enumerate(blocks)})
    (project / "functions" / "stats").mkdir()
    (project / "functions" / "stats" / "stats.py").write_text("async def summarise(event, context):\n    return {}\n")
    result = run(project, monkeypatch)
    assert lines(result) == []


# --- one fixture per error class ------------------------------------------------------------------------------

F = "manifests/hello.yaml"
CASES: dict[str, list[str]] = {
    # schema
    "schema-missing-required": [f"{F}:6:3: $.spec: missing required property 'handler'"],
    "schema-unknown-property": [
        f"{F}:10:14: $.spec.limits.timeuot: unknown property 'timeuot' (did you mean 'timeout'?)"
    ],
    "schema-wrong-type": [f"{F}:10:10: $.spec.limits.cpu: expected a number, got 'half'"],
    "schema-enum": [f"{F}:9:12: $.spec.network: must be one of none, egress; got 'public'"],
    "schema-dns-name": [
        f"{F}:4:9: $.metadata.name: must be a DNS label: lower-case letters, digits and '-', at most "
        "63 characters, starting and ending with a letter or digit, got 'Hello_World'"
    ],
    "schema-bad-duration": [
        f"{F}:9:21: $.spec.limits.timeout: invalid duration (expected e.g. 200ms, 30s, 5m, 1h30m, "
        "or a number of seconds), got '5 seconds'"
    ],
    "schema-bad-size": [
        f"{F}:9:20: $.spec.limits.memory: invalid size (expected e.g. 512Ki, 128Mi, 1Gi, or a number "
        "of bytes), got '128MB'"
    ],
    "schema-bad-handler": [
        f"{F}:8:12: $.spec.handler: must be module.attr (e.g. main.handler) or path/file.ext:attr (e.g. src/main.ts:handler), got 'handler'"
    ],
    "schema-step-two-keys": [
        f"{F}:12:9: $.spec.rollout.steps[0]: each step must have exactly one of setWeight, pause "
        "or analysis, got a mapping"
    ],
    "schema-stickiness-without-name": [f"{F}:14:17: $.spec.rollout.stickiness: missing required property 'name'"],
    # the envelope of a document
    "envelope-non-mapping": [
        f"{F}:1:1: $: a manifest document must be a mapping with apiVersion, kind, metadata and spec; got a list"
    ],
    "envelope-empty-file": [f"{F}:1:1: $: file is empty: expected at least one manifest document"],
    "envelope-binary-file": ["manifests/logo.yaml:1:1: $: file is binary, not YAML text"],
    "envelope-wrong-api-version": [f"{F}:1:13: $.apiVersion: unsupported apiVersion 'apps/v1' (expected fnctl/v1)"],
    "envelope-unknown-kind": [
        f"{F}:2:7: $.kind: unknown kind 'Deployment' (expected one of Function, View, Trigger, Policy, Collection)"
    ],
    # YAML itself
    "yaml-python-tag": [
        f"{F}:10:15: $.spec.env.GREETING: YAML tag !!python/object/apply:os.system is not allowed: "
        "manifests may only use plain mappings, lists, strings, numbers, booleans and null"
    ],
    "yaml-duplicate-key": [
        f"{F}:9:3: $.spec.runtime: duplicate key 'runtime' (YAML would silently keep only the last one)"
    ],
    "yaml-billion-laughs": [
        "manifests/lol.yaml:10:12: $.spec.l5[0]: aliases expand to more than 200000 values (an alias "
        "bomb?); write the values out or use fewer aliases"
    ],
    "yaml-syntax-error": [f"{F}:10:9: $: invalid YAML: while parsing a flow mapping did not find expected ',' or '}}'"],
    # semantics
    "duplicate-name": [
        "manifests/b.yaml:5:9: $.metadata.name: duplicate Function name 'hello' (first defined at manifests/a.yaml:4)"
    ],
    "dangling-reference": [
        f"{F}:15:13: $.spec.function: function 'helo' is not defined in these manifests",
        f"{F}:23:13: $.spec.function: function 'sumary' is not defined in these manifests",
        f"{F}:31:30: $.spec.roles.public.invoke[1]: function 'goodbye' is not defined in these manifests",
    ],
    "handler-module-missing": [
        f"{F}:8:12: $.spec.handler: handler module 'app' not found in the source directory "
        "(looked for app.py, app/__init__.py)"
    ],
    "handler-attr-missing": [f"{F}:8:12: $.spec.handler: main.py defines no top-level 'handle'"],
    "handler-syntax-error": [f"{F}:8:12: $.spec.handler: cannot parse main.py: line 1: expected ':'"],
    "handler-path-escape": [
        f"{F}:8:12: $.spec.handler: handler file '../../outside.py' is outside the source directory"
    ],
    "bad-cron": [
        f"{F}:16:20: $.spec.cron.schedule: invalid cron expression '0 25 * * *' (expected e.g. '*/5 * * * *')"
    ],
    "bad-timezone": [
        f"{F}:16:43: $.spec.cron.timezone: unknown time zone 'Mars/Olympus' (expected e.g. UTC or Europe/Paris)",
        f"{F}:24:43: $.spec.cron.timezone: unknown time zone 'America' (expected e.g. UTC or Europe/Paris)",
    ],
    "non-increasing-weights": [
        f"{F}:14:20: $.spec.rollout.steps[2].setWeight: weights must increase: 20 after 50 "
        "(steps only move traffic towards the new revision)"
    ],
    "steps-on-non-canary": [f"{F}:12:7: $.spec.rollout.steps: steps apply only to the canary strategy, not blueGreen"],
    "canary-without-steps": [f"{F}:9:12: $.spec.rollout.steps: a canary needs at least one step (e.g. setWeight: 20)"],
    "analysis-before-traffic": [
        f"{F}:12:53: $.spec.rollout.steps[0].analysis.minRequests: this analysis runs before "
        "any traffic reaches the new revision (no setWeight > 0 before it)"
    ],
    "min-requests-unreachable": [
        f"{F}:15:53: $.spec.rollout.steps[2].analysis.minRequests: at 2 requests/s and 10% "
        "weight, a 1m window collects about 12 requests, fewer than minRequests (500)"
    ],
    "bluegreen-preview-min-requests": [
        f"{F}:11:61: $.spec.rollout.prePromotionAnalysis.minRequests: a blue-green "
        "preview receives no user traffic, so minRequests can never be reached; add checks"
    ],
    "ab-weights": [f"{F}:12:7: $.spec.rollout.variants: variant weights must sum to 100, not 90"],
    "route-collision": [
        f"{F}:24:16: $.spec.http.path: route POST /hello/{{id}}/ collides with trigger 'hello-by-name' ({F}:13)"
    ],
    "source-dotdot-escape": [
        f"{F}:7:11: $.spec.source: source '../../outside/hello' escapes the project root {{root}}"
    ],
    "limit-over-maximum": [
        f"{F}:9:21: $.spec.limits.timeout: timeout exceeds the maximum of 15m",
        f"{F}:9:34: $.spec.limits.memory: memory exceeds the maximum of 4Gi",
    ],
    "gvisor-pids-too-low": [
        f"{F}:10:18: $.spec.limits.pids: isolation: gvisor needs pids of at least 64 "
        "(gVisor's own threads count against it)"
    ],
    "min-over-max-instances": [f"{F}:9:27: $.spec.scaling.minInstances: minInstances (5) exceeds maxInstances (2)"],
    "reserved-env": [
        f"{F}:9:35: $.spec.env.PYTHONPATH: 'PYTHONPATH' is reserved for the runtime (FNCTL_* and PYTHON*)"
    ],
    "invalid-parameters-schema": [
        f"{F}:9:15: $.spec.parameters: not a valid JSON Schema: 'objekt' is not valid under any of the given schemas"
    ],
}


def _outside_target(project: Path) -> Path:
    outside = project.parent / "outside"
    outside.mkdir()
    (outside / "main.py").write_text(HANDLER)
    return outside


def _link_the_source_outside(project: Path) -> None:
    (project / "functions").mkdir(exist_ok=True)
    (project / "functions" / "linked").symlink_to(_outside_target(project), target_is_directory=True)


def _link_a_file_of_the_source_outside(project: Path) -> None:
    (project / "functions" / "hello" / "settings.py").symlink_to(_outside_target(project) / "main.py")


SYMLINK_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "source-symlink-escape": (
        _link_the_source_outside,
        f"{F}:7:11: $.spec.source: source '../functions/linked' is a symlink pointing outside the project",
    ),
    "source-inner-symlink": (
        _link_a_file_of_the_source_outside,
        f"{F}:7:11: $.spec.source: settings.py inside the source is a symlink pointing outside the project",
    ),
}


def test_every_fixture_has_a_case() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir()) == sorted([*CASES, *SYMLINK_CASES])


@pytest.mark.parametrize("name", sorted(CASES))
def test_invalid_fixture(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_fixture(name, tmp_path)
    result = run(project, monkeypatch)
    assert not result.ok
    assert lines(result) == [line.replace("{root}", str(project.resolve())) for line in CASES[name]]


@pytest.mark.parametrize("name", sorted(SYMLINK_CASES))
def test_symlink_escape(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_fixture(name, tmp_path)
    make_link, expected = SYMLINK_CASES[name]
    make_link(project)
    assert lines(run(project, monkeypatch)) == [expected]


def test_a_symlink_that_stays_inside_the_project_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(
        tmp_path, {"a.yaml": FUNCTION.format(name="a").replace("functions/hello", "functions/alias")}
    )
    (project / "functions" / "alias").symlink_to(project / "functions" / "hello", target_is_directory=True)
    (project / "functions" / "hello" / "shared.py").symlink_to(project / "functions" / "hello" / "main.py")
    assert lines(run(project, monkeypatch)) == []


def test_a_project_reached_through_a_symlinked_path_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path, {"a.yaml": FUNCTION.format(name="a")})
    (tmp_path / "via").symlink_to(project, target_is_directory=True)
    monkeypatch.chdir(project)
    result = validate_paths(load_project(), [tmp_path / "via" / "manifests"])
    assert lines(result) == []


# --- generated inputs: too many documents, too large, too deep, bombs --------------------------------------------


def test_too_many_documents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = "---\n".join(FUNCTION.format(name=f"f{i}") for i in range(MAX_DOCUMENTS + 1))
    project = make_project(tmp_path, {"many.yaml": docs})
    result = run(project, monkeypatch)
    assert lines(result) == ["manifests/many.yaml:1:1: $: too many documents (the limit is 1000)"]
    assert len(result.state.functions) == MAX_DOCUMENTS  # the ones read before the limit are still checked


def test_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    padding = "# " + "x" * 1000 + "\n"
    big = FUNCTION.format(name="big") + padding * (MAX_FILE_BYTES // len(padding) + 1)
    project = make_project(tmp_path, {"big.yaml": big})
    size = len(big.encode())
    assert lines(run(project, monkeypatch)) == [
        f"manifests/big.yaml:1:1: $: file is too large ({size} bytes; the limit is {MAX_FILE_BYTES})"
    ]


@pytest.mark.parametrize(
    "text, where",
    [
        ("[" * 100_000 + "]" * 100_000, "1:201"),  # would overflow the C stack of a recursive composer
        ("- " * 300_000 + "x\n", "1:401"),
        ("a:\n" + "".join(" " * i + "b:\n" for i in range(1, 300)) + " " * 300 + "c: 1\n", "201:201"),
    ],
)
def test_deep_nesting_is_refused(text: str, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path, {"deep.yaml": text})
    assert lines(run(project, monkeypatch)) == [
        f"manifests/deep.yaml:{where}: $: document is nested too deeply (over 200 levels)"
    ]


def _laughs(levels: int = 9, width: int = 10) -> str:
    text = "lol0: &l0 [" + ", ".join(["lol"] * width) + "]\n"
    for i in range(1, levels + 1):
        text += f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]\n"
    return text


def test_a_billion_laughs_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    """10^9 values if expanded; refused after a bounded amount of work (no timing assertion: memory only)."""
    path = tmp_path / "lol.yaml"
    path.write_text(_laughs())
    tracemalloc.start()
    try:
        documents, problems = load_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert documents == []
    assert [p.render() for p in problems] == [
        f"{path}:6:12: $.lol5[0]: aliases expand to more than 200000 values (an alias bomb?); write the values out or "
        "use fewer aliases"
    ]
    assert peak < 64 * 2**20


def test_many_small_bombs_in_one_file_share_one_budget(tmp_path: Path) -> None:
    """Each document below the limit, but not the file: the budget is per file, so the work stays bounded."""
    path = tmp_path / "bombs.yaml"
    path.write_text("---\n".join([_laughs(levels=4, width=9)] * 500))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    documents, problems = load_file(path)
    assert len(documents) < 50
    assert len(problems) == 1 and "aliases expand to more than 200000 values" in problems[0].message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 2**10  # KiB: under 256 MiB


def test_aliases_within_the_budget_are_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = FUNCTION.format(name="a") + "  env: &env {GREETING: hi, MODE: prod}\n  healthCheck: [{event: *env}]\n"
    project = make_project(tmp_path, {"a.yaml": shared})
    result = run(project, monkeypatch)
    assert lines(result) == []
    function = result.state.functions[0]
    assert function.env == function.health_checks[0].event == {"GREETING": "hi", "MODE": "prod"}


def test_anchors_belong_to_their_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = FUNCTION.format(name="a") + "  env: &env {GREETING: hi}\n"
    other = FUNCTION.format(name="b") + "  env: *env\n"
    project = make_project(tmp_path, {"a.yaml": shared + "---\n" + other})
    assert lines(run(project, monkeypatch)) == ["manifests/a.yaml:19:8: $: invalid YAML: found undefined alias 'env'"]


# --- all at once, sorted ------------------------------------------------------------------------------------------


def test_every_error_of_every_file_is_reported_at_once_and_sorted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(
        tmp_path,
        {
            "b.yaml": FUNCTION.format(name="b") + "  network: public\n  limits: {memory: 8Gi}\n---\n"
            "apiVersion: fnctl/v1\nkind: Trigger\nmetadata: {name: t}\nspec: {function: nope, manual: {}}\n",
            "a.yaml": FUNCTION.format(name="a").replace("main.handler", "main.nothere"),
            "c.yaml": "key: [unclosed\n",
            "sub/d.yml": FUNCTION.format(name="Bad"),
        },
    )
    result = run(project, monkeypatch)
    assert lines(result) == [
        "manifests/a.yaml:8:12: $.spec.handler: main.py defines no top-level 'nothere'",
        "manifests/b.yaml:9:12: $.spec.network: must be one of none, egress; got 'public'",
        "manifests/b.yaml:15:18: $.spec.function: function 'nope' is not defined in these manifests",
        "manifests/c.yaml:2:1: $: invalid YAML: while parsing a flow sequence did not find expected ',' or ']'",
        "manifests/sub/d.yml:4:9: $.metadata.name: must be a DNS label: lower-case letters, digits and '-', at most 63 "
        "characters, starting and ending with a letter or digit, got 'Bad'",
    ]
    assert [d.file.name for d in result.diagnostics] == sorted(d.file.name for d in result.diagnostics)


def test_a_schema_error_stops_that_document_but_not_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(
        tmp_path,
        {
            "a.yaml": FUNCTION.format(name="a")
            + "  limits: {memory: 8Gi}\n---\n"
            + FUNCTION.format(name="b")
            + "  network: public\n"
        },
    )
    assert lines(run(project, monkeypatch)) == [
        "manifests/a.yaml:9:20: $.spec.limits.memory: memory exceeds the maximum of 4Gi",
        "manifests/a.yaml:19:12: $.spec.network: must be one of none, egress; got 'public'",
    ]


def test_what_names_an_invalid_document_gets_no_second_not_defined_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Function and the Collection are declared (with an error each): "function 'a' is not defined" on the
    # Trigger, the View and the Policy would send the user looking for a typo that is not there.
    others = """
---
apiVersion: fnctl/v1
kind: Collection
metadata: {name: orders}
spec: {indexes: 7}
---
apiVersion: fnctl/v1
kind: Trigger
metadata: {name: t}
spec: {function: a, manual: {}}
---
apiVersion: fnctl/v1
kind: View
metadata: {name: v}
spec: {function: a}
---
apiVersion: fnctl/v1
kind: Policy
metadata: {name: p}
spec: {roles: {shop: {invoke: [a], read: [orders]}, "function:a": {read: [orders]}}}
"""
    project = make_project(tmp_path, {"a.yaml": FUNCTION.format(name="a") + "  limits: {memory: [1]}\n" + others})
    assert [line.split(": ", 2)[1] for line in lines(run(project, monkeypatch))] == [
        "$.spec.limits.memory",
        "$.spec.indexes",
    ]


def test_no_manifest_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path, {})
    assert lines(run(project, monkeypatch)) == ["manifests: $: no manifest files (*.yaml, *.yml) found"]


def test_a_missing_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path, {"a.yaml": FUNCTION.format(name="a")})
    monkeypatch.chdir(project)
    result = validate_paths(load_project(), [Path("nowhere")])
    assert lines(result) == ["nowhere: $: no such file or directory: nowhere"]


def test_a_file_changed_between_two_runs_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-file caches (parsed handlers, resolved paths) last one run, not the life of the process."""
    project = make_project(tmp_path, {"a.yaml": FUNCTION.format(name="a")})
    assert run(project, monkeypatch).ok
    (project / "functions" / "hello" / "main.py").write_text("def other(event):\n    return 1\n")
    assert lines(run(project, monkeypatch)) == [
        "manifests/a.yaml:8:12: $.spec.handler: main.py defines no top-level 'handler'"
    ]


# --- the compiled schema checks agree with jsonschema ----------------------------------------------------------


def test_the_compiled_checks_know_every_assertion_of_jsonschema() -> None:
    assert fastschema.ASSERTIONS == set(Draft202012Validator.VALIDATORS)


@pytest.mark.parametrize("kind", [*schemas.KINDS, "project"])
def test_every_schema_compiles(kind: str) -> None:
    assert schemas._fast(kind) is not None


_ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    1.0,
    2.5,
    101,
    5000,
    "",
    "x",
    "5s",
    "128Mi",
    "Hello",
    "/a/{b}",
    "GET",
    "canary",
    "stable",
    [],
    [1],
    ["a", "a"],
    {},
    {"a": 1},
    {"setWeight": 10},
    {"pause": {}},
    "*",
    "fnctl/v1",
    "main.handler",
    "a.py:h",
    0.5,
    10**9,
    {"by": "header"},
]


def _mutate(document: Any, rng: random.Random) -> Any:
    """`document` with one value replaced, removed or added somewhere in it."""
    document = copy.deepcopy(document)
    node = document
    while True:
        if isinstance(node, dict) and node:
            key = rng.choice(sorted(node))
            roll = rng.random()
            if roll < 0.15:
                del node[key]
            elif roll < 0.25:
                node[key + "x"] = rng.choice(_ODD_VALUES)
            elif isinstance(node[key], (dict, list)) and roll < 0.85:
                node = node[key]
                continue
            else:
                node[key] = rng.choice(_ODD_VALUES)
        elif isinstance(node, list) and node:
            i = rng.randrange(len(node))
            if isinstance(node[i], (dict, list)) and rng.random() < 0.7:
                node = node[i]
                continue
            node[i] = rng.choice(_ODD_VALUES) if rng.random() < 0.8 else copy.deepcopy(node[i - 1])
        return document


def test_the_compiled_checks_agree_with_jsonschema_on_mutated_manifests(monkeypatch: pytest.MonkeyPatch) -> None:
    documents = [d.data for f in sorted((REPO / "manifests").rglob("*.yaml")) for d in load_file(f)[0]]
    documents += [
        d.data
        for f in sorted(FIXTURES.rglob("*.yaml"))
        for d in load_file(f)[0]
        if isinstance(d.data, dict) and d.data.get("kind") in schemas.KINDS
    ]
    rng = random.Random(20241121)
    valid = checked = 0
    for document in documents:
        kind = document["kind"]
        for candidate in [document] + [_mutate(document, rng) for _ in range(60)]:
            expected = schemaexplain.validator(kind).is_valid(candidate)
            fast = schemas._fast(kind)
            assert fast is not None and fast(candidate) is expected, json.dumps(candidate)
            valid += expected
            checked += 1
    assert checked > 2000 and valid > 100 and checked - valid > 1000  # both answers were exercised


META_CASES: list[Any] = [
    True,
    False,
    {},
    {"type": "objekt"},
    {"type": ["string", "null"]},
    {"type": []},
    {"minimum": "x"},
    {"pattern": "["},
    {"pattern": "^a"},
    {"required": ["a", "a"]},
    {"required": "a"},
    {"properties": {"a": {"type": 3}}},
    {"items": [{}]},
    {"prefixItems": [{}], "items": False},
    {"enum": []},
    {"allOf": []},
    {"not": {"type": "str"}},
    {"if": {"const": 1}, "then": {"minimum": 1}},
    {"dependentRequired": {"a": ["b", "b"]}},
    {"minItems": 1.0},
    {"minItems": 1.5},
    {"minItems": True},
    {"multipleOf": 0},
    {"definitions": {"a": {"type": 1}}},
    {"dependencies": {"a": {"type": 1}}},
    {"$anchor": "1bad"},
    {"propertyNames": {"pattern": "("}},
    {"patternProperties": {"(": {}}},
    {"additionalProperties": {"type": "x"}},
    {"deprecated": "yes"},
    {"uniqueItems": 1},
    {"$ref": "#/x"},
    {"$id": "not a uri"},
    {"$vocabulary": {"a": True}},
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 100}}, "required": ["name"]},
]


@pytest.mark.parametrize("schema", META_CASES, ids=[json.dumps(s)[:40] for s in META_CASES])
def test_the_compiled_meta_schema_never_accepts_what_jsonschema_refuses(schema: Any) -> None:
    checker = Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
    fast = schemas._fast_meta()
    assert fast is not None
    valid = checker.is_valid(schema)
    assert not fast(schema) or valid
    assert (schemas.check_json_schema(schema) is None) is valid


def test_the_fnctl_toml_of_the_manifest_reference_is_valid(tmp_path: Path) -> None:
    text = (REPO / "docs" / "manifest.md").read_text()
    (config,) = re.findall(r"```toml\n(.*?)```", text, re.S)
    (tmp_path / "fnctl.toml").write_text(config)
    project = load_project(tmp_path)
    assert project.name == "my-app"
    assert project.default_limits.timeout == 10.0
    assert project.state_path == tmp_path / ".fnctl" / "state.db"


def test_mutated_manifests_get_diagnostics_never_exceptions() -> None:
    """Whatever a schema-checked document holds, the typed values and semantic checks cope with it."""
    from fnctl.manifest.files import Document
    from fnctl.manifest.model import Limits
    from fnctl.manifest.validate import build_state

    originals = [d for f in sorted((REPO / "manifests").rglob("*.yaml")) for d in load_file(f)[0]]
    rng = random.Random(99)
    invalid = 0
    for _ in range(400):
        documents = list(originals)
        i = rng.randrange(len(documents))
        documents[i] = Document(documents[i].file, i, _mutate(documents[i].data, rng), documents[i].marks)
        state, problems = build_state(documents, REPO, Limits())  # must not raise
        invalid += bool(problems)
        assert all(p.render() for p in problems)
    assert 100 < invalid < 400
