"""Views' cache, decided purely: an entry's key, what its computation read (`ReadSet`), whether a committed
change overlaps it, and the cache itself (`ViewCache`: LRU bounded by bytes, TTL, exact eviction, and the
check that keeps a computation that raced with a write from storing a stale entry). No I/O, no clock (the
caller passes `now`), no asyncio: `fnctl.gateway.views` drives it.

Exact eviction: an entry is evicted by a change (in its tenant) to a document it read by id (whatever the
version: any change makes a new one), by a change whose document before or after matches the filter of a find
it made in that collection, and by any change to a collection it depends on wholly (`dependsOn`, or a find
whose filter could not be parsed). Nothing else evicts it but its TTL and the LRU bound.

Never stale: each batch of changes the cache learns is a new *generation*, and the changes of the last
generations are kept (`RECENT` of them). A computation notes the generation it starts at; when it finishes,
its entry is stored only if no change learnt since overlaps what it read (and only if the changes since are
all still known: else it is simply not stored). A change learnt after the store evicts the entry as usual.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fnctl.data.committed import Committed
from fnctl.data.errors import DataError
from fnctl.data.filters import Filter, matches, parse

RECENT = 4096  # changes kept to check finishing computations against
ENTRY_OVERHEAD = 512  # bytes counted per entry beyond its body (key, read set, bookkeeping)
_CANONICAL = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class ViewKey:
    view: str
    revision: int
    args: str  # canonical JSON of the event
    caller: str  # the caller's subject when the result depends on who asks, else its roles
    tenant: str
    policies: str  # the version (a digest) of the Policies in force


def canonical_args(event: Any) -> str:
    """The event as canonical JSON (sorted keys, compact): equal arguments, equal keys."""
    return str(_CANONICAL.encode(event))


def caller_scope(per_caller: bool, subject: str, roles: Iterable[str], policies_text: str) -> str:
    """What of the caller the key holds: its subject for a `perCaller` view, or when some Policy's row rule
    names `$caller.id` (then two callers with the same roles may read different rows); else its roles."""
    if per_caller or "$caller.id" in policies_text:
        return "subject:" + subject
    return "roles:" + ",".join(sorted(set(roles)))


@dataclass
class ReadSet:
    """What a view's computation read through `context.db` (in its tenant)."""

    ids: set[tuple[str, str]] = field(default_factory=set)  # (collection, id), read by get
    finds: list[tuple[str, Filter]] = field(default_factory=list)  # (collection, filter)
    collections: set[str] = field(default_factory=set)  # depended on wholly

    def get(self, collection: str, id: str) -> None:
        self.ids.add((collection, id))

    def find(self, collection: str, raw_filter: Any) -> None:
        try:
            self.finds.append((collection, parse(raw_filter if raw_filter is not None else {})))
        except DataError:  # the call fails; should the handler go on, depend on the whole collection
            self.collections.add(collection)

    def touched(self) -> set[str]:
        """The collections whose changes may concern this read set."""
        return {c for c, _ in self.ids} | {c for c, _ in self.finds} | self.collections


def overlaps(reads: ReadSet, tenant: str, change: Committed) -> bool:
    """Whether `change` may change what a computation with `reads` (in `tenant`) would return."""
    if change.tenant != tenant:
        return False
    collection = change.collection
    if collection in reads.collections or (collection, change.id) in reads.ids:
        return True
    for name, ast in reads.finds:
        if name == collection and any(doc is not None and matches(ast, doc) for doc in (change.before, change.after)):
            return True
    return False


@dataclass
class Entry:
    key: ViewKey
    body: bytes
    reads: ReadSet
    expires: float | None  # the monotonic time its TTL ends (None: no TTL)
    size: int


