"""Who is reading or writing: built by the gateway from its `auth.Principal`, by the broker for a function's
invocation, or `Caller.operator(actor)` for the operator's CLI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    subject: str  # "key:<id>", a JWT's sub (as the audit names it), "operator:<actor>", "function:<name>"
    kind: str  # "anonymous" | "key" | "jwt" | "operator" | "function"
    roles: frozenset[str]
    tenant: str = ""  # "" : the default tenant; every read and write is scoped to it
    function: str | None = None  # the function this call comes from (context.db), for the change log
    revision: int | None = None

    @classmethod
    def operator(cls, actor: str, tenant: str = "") -> Caller:
        """The operator's CLI: may do everything (every write is in the change log)."""
        return cls(f"operator:{actor}", "operator", frozenset(), tenant)

    @classmethod
    def for_function(cls, name: str, revision: int | None, tenant: str = "") -> Caller:
        """A `runAs: function` call: the rights of the role `function:NAME`."""
        return cls(f"function:{name}", "function", frozenset({f"function:{name}"}), tenant, name, revision)

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    def calling_from(self, function: str, revision: int | None) -> Caller:
        """The same caller, acting through `function` (runAs: caller): its rights, the function recorded."""
        return Caller(self.subject, self.kind, self.roles, self.tenant, function, revision)
