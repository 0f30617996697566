"""The data plane in the manifests: the Collection kind, Policy row rules, Function runAs / transaction /
limits.dbOperations, and the spec hash of a function that uses none of them (unchanged, so no redeploy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fnctl.deploy.desired import canonical_spec, spec_hash
from fnctl.manifest.filterlang import Compare, Op
from fnctl.manifest.loader import load_file
from fnctl.manifest.model import DesiredState, Limits, RowRule, RunAs
from fnctl.manifest.validate import build_state

FUNCTION = """\
apiVersion: fnctl/v1
kind: Function
metadata: {name: hello, labels: {team: web}}
spec:
  runtime: python3.11
  source: ./src
  handler: main.handler
  env: {GREETING: hi}
  limits: {timeout: 5s, memory: 128Mi}
  rollout: {strategy: immediate}
"""
# The spec hash of FUNCTION as computed before the data plane existed (main at a0b5067).
HASH_BEFORE_THE_DATA_PLANE = "7872b0057d3a7de2c973ee9aa2df75076bdb41761f99dddc60276db4b10b678d"

COLLECTION = """\
apiVersion: fnctl/v1
kind: Collection
metadata: {name: orders}
spec:
  schema: {type: object, required: [customer], properties: {customer: {type: string}}}
  indexes: [{fields: [customer, createdAt]}, {fields: [number], unique: true}]
  limits: {documentSize: 256Ki}
"""


def load(tmp_path: Path, text: str) -> tuple[DesiredState, list[str]]:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "main.py").write_text("def handler(event, context):\n    return 1\n")
    file = tmp_path / "m.yaml"
    file.write_text(text)
    docs, problems = load_file(file)
    assert not problems
    state, diagnostics = build_state(docs, tmp_path, Limits())
    return state, [f"{d.position.line}:{'.'.join(map(str, d.path))}: {d.message}" for d in diagnostics]


def hash_of(state: DesiredState) -> str:
    return spec_hash(canonical_spec(state.functions[0], "c0de" * 16, "fnctl-base:bookworm", "5ec7" * 16))


def test_a_function_without_data_fields_keeps_its_exact_spec_hash(tmp_path: Path) -> None:
    state, problems = load(tmp_path, FUNCTION)
    assert problems == []
    assert hash_of(state) == HASH_BEFORE_THE_DATA_PLANE
    assert "runAs" not in canonical_spec(state.functions[0], "c", "b", "s")


@pytest.mark.parametrize(
    "extra",
    [
        "  runAs: function\n",
        "  transaction: {retries: 5}\n",
        "  transaction: {}\n",
    ],
)
def test_data_fields_set_change_the_spec_hash(tmp_path: Path, extra: str) -> None:
    state, problems = load(tmp_path, FUNCTION + extra)
    assert problems == []
    assert hash_of(state) != HASH_BEFORE_THE_DATA_PLANE


def test_function_data_fields_parse_with_defaults(tmp_path: Path) -> None:
    state, _ = load(tmp_path, FUNCTION)
    function = state.functions[0]
    assert (function.run_as, function.transaction, function.db_operations) == (RunAs.CALLER, None, 1000)
    text = (
        FUNCTION.replace("memory: 128Mi}", "memory: 128Mi, dbOperations: 50}")
        + "  runAs: function\n  transaction: {}\n"
    )
    state, problems = load(tmp_path, text)
    assert problems == []
    function = state.functions[0]
    assert (function.run_as, function.transaction and function.transaction.retries, function.db_operations) == (
        RunAs.FUNCTION,
        3,
        50,
    )
    assert canonical_spec(function, "c", "b", "s")["limits"]["dbOperations"] == 50


def test_a_collection_parses(tmp_path: Path) -> None:
    state, problems = load(tmp_path, COLLECTION)
    assert problems == []
    (collection,) = state.collections
    assert collection.name == "orders" and collection.document_size == 256 * 1024
    assert [(i.fields, i.unique) for i in collection.indexes] == [
        (("customer", "createdAt"), False),
        (("number",), True),
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "indexes: [{fields: [customer, createdAt]}",
            "indexes: [{fields: ['a..b']}",
        ),
        (
            "indexes: [{fields: [customer, createdAt]}, {fields: [number], unique: true}]",
            "indexes: [{fields: [number]}, {fields: [number]}]",
        ),
        ("schema: {type: object,", "schema: {type: 12,"),
        ("documentSize: 256Ki", "documentSize: lots"),
        ("documentSize: 256Ki", "documentSize: 64Mi"),
        ("indexes: [{fields: [customer, createdAt]}", "indexes: [{fields: []}"),
    ],
)
def test_bad_collections_are_reported_with_their_path(tmp_path: Path, change: str, expected: str) -> None:
    _, problems = load(tmp_path, COLLECTION.replace(change, expected))
    assert len(problems) == 1, problems
    where = {
        "a..b": "spec.indexes.0.fields.0",
        "[number]}, {fields": "spec.indexes.1",
        "type: 12": "spec.schema",
        "lots": "spec.limits.documentSize",
        "64Mi": "spec.limits.documentSize",
        "fields: []": "spec.indexes.0.fields",
    }
    path = next(v for k, v in where.items() if k in expected)
    assert problems[0].split(": ")[0].endswith(path), problems


POLICY = """\
apiVersion: fnctl/v1
kind: Policy
metadata: {name: access}
spec:
  roles:
    customer:
      read: [{collection: orders, where: {customer: "$caller.id"}}, products]
      write: [{collection: orders, where: WHERE}]
