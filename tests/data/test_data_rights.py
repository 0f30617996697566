"""Rights decisions (pure): grants by role, "*", row rules with the caller bound, runAs function, operator."""

from __future__ import annotations

from fnctl.data.caller import Caller
from fnctl.data.filters import ALL, Compare, Op, Or, matches, parse
from fnctl.data.rights import read_rule, write_rule
from fnctl.manifest.model import Grant, Policy, RowRule

MINE = RowRule("orders", parse({"customer": "$caller.id"}, caller_refs=True))
TENANT = RowRule("*", parse({"org": "$caller.tenant"}, caller_refs=True))
POLICIES = [
    Policy(
        "p1",
        {
            "admin": Grant(read=("*",), write=("orders",)),
            "customer": Grant(read=(MINE, "products"), write=(MINE,)),
            "auditor": Grant(read=(TENANT,)),
        },
    ),
    Policy("p2", {"function:billing": Grant(read=("orders",), write=("invoices",))}),
]


def caller(*roles: str, subject: str = "jwt:alice", tenant: str = "acme") -> Caller:
    return Caller(subject, "jwt", frozenset(roles), tenant)


def test_plain_and_wildcard_grants() -> None:
    admin = caller("admin")
    assert read_rule(admin, POLICIES, "anything") == ALL
    assert write_rule(admin, POLICIES, "orders") == ALL
    assert write_rule(admin, POLICIES, "products") is None


def test_no_role_no_access() -> None:
    nobody = caller()
    assert read_rule(nobody, POLICIES, "orders") is None and write_rule(nobody, POLICIES, "orders") is None
    assert read_rule(caller("unknown-role"), POLICIES, "orders") is None


def test_row_rules_bind_the_caller() -> None:
    alice = caller("customer")
    rule = read_rule(alice, POLICIES, "orders")
    assert rule == Compare("customer", Op.EQ, "jwt:alice")
    assert matches(rule, {"data": {"customer": "jwt:alice"}})
    assert not matches(rule, {"data": {"customer": "jwt:bob"}})
    assert read_rule(alice, POLICIES, "products") == ALL
    assert read_rule(alice, POLICIES, "invoices") is None


def test_several_roles_union_their_rules_and_a_plain_grant_wins() -> None:
    both = caller("customer", "auditor")
    rule = read_rule(both, POLICIES, "orders")
    assert isinstance(rule, Or) and len(rule.parts) == 2
    assert matches(rule, {"data": {"org": "acme"}}) and matches(rule, {"data": {"customer": "jwt:alice"}})
    assert not matches(rule, {"data": {"org": "other", "customer": "jwt:bob"}})
    assert read_rule(caller("customer", "admin"), POLICIES, "orders") == ALL


def test_tenant_rule_binds_the_callers_tenant() -> None:
    assert read_rule(caller("auditor", tenant="globex"), POLICIES, "x") == Compare("org", Op.EQ, "globex")


def test_run_as_function_has_the_function_role_only() -> None:
    billing = Caller.for_function("billing", 3)
    assert billing.roles == frozenset({"function:billing"})
    assert read_rule(billing, POLICIES, "orders") == ALL and write_rule(billing, POLICIES, "invoices") == ALL
    assert write_rule(billing, POLICIES, "orders") is None


def test_the_operator_may_do_everything() -> None:
    op = Caller.operator("root")
    assert read_rule(op, [], "orders") == ALL and write_rule(op, [], "orders") == ALL
