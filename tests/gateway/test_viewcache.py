"""Views' cache decided purely: keys, the overlap of a change with what a computation read, eviction (exact,
dependsOn, TTL, LRU by bytes), the race check that keeps a computation from storing what a write made
stale, query arguments; and the onCommit dispatcher's retry decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fnctl.data.committed import Committed
from fnctl.gateway.dispatcher import next_attempt, retry_policy
from fnctl.gateway.viewcache import (
    ENTRY_OVERHEAD,
    RECENT,
    ReadSet,
    ViewCache,
    ViewKey,
    caller_scope,
    canonical_args,
    overlaps,
    query_event,
)


def _doc(id: str, **data: Any) -> dict[str, Any]:
    return {"id": id, "version": 1, "data": data}


def _change(
    collection: str, id: str, before: dict[str, Any] | None, after: dict[str, Any] | None, tenant: str = ""
) -> Committed:
    return Committed(1, collection, tenant, id, "replace", before, after)


def _key(view: str = "v", revision: int = 1, args: Any = None, tenant: str = "") -> ViewKey:
    return ViewKey(view, revision, canonical_args(args or {}), "roles:", tenant, "p0")


def test_canonical_args_do_not_depend_on_key_order() -> None:
    assert canonical_args({"b": 1, "a": [1, {"y": 2, "x": 1}]}) == canonical_args({"a": [1, {"x": 1, "y": 2}], "b": 1})
    assert canonical_args({"a": 1}) != canonical_args({"a": "1"})


def test_caller_scope_is_the_subject_when_per_caller_or_rules_name_the_caller() -> None:
    assert caller_scope(True, "key:a", ["r"], "{}") == "subject:key:a"
    assert caller_scope(False, "key:a", ["r", "q", "r"], "{}") == "roles:q,r"
    assert caller_scope(False, "key:a", ["r"], '{"where": {"customer": "$caller.id"}}') == "subject:key:a"


def test_a_document_read_by_id_is_overlapped_by_any_change_to_it_in_its_tenant() -> None:
    reads = ReadSet()
    reads.get("orders", "o1")
    assert overlaps(reads, "", _change("orders", "o1", _doc("o1"), _doc("o1")))
    assert overlaps(reads, "", _change("orders", "o1", None, _doc("o1")))  # created after a 404
    assert not overlaps(reads, "", _change("orders", "o2", _doc("o2"), _doc("o2")))
    assert not overlaps(reads, "", _change("customers", "o1", None, _doc("o1")))
    assert not overlaps(reads, "t2", _change("orders", "o1", None, _doc("o1")))  # another tenant's o1


def test_a_find_is_overlapped_by_a_change_matching_its_filter_before_or_after() -> None:
    reads = ReadSet()
    reads.find("orders", {"customer": "c1"})
    assert overlaps(reads, "", _change("orders", "x", None, _doc("x", customer="c1")))  # enters
    assert overlaps(reads, "", _change("orders", "x", _doc("x", customer="c1"), _doc("x", customer="c2")))  # leaves
    assert overlaps(reads, "", _change("orders", "x", _doc("x", customer="c1"), None))  # deleted
    assert not overlaps(reads, "", _change("orders", "x", _doc("x", customer="c2"), _doc("x", customer="c3")))


def test_a_bad_filter_depends_on_the_whole_collection() -> None:
    reads = ReadSet()
    reads.find("orders", {"$bogus": 1})
    assert overlaps(reads, "", _change("orders", "any", None, _doc("any")))


def test_learn_evicts_exactly_the_overlapping_entries() -> None:
    cache = ViewCache(1 << 20)
    c1, c2 = ReadSet(), ReadSet()
    c1.find("orders", {"customer": "c1"})
    c2.find("orders", {"customer": "c2"})
    k1, k2 = _key(args={"customer": "c1"}), _key(args={"customer": "c2"})
    assert cache.put(k1, b"1", c1, cache.start(), None)
    assert cache.put(k2, b"2", c2, cache.start(), None)
    evicted = cache.learn([_change("orders", "n", None, _doc("n", customer="c1"))])
    assert evicted == {"v": 1}
    assert cache.get(k1, 0) is None
    assert cache.get(k2, 0) == b"2"
    assert cache.learn([_change("orders", "m", None, _doc("m", customer="c9"))]) == {}
    assert cache.get(k2, 0) == b"2"


def test_depends_on_evicts_on_any_change_of_the_collection_in_the_tenant() -> None:
    cache = ViewCache(1 << 20)
    cache.set_depends({"v": ("prices",)})
    key = _key()
    assert cache.put(key, b"x", ReadSet(), cache.start(), None)
    assert cache.learn([_change("prices", "p", None, _doc("p"), tenant="other")]) == {}
    assert cache.learn([_change("prices", "p", None, _doc("p"))]) == {"v": 1}
    assert cache.get(key, 0) is None


def test_ttl_expires_an_entry() -> None:
    cache = ViewCache(1 << 20)
    key = _key()
    cache.put(key, b"x", ReadSet(), cache.start(), expires=10.0)
    assert cache.get(key, 9.9) == b"x"
    assert cache.get(key, 10.0) is None
    assert len(cache) == 0


def test_lru_bounded_by_bytes() -> None:
    size = 100 + ENTRY_OVERHEAD
    cache = ViewCache(3 * size)
    keys = [_key(args={"n": i}) for i in range(4)]
    for key in keys[:3]:
        cache.put(key, b"x" * 100, ReadSet(), cache.start(), None)
    assert cache.get(keys[0], 0) is not None  # used: now the most recent
    cache.put(keys[3], b"x" * 100, ReadSet(), cache.start(), None)
    assert cache.get(keys[1], 0) is None  # the least recently used went
    assert all(cache.get(k, 0) is not None for k in (keys[0], keys[2], keys[3]))
    assert cache.bytes == 3 * size
    assert not cache.put(_key(args={"big": 1}), b"x" * (3 * size), ReadSet(), cache.start(), None)


def test_a_computation_that_raced_with_an_overlapping_write_is_not_stored() -> None:
    cache = ViewCache(1 << 20)
    reads = ReadSet()
    reads.get("orders", "o1")
    started = cache.start()
    cache.learn([_change("orders", "o1", _doc("o1"), _doc("o1"))])  # committed while it ran
    assert not cache.put(_key(), b"stale", reads, started, None)
    assert cache.get(_key(), 0) is None


def test_a_computation_that_raced_with_an_unrelated_write_is_stored() -> None:
    cache = ViewCache(1 << 20)
    reads = ReadSet()
    reads.get("orders", "o1")
    started = cache.start()
    cache.learn([_change("orders", "o2", _doc("o2"), _doc("o2"))])
    assert cache.put(_key(), b"fresh", reads, started, None)


def test_a_computation_older_than_the_changes_kept_is_not_stored() -> None:
    cache = ViewCache(1 << 20)
    started = cache.start()
    for i in range(RECENT + 1):
        cache.learn([_change("other", f"x{i}", None, _doc(f"x{i}"))])
    reads = ReadSet()
    reads.get("orders", "o1")
    assert not cache.put(_key(), b"?", reads, started, None)  # what happened since is no longer all known


def test_revisions_have_entries_of_their_own() -> None:
    cache = ViewCache(1 << 20)
    stable, canary = _key(revision=1), _key(revision=2)
    cache.put(canary, b"canary", ReadSet(), cache.start(), None)
    assert cache.get(stable, 0) is None
    cache.put(stable, b"stable", ReadSet(), cache.start(), None)
    assert cache.get(canary, 0) == b"canary" and cache.get(stable, 0) == b"stable"


def test_query_event_reads_declared_non_strings_as_json() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}, "f": {}}}
    assert query_event([("n", "5"), ("s", "5"), ("f", "x")], schema) == {"n": 5, "s": "5", "f": "x"}
    assert query_event([("n", "five")], schema) == {"n": "five"}  # left for the schema check to refuse
    assert query_event([("s", "a"), ("s", "b"), ("s", "c")], schema) == {"s": ["a", "b", "c"]}
    assert query_event([], None) == {}


def test_retry_policy_and_backoff() -> None:
    assert retry_policy(None) == (5, 1.0)
    assert retry_policy({"retry": {"maxAttempts": 3, "backoff": "200ms"}}) == (3, 0.2)
    assert next_attempt(1, 3, 0.2, 100.0) == 100.2
    assert next_attempt(2, 3, 0.2, 100.0) == 100.4
    assert next_attempt(3, 3, 0.2, 100.0) is None  # the last attempt failed: a dead letter
    assert next_attempt(30, 100, 1.0, 0.0) == 300.0  # capped


def test_the_cache_size_comes_from_fnctl_toml(tmp_path: Path) -> None:
    from fnctl.errors import BadInput
    from fnctl.gateway.serve import view_cache_bytes
    from fnctl.gateway.views import DEFAULT_CACHE_BYTES
    from fnctl.manifest.project import load_project

    config = tmp_path / "fnctl.toml"
    config.write_text('[project]\nname = "p"\n')
    assert view_cache_bytes(load_project(tmp_path)) == DEFAULT_CACHE_BYTES
    config.write_text('[project]\nname = "p"\n\n[views]\ncacheSize = "8Mi"\n')
    assert view_cache_bytes(load_project(tmp_path)) == 8 * 2**20
    config.write_text('[project]\nname = "p"\n\n[views]\ncacheSize = "lots"\n')
    with pytest.raises(BadInput, match="views: cacheSize"):
        view_cache_bytes(load_project(tmp_path))


def test_reset_forgets_entries_and_computations_in_progress() -> None:
    cache = ViewCache(1 << 20)
    cache.put(_key(args={"a": 1}), b"x", ReadSet(), cache.start(), None)
    started = cache.start()
    cache.reset()
    assert cache.get(_key(args={"a": 1}), 0) is None and cache.bytes == 0
    assert not cache.put(_key(args={"b": 1}), b"y", ReadSet(), started, None)  # began before the reset
    assert cache.put(_key(args={"b": 1}), b"y", ReadSet(), cache.start(), None)
