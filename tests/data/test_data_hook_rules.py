"""Data hooks decided purely (fnctl.data.hooks: settings, order, verdicts, chain limits) and the triggers'
health in a real store (fnctl.state.triggerstate: faults, auto-disable, enable)."""

from __future__ import annotations

import asyncio

import pytest
from polling import wait_until

from fnctl.data.caller import Caller
from fnctl.data.hooks import (
    Chain,
    HookFailed,
    HookLoop,
    HookSpec,
    abort_reason,
    before_event,
    hook_specs,
    trigger_spec,
    verdict,
)
from fnctl.gateway.triggerhealth import TriggerStates
from fnctl.state import triggerstate
from fnctl.state.auditlog import AuditFilter, audit_records
from fnctl.state.location import StateLocation
from fnctl.state.store import connect


def _on(collection: str, event: str, **extra: object) -> dict[str, object]:
    return {"function": "f", "on": {"collection": collection, "event": event}, **extra}


def test_hooks_run_by_order_then_name_and_take_the_triggers_settings() -> None:
    found = hook_specs(
        {
            "zeta": _on("orders", "beforeCreate"),
            "alpha": _on("orders", "beforeCreate", order=5),
            "beta": _on("orders", "beforeCreate"),
            "late": _on("orders", "afterCreate", timeout="500ms", failurePolicy="ignore", disableAfter=7),
            "outbox": _on("orders", "onCommit"),  # delivered after the commit: not a hook of the write
            "web": {"function": "f", "http": {"path": "/x"}},
        }
    )
    assert [h.name for h in found[("orders", "beforeCreate")]] == ["beta", "zeta", "alpha"]
    late = found[("orders", "afterCreate")][0]
    assert (late.timeout, late.ignore_failures, late.disable_after, late.before) == (0.5, True, 7, False)
    assert ("orders", "onCommit") not in found
    default = trigger_spec("t", _on("c", "beforeDelete"))
    assert (default.timeout, default.ignore_failures, default.disable_after, default.skip_when_disabled) == (
        2.0,
        False,
        3,
        False,
    )
    assert trigger_spec("t", _on("c", "beforeDelete", whenDisabled="skip")).skip_when_disabled


HOOK = HookSpec("check", "f", "orders", "beforeCreate")


def test_a_verdict_is_nothing_or_a_document_that_keeps_its_id() -> None:
    assert verdict(HOOK, None, "o-1") is None
    assert verdict(HOOK, {"a": 1}, "o-1") == {"a": 1}
    assert verdict(HOOK, {"id": "o-1", "a": 1}, "o-1") == {"id": "o-1", "a": 1}
    for bad, message in (([1], "returned list"), ("x", "returned str"), ({"id": "o-2"}, "changed the document's id")):
        with pytest.raises(HookFailed, match=message):
            verdict(HOOK, bad, "o-1")
    assert abort_reason("fnctl.Abort: too small") == "too small"
    assert abort_reason("Abort: a user's own exception") is None


def test_the_event_names_the_trigger_the_writer_and_the_depth() -> None:
    caller = Caller("key:k1", "key", frozenset({"clerk"}), "acme")
    event = before_event(HOOK, "create", "o-1", None, {"a": 1}, caller, 2)
    assert event == {
        "trigger": "check",
        "event": "beforeCreate",
        "collection": "orders",
        "op": "create",
        "id": "o-1",
        "before": None,
        "proposed": {"a": 1},
        "caller": {"id": "key:k1", "kind": "key", "roles": ["clerk"], "tenant": "acme"},
        "depth": 2,
    }


