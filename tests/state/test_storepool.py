"""StorePool: a long-running process's few kept store connections, on each backend."""

from __future__ import annotations

import threading

import pytest

from fnctl.errors import FnctlError
from fnctl.state.location import StateLocation
from fnctl.state.storepool import StorePool


def test_a_store_given_back_is_lent_again_and_never_to_two_borrowers_at_once(state_location: StateLocation) -> None:
    stores = StorePool(state_location, keep=1)
    try:
        with stores.store() as first:
            first.routes()
            with stores.store() as second:  # the first is lent: another connection
                assert second is not first
        with stores.store() as again:
            assert again is second  # given back first, and kept (keep=1); the first was closed
        with pytest.raises(FnctlError), stores.store() as refused:
            raise FnctlError("a refusal")
        with stores.store() as after:
            assert after is refused  # a refusal does not cost the connection
        with pytest.raises(RuntimeError), stores.store() as broken:
            raise RuntimeError("unexpected")
        with stores.store() as fresh:
            assert fresh is not broken  # an unexpected failure does
        seen: list[int] = []

        def work() -> None:
            with stores.store() as store:
                seen.append(len(store.routes()))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen == [0, 0, 0, 0]
    finally:
        stores.close()
    with stores.store() as late:
        late.routes()  # still usable after close, but not kept
    with stores.store() as later:
        assert later is not late
