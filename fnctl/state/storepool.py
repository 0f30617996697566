"""A few store connections kept open for a long-running process's short, repeated work (a serving gateway's
pool actions): each borrower has a store to itself while it holds it, and gives it back rather than closing
it, so that work done every fraction of a second does not cost a new connection each time -- on PostgreSQL a
server process forked and a schema check, on SQLite the file opened and its schema read.

A store is never used by two threads at once (a borrowed one is the borrower's alone), but it may be used by
different threads one after the other: the SQLite backend opens its connection with `check_same_thread=False`
and the PostgreSQL one reconnects when the server dropped it (docs/state.md, Errors).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fnctl.errors import FnctlError
from fnctl.state.location import StateLocation
from fnctl.state.store import Store, connect

KEEP = 2  # idle connections kept: the pools' two kinds of worker threads (reads, and starts and stops)


class StorePool:
    def __init__(self, location: StateLocation, keep: int = KEEP) -> None:
        self.location = location
        self._keep = keep
        self._idle: list[Store] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def store(self) -> Iterator[Store]:
        """A store for this thread alone until the block ends; an idle one when there is, else a new one."""
        with self._lock:
            store = self._idle.pop() if self._idle else None
        if store is None:
            store = connect(self.location)
        try:
            yield store
        except FnctlError:
            self._give_back(store)  # a refusal (a revision that cannot serve, a store error): the store is fine
            raise
        except BaseException:
            store.close()  # an unexpected failure may have left it in a state not worth keeping
            raise
        self._give_back(store)

    def _give_back(self, store: Store) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._keep:
                self._idle.append(store)
                return
        store.close()

    def close(self) -> None:
        """Close the idle stores; those borrowed now are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for store in idle:
            store.close()
