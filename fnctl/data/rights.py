"""What a caller may do on a collection, decided from the live Policies' grants (pure).

`read_rule` / `write_rule` answer None (no access at all), ALL (every row) or a bound row rule: the union
(`$or`) of the caller's roles' `{collection, where}` grants, with `$caller.*` replaced. The operator may do
everything. A `runAs: function` caller has the role `function:NAME` (`Caller.for_function`).
"""

from __future__ import annotations

from collections.abc import Iterable

from fnctl.data.caller import Caller
from fnctl.data.filters import ALL, Filter, Or, bind
from fnctl.manifest.model import Policy, RowRule


def read_rule(caller: Caller, policies: Iterable[Policy], collection: str) -> Filter | None:
    return _rule(caller, policies, collection, write=False)


def write_rule(caller: Caller, policies: Iterable[Policy], collection: str) -> Filter | None:
    return _rule(caller, policies, collection, write=True)


def readable_collections(caller: Caller, policies: Iterable[Policy], names: Iterable[str]) -> list[str]:
    """The collections among `names` the caller may read at least some rows of (the change feed, openapi)."""
    policies = tuple(policies)
    return [n for n in names if read_rule(caller, policies, n) is not None]


def _rule(caller: Caller, policies: Iterable[Policy], collection: str, *, write: bool) -> Filter | None:
    if caller.is_operator:
        return ALL
    rules: list[Filter] = []
    for policy in policies:
        for role, grant in policy.roles.items():
            if role not in caller.roles:
                continue
            for item in grant.write if write else grant.read:
                if isinstance(item, RowRule):
                    if item.collection in ("*", collection):
                        rules.append(bind(item.where, caller))
                elif item in ("*", collection):
                    return ALL
    if not rules:
        return None
    unique = tuple(dict.fromkeys(rules))
    return unique[0] if len(unique) == 1 else Or(unique)