"""


def test_policy_row_rules_parse_to_filters(tmp_path: Path) -> None:
    state, problems = load(tmp_path, POLICY.replace("WHERE", '{customer: "$caller.id", status: new}'))
    assert problems == []
    grant = state.policies[0].roles["customer"]
    assert grant.read[1] == "products"
    rule = grant.read[0]
    assert isinstance(rule, RowRule) and rule.collection == "orders"
    assert isinstance(rule.where, Compare) and rule.where.op is Op.EQ


@pytest.mark.parametrize(
    ("where", "path", "message"),
    [
        ('{total: {"$between": [1, 2]}}', "spec.roles.customer.write.0.where.total.$between", "unknown operator"),
        ('{"$or": []}', "spec.roles.customer.write.0.where.$or", "non-empty list"),
        ('{owner: "$caller.name"}', "spec.roles.customer.write.0.where.owner", "unknown reference"),
        ('{total: {"$gt": [1]}}', "spec.roles.customer.write.0.where.total.$gt", "not a list"),
    ],
)
def test_bad_row_rules_are_reported_with_their_json_path(tmp_path: Path, where: str, path: str, message: str) -> None:
    _, problems = load(tmp_path, POLICY.replace("WHERE", where))
    assert len(problems) == 1 and problems[0].split(": ")[0].endswith(path) and message in problems[0], problems


def test_policies_must_name_declared_collections_once_there_are_any(tmp_path: Path) -> None:
    _, problems = load(tmp_path, POLICY.replace("WHERE", "{}") + "---\n" + COLLECTION)
    assert len(problems) == 1 and "'products' is not defined" in problems[0], problems
    assert problems[0].split(": ")[0].endswith("spec.roles.customer.read.1")
    _, problems = load(tmp_path, POLICY.replace("WHERE", "{}"))
    assert problems == []  # no Collection declared at all: nothing to check references against


FUNCTION_ROLE_POLICY = """\
apiVersion: fnctl/v1
kind: Policy
metadata: {name: own-rights}
spec:
  roles:
    ROLE:
      read: [orders]
      write: [orders]
"""


def test_a_policy_grants_the_role_of_a_run_as_function_function(tmp_path: Path) -> None:
    text = (
        FUNCTION
        + "  runAs: function\n---\n"
        + COLLECTION
        + "---\n"
        + FUNCTION_ROLE_POLICY.replace("ROLE", "function:hello")
    )
    state, problems = load(tmp_path, text)
    assert problems == []
    assert state.policies[0].roles["function:hello"].write == ("orders",)


@pytest.mark.parametrize(
    ("role", "runas", "message"),
    [
        ("function:goodbye", "  runAs: function\n", "function 'goodbye' is not defined in these manifests"),
        ("function:hello", "", "function 'hello' does not declare runAs: function"),
        ("function:Hello", "  runAs: function\n", "a role name is a DNS label"),  # NAME is a function name
        ("function:", "  runAs: function\n", "a role name is a DNS label"),
        ("service:hello", "  runAs: function\n", "a role name is a DNS label"),  # only the function: prefix is allowed
        ("function:hello:x", "  runAs: function\n", "a role name is a DNS label"),
    ],
)
def test_a_function_role_must_name_a_declared_run_as_function_function(
    tmp_path: Path, role: str, runas: str, message: str
) -> None:
    text = FUNCTION + runas + "---\n" + COLLECTION + "---\n" + FUNCTION_ROLE_POLICY.replace("ROLE", f'"{role}"')
    _, problems = load(tmp_path, text)
    assert len(problems) == 1 and message in problems[0], problems
    assert "spec.roles" in problems[0].split(": ")[0], problems


ON_COMMIT = """\
apiVersion: fnctl/v1
kind: Trigger
metadata: {name: notify}
spec: {function: hello, on: {collection: orders, event: EVENT}, retry: {maxAttempts: 3, backoff: 200ms}}
"""


def test_retry_is_for_on_commit_triggers_only(tmp_path: Path) -> None:
    _, problems = load(tmp_path, FUNCTION + "---\n" + ON_COMMIT.replace("EVENT", "onCommit"))
    assert problems == []
    _, problems = load(tmp_path, FUNCTION + "---\n" + ON_COMMIT.replace("EVENT", "beforeCreate"))
    assert len(problems) == 1 and problems[0].endswith(
        "spec.retry: retry applies to onCommit triggers only (their events are retried)"
    ), problems
    _, problems = load(tmp_path, FUNCTION + "---\n" + ON_COMMIT.replace("EVENT", "onCommit").replace("3,", "0,"))
    assert len(problems) == 1 and "maxAttempts" in problems[0], problems