class ViewCache:
    """The entries of every view, LRU within `max_bytes`. Thread-safe: changes are learnt on the data plane's
    thread (right after a commit), entries are read and stored on the event loop."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[ViewKey, Entry] = OrderedDict()
        self._by_collection: dict[tuple[str, str], set[ViewKey]] = {}  # (tenant, collection) → keys
        self._depends: Mapping[str, Sequence[str]] = {}  # view → its dependsOn collections
        self.generation = 0
        self._recent: deque[tuple[int, Committed]] = deque()
        self._forgotten = 0  # the newest generation some of whose changes are no longer in _recent
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def set_depends(self, depends: Mapping[str, Sequence[str]]) -> None:
        """Each view's `dependsOn` (entries stored from now on depend on those collections wholly)."""
        self._depends = depends

    def get(self, key: ViewKey, now: float) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires is not None and now >= entry.expires:
                self._drop(entry)
                return None
            self._entries.move_to_end(key)
            return entry.body

    def start(self) -> int:
        """The generation a computation starts at (pass it to `put`)."""
        return self.generation

    def changed_since(self, generation: int) -> bool:
        return self.generation != generation

    def put(self, key: ViewKey, body: bytes, reads: ReadSet, started: int, expires: float | None) -> bool:
        """Store a computation's result, unless a change learnt since it `started` overlaps what it read (or
        the changes since are no longer all known), or it is larger than the whole cache. Whether stored."""
        reads.collections.update(self._depends.get(key.view, ()))
        size = len(body) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return False
        with self._lock:
            if self.generation != started and (self._forgotten > started or self._raced(reads, key.tenant, started)):
                return False
            old = self._entries.get(key)
            if old is not None:
                self._drop(old)
            entry = Entry(key, body, reads, expires, size)
            self._entries[key] = entry
            self.bytes += size
            for collection in reads.touched():
                self._by_collection.setdefault((key.tenant, collection), set()).add(key)
            while self.bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries.values())))
            return True

    def _raced(self, reads: ReadSet, tenant: str, started: int) -> bool:
        """Whether a change learnt after generation `started` overlaps `reads` (the lock held)."""
        for generation, change in reversed(self._recent):
            if generation <= started:
                return False
            if overlaps(reads, tenant, change):
                return True
        return False

    def learn(self, changes: Sequence[Committed]) -> dict[str, int]:
        """A commit's changes: evict the entries they overlap; a new generation. Evictions per view."""
        evicted: dict[str, int] = {}
        with self._lock:
            self.generation += 1
            for change in changes:
                self._recent.append((self.generation, change))
                if len(self._recent) > RECENT:
                    self._forgotten = self._recent.popleft()[0]
                keys = self._by_collection.get((change.tenant, change.collection))
                if not keys:
                    continue
                for key in list(keys):
                    entry = self._entries.get(key)
                    if entry is not None and overlaps(entry.reads, key.tenant, change):
                        self._drop(entry)
                        evicted[key.view] = evicted.get(key.view, 0) + 1
        return evicted

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_collection.clear()
            self.bytes = 0

    def reset(self) -> None:
        """Forget everything, as if every entry had been overlapped: the entries, and the results of
        computations in progress (they will not be stored). For a backlog of changes too long to go through."""
        with self._lock:
            self._entries.clear()
            self._by_collection.clear()
            self.bytes = 0
            self.generation += 1
            self._recent.clear()
            self._forgotten = self.generation

    def _drop(self, entry: Entry) -> None:
        """Remove an entry (the lock held)."""
        if self._entries.pop(entry.key, None) is None:
            return
        self.bytes -= entry.size
        for collection in entry.reads.touched():
            keys = self._by_collection.get((entry.key.tenant, collection))
            if keys is not None:
                keys.discard(entry.key)
                if not keys:
                    del self._by_collection[(entry.key.tenant, collection)]


def query_event(pairs: Sequence[tuple[str, str]], parameters: Any) -> dict[str, Any]:
    """A view's event from its query string: each key once (repeated: the list of its values), each value as
    the string it is, unless the `parameters` schema declares that property as something else than a string
    (a number, a boolean, an object...), whose value is then read as JSON (kept as a string when it is not)."""
    properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
    grouped: dict[str, list[Any]] = {}
    for name, text in pairs:
        declared = properties.get(name) if isinstance(properties, Mapping) else None
        kind = declared.get("type") if isinstance(declared, Mapping) else None
        value: Any = text
        if kind is not None and kind != "string":
            try:
                value = json.loads(text)
            except ValueError:
                value = text
        grouped.setdefault(name, []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in grouped.items()}