def test_a_chain_stops_at_the_depth_limit_on_a_repeat_and_past_its_runs() -> None:
    chain = Chain()
    deeper = chain.enter(HOOK, "a").enter(HOOK, "b").enter(HOOK, "c")
    assert deeper.depth == 3
    with pytest.raises(HookLoop, match="depth limit of 3"):
        deeper.enter(HOOK, "d")
    with pytest.raises(HookLoop, match="would run twice on orders/a"):
        chain.enter(HOOK, "a").enter(HOOK, "a")
    other = HookSpec("other", "f", "orders", "afterCreate")
    assert chain.enter(HOOK, "a").enter(other, "a").depth == 2  # another hook on the same document may run
    wide = Chain()
    for i in range(Chain.max_runs):
        wide.enter(HOOK, f"w{i}")
    with pytest.raises(HookLoop, match="more than 50 hook runs"):
        wide.enter(HOOK, "one-more")


def test_a_trigger_disables_itself_after_its_consecutive_faults_until_enabled(state_location: StateLocation) -> None:
    store = connect(state_location)
    try:
        assert triggerstate.states(store) == {} and not triggerstate.is_disabled(store, "t")
        triggerstate.fault(store, "t", "boom 1", 3)
        triggerstate.succeeded(store, "t")  # a good run: the count starts again
        assert triggerstate.states(store)["t"].faults == 0
        for n in range(2):
            assert not triggerstate.fault(store, "t", f"boom {n}", 3).disabled
        state = triggerstate.fault(store, "t", "boom 3", 3)
        assert state.disabled and state.faults == 3 and state.last_error == "boom 3"
        assert triggerstate.is_disabled(store, "t")
        first = state.disabled_at
        assert triggerstate.fault(store, "t", "boom 4", 3).disabled_at == first  # disabled once, when it happened
        triggerstate.succeeded(store, "t")
        assert triggerstate.is_disabled(store, "t")  # only `enable` turns it back on
        before = triggerstate.enable(store, "t")
        assert before is not None and before.faults == 4
        assert not triggerstate.is_disabled(store, "t") and "t" not in triggerstate.states(store)
        assert triggerstate.enable(store, "never-faulted") is None
    finally:
        store.close()


def test_the_gateways_copy_of_the_health_disables_audits_and_sees_enable(state_location: StateLocation) -> None:
    path = state_location
    connect(path).close()
    hook = HookSpec("t", "f", "orders", "beforeCreate", disable_after=2)
    states = TriggerStates(path)

    async def faults() -> None:
        await states.refresh()
        await states.fault(hook, "boom")
        assert not states.is_disabled("t") and states.disabled() == ()
        await states.fault(hook, "boom again")
        assert states.is_disabled("t") and states.disabled() == ("t",)

    async def refreshed() -> bool:
        await states.refresh()
        return not states.is_disabled("t")

    try:
        asyncio.run(faults())
        store = connect(path)
        try:
            records = audit_records(store, AuditFilter(), limit=100)
            assert [(r.action, r.target, r.detail) for r in records] == [
                ("trigger-disable", "t", "2 consecutive faults; last: boom again")
            ]
            triggerstate.enable(store, "t")  # what `fnctl enable` does, from another process
        finally:
            store.close()
        wait_until(lambda: asyncio.run(refreshed()), what="the gateway to see the trigger enabled", timeout=5)
    finally:
        states.close()


def test_paused_refreshes_in_the_background_for_the_on_commit_dispatcher(state_location: StateLocation) -> None:
    """`paused()` (the dispatcher's sync callable) answers at once and re-reads a stale copy in the background:
    a trigger disabled by another process is paused within a round or two."""
    path = state_location
    store = connect(path)
    states = TriggerStates(path)

    async def main() -> tuple[str, ...]:
        assert states.paused() == ()  # nothing read yet: answered at once, a refresh started
        triggerstate.fault(store, "ship", "status 500", 1)  # disabled by another process
        deadline = asyncio.get_running_loop().time() + 5
        while not states.paused():
            assert asyncio.get_running_loop().time() < deadline, "the trigger was never seen paused"
            await asyncio.sleep(0.05)  # a dispatcher round's pace
        return states.paused()

    try:
        assert asyncio.run(main()) == ("ship",)
    finally:
        states.close()
        store.close()
