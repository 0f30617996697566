"""The triggers' health as the gateway sees it (`TriggerStates`): consecutive faults and auto-disable of data
hooks and manual triggers, kept in the store (`fnctl.state.triggerstate`), with a copy the hot path reads
without a thread hop. `is_disabled(trigger)` is what the rest of the gateway asks (onCommit delivery too)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any

from fnctl.data.hooks import HookSpec
from fnctl.state import triggerstate
from fnctl.state.location import StateLocation
from fnctl.state.store import Store, connect

log = logging.getLogger("fnctl.gateway")
STATE_TTL = 0.5  # seconds the gateway trusts its copy of the triggers' health


class TriggerStates:
    """The triggers' health as the gateway sees it: a copy of `trigger_state` re-read at most every STATE_TTL
    seconds (so `fnctl enable` takes effect within it), faults written through. Store access on a thread of
    its own. `is_disabled` is what other parts of the gateway (onCommit delivery) ask."""

    def __init__(self, store_path: StateLocation) -> None:
        self._path = store_path
        self._store: Store | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="fnctl-triggers")
        self._states: dict[str, triggerstate.TriggerState] = {}
        self._loaded = -STATE_TTL
        self._refreshing: asyncio.Task[None] | None = None

    async def _db(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, partial(self._with_store, fn, *args))

    def _with_store(self, fn: Any, *args: Any) -> Any:
        if self._store is None:
            self._store = connect(self._path)
        return fn(self._store, *args)

    async def refresh(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._loaded > STATE_TTL:
            self._states = await self._db(triggerstate.states)
            self._loaded = loop.time()

    def is_disabled(self, trigger: str) -> bool:
        """Is `trigger` disabled, as of the last `refresh` (await it first: it re-reads the store when its copy is
        older than STATE_TTL seconds)? A trigger that never faulted is enabled."""
        state = self._states.get(trigger)
        return state is not None and state.disabled

    def disabled(self) -> tuple[str, ...]:
        """The disabled triggers, as of the last `refresh` (e.g. the onCommit dispatcher's paused ones)."""
        return tuple(sorted(name for name, state in self._states.items() if state.disabled))

    def paused(self) -> tuple[str, ...]:
        """`disabled()` for a caller that cannot await (the onCommit dispatcher's round, on the event loop): a
        stale copy is refreshed in the background, so an enable is seen within a round or two."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._loaded > STATE_TTL and self._refreshing is None:
            self._refreshing = loop.create_task(self._refresh_in_background())
        return self.disabled()

    async def _refresh_in_background(self) -> None:
        try:
            await self.refresh()
        except Exception:  # a busy store: the next round tries again
            log.warning("the triggers' health was not re-read; using the last copy")
        finally:
            self._refreshing = None

    async def fault(self, hook: HookSpec, error: str) -> None:
        state: triggerstate.TriggerState = await self._db(triggerstate.fault, hook.name, error, hook.disable_after)
        was = self._states.get(hook.name)
        self._states[hook.name] = state
        if state.disabled and (was is None or not was.disabled):
            log.error("trigger %s disabled after %d consecutive faults: %s", hook.name, state.faults, error)
            await self._db(_audit_disabled, hook.name, state.faults, error)

    async def succeeded(self, hook: HookSpec) -> None:
        state = self._states.get(hook.name)
        if state is not None and state.faults > 0:
            await self._db(triggerstate.succeeded, hook.name)
            self._states[hook.name] = replace(state, faults=0)

    def close(self) -> None:
        def closing() -> None:
            if self._store is not None:
                self._store.close()

        self._worker.submit(closing)
        self._worker.shutdown(wait=True)


def _audit_disabled(store: Store, trigger: str, faults: int, error: str) -> None:
    store.audit(
        actor="gateway",
        command="serve",
        action="trigger-disable",
        target=trigger,
        outcome="ok",
        detail=f"{faults} consecutive faults; last: {error[:300]}",
    )
