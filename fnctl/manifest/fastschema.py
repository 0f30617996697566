"""Compiled schema checks: the fast path of schema checking (`fnctl.manifest.schemas`).

jsonschema interprets a schema anew for every value it checks (about a millisecond per manifest document);
compiled once into closures, the same rules take microseconds. A compiled check only answers "valid?": when
it says no, jsonschema runs and explains. It follows jsonschema's semantics keyword by keyword, and declines
to compile (leaving all the work to jsonschema) a schema using any assertion it does not know.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin

Check = Callable[[Any], bool]
# Every assertion keyword of jsonschema's draft 2020-12 validator (the tests keep this in step with it);
# keywords outside this set are annotations, which jsonschema ignores too.
ASSERTIONS = frozenset(
    {
        "$dynamicRef",
        "$ref",
        "additionalProperties",
        "allOf",
        "anyOf",
        "const",
        "contains",
        "dependentRequired",
        "dependentSchemas",
        "enum",
        "exclusiveMaximum",
        "exclusiveMinimum",
        "format",
        "if",
        "items",
        "maxItems",
        "maxLength",
        "maxProperties",
        "maximum",
        "minItems",
        "minLength",
        "minProperties",
        "minimum",
        "multipleOf",
        "not",
        "oneOf",
        "pattern",
        "patternProperties",
        "prefixItems",
        "properties",
        "propertyNames",
        "required",
        "type",
        "unevaluatedItems",
        "unevaluatedProperties",
        "uniqueItems",
    }
)
_UNCOMPILED = {"contains", "dependentSchemas", "multipleOf", "prefixItems", "unevaluatedItems", "unevaluatedProperties"}


class _Unsupported(Exception):
    pass


def compile_check(
    schema: Any, base: str, documents: Callable[[str], Any], formats: dict[str, Check] | None = None
) -> Check | None:
    """`schema` (whose URI is `base`) as one function: value -> valid?; None when it cannot be compiled.

    `documents` gives the schema at a URI (for `$ref`). Without `formats`, `format` is ignored, as
    jsonschema does without a format checker. With it, `format` is asserted: by `formats[name]`, and for
    other names any string is taken as possibly invalid. That is safe only where a "no" cannot turn into a
    "yes", so such a schema must not use `not`, `oneOf` or `if`.
    """
    try:
        return _Compiler(documents, formats, schema).compile(schema, base)
    except (_Unsupported, LookupError, TypeError, ValueError, re.error):
        return None


class _Compiler:
    def __init__(self, documents: Callable[[str], Any], formats: dict[str, Check] | None, entry: Any) -> None:
        self.documents, self.formats, self.entry = documents, formats, entry
        self.memo: dict[tuple[int, str], Check] = {}

    def _monotone(self) -> None:
        if self.formats is not None:
            raise _Unsupported  # a cautious "no" from a format would become a "yes" here

    def compile(self, schema: Any, base: str) -> Check:
        key = (id(schema), base)
        if key not in self.memo:
            cell: list[Check] = []
            self.memo[key] = lambda value: cell[0](value)  # a recursive schema refers to itself
            cell.append(self._build(schema, base))
            self.memo[key] = cell[0]
        return self.memo[key]

    def _build(self, schema: Any, base: str) -> Check:
        if schema is True or schema is False:
            return _always if schema else _never
        if not isinstance(schema, dict) or schema.keys() & _UNCOMPILED:
            raise _Unsupported
        if "$id" in schema:
            base = urljoin(base, schema["$id"])
        done: frozenset[str] = _TYPE_KEYWORD
        checks = [_type(schema["type"])] if "type" in schema else []
        if schema.get("type") == "object" and "patternProperties" not in schema:
            done = _OBJECT_KEYWORDS  # the most common shape of all, in one closure instead of four
            checks = [self._object(schema, base)]
        for keyword, value in schema.items():
            if keyword in ASSERTIONS and keyword not in done:
                checks.append(getattr(self, "_" + keyword.lstrip("$"))(value, schema, base))
        return _every([c for c in checks if c is not _always])

    def _object(self, schema: Any, base: str) -> Check:
        """`type: object` with `required`, `properties` and `additionalProperties`, whichever are there."""
        required = tuple(schema.get("required", ()))
        if not all(isinstance(key, str) for key in required):
            raise _Unsupported
        checks: dict[str, Check | None] = {}
        for key, sub in schema.get("properties", {}).items():
            check = self.compile(sub, base)
            checks[key] = None if check is _always else check
        extra = self.compile(schema.get("additionalProperties", True), base)
        fallback = None if extra is _always else extra

        def check_object(value: Any) -> bool:
            if not isinstance(value, dict):
                return False
            for key in required:
                if key not in value:
                    return False
            for key, item in value.items():
                sub = checks.get(key, fallback)
                if sub is not None and not sub(item):
                    return False
            return True

        return check_object

    def _ref(self, ref: str, schema: Any, base: str) -> Check:
        uri, fragment = urldefrag(urljoin(base, ref))
        target = self.documents(uri)
        if target is None or (fragment and not fragment.startswith("/")):
            raise _Unsupported  # an unknown document, or an anchor
        for part in fragment.split("/")[1:]:
            target = target[unquote(part).replace("~1", "/").replace("~0", "~")]
            if isinstance(target, dict) and "$id" in target:
                raise _Unsupported  # a resource embedded along the way would change the base URI
        return self.compile(target, uri)

    def _dynamicRef(self, ref: str, schema: Any, base: str) -> Check:
        # Only the meta-schemas' use: `#meta` resolves to the outermost schema with `$dynamicAnchor: meta`,
        # the entry point, when the static target carries that anchor too.
        anchor = ref[1:] if ref.startswith("#") else None
        here = self.documents(urldefrag(base)[0]) or {}
        if anchor is None or here.get("$dynamicAnchor") != anchor or self.entry.get("$dynamicAnchor") != anchor:
            raise _Unsupported
        return self.compile(self.entry, self.entry["$id"])

    def _additionalProperties(self, extra: Any, schema: Any, base: str) -> Check:
        if "properties" in schema and "patternProperties" not in schema:
            return _always  # checked together with `properties`
        check = self.compile(extra, base)
        known = set(schema.get("properties", {}))
        pattern = re.compile("|".join(schema.get("patternProperties", {}))) if "patternProperties" in schema else None
        return lambda value: (
            not isinstance(value, dict)
            or all(check(v) for k, v in value.items() if k not in known and not (pattern and pattern.search(k)))
        )

    def _properties(self, properties: dict[str, Any], schema: Any, base: str) -> Check:
        checks = {key: self.compile(sub, base) for key, sub in properties.items()}
        extra = None
        if "additionalProperties" in schema and "patternProperties" not in schema:
            extra = self.compile(schema["additionalProperties"], base)

        def check(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            for key, item in value.items():
                sub = checks.get(key, extra)
                if sub is not None and not sub(item):
                    return False
            return True

        return check

    def _patternProperties(self, patterns: dict[str, Any], schema: Any, base: str) -> Check:
        checks = [(re.compile(p), self.compile(sub, base)) for p, sub in patterns.items()]
        return lambda value: (
            not isinstance(value, dict) or all(c(v) for p, c in checks for k, v in value.items() if p.search(k))
        )

    def _propertyNames(self, names: Any, schema: Any, base: str) -> Check:
        check = self.compile(names, base)
        return lambda value: not isinstance(value, dict) or all(check(k) for k in value)

    def _required(self, required: list[str], schema: Any, base: str) -> Check:
        if isinstance(required, list) and len(required) == 1:  # e.g. each alternative of a `oneOf`
            only = required[0]
            return lambda value: not isinstance(value, dict) or only in value
        return lambda value: not isinstance(value, dict) or all(k in value for k in required)

    def _dependentRequired(self, dependent: dict[str, list[str]], schema: Any, base: str) -> Check:
        return lambda value: (
            not isinstance(value, dict)
            or all(d in value for k, needs in dependent.items() if k in value for d in needs)
        )

    def _items(self, items: Any, schema: Any, base: str) -> Check:
        check = self.compile(items, base)

        def check_items(value: Any) -> bool:
            if isinstance(value, list):
                for item in value:
                    if not check(item):
                        return False
            return True

        return check_items

    def _allOf(self, subs: list[Any], schema: Any, base: str) -> Check:
        return _every([self.compile(s, base) for s in subs])

    def _anyOf(self, subs: list[Any], schema: Any, base: str) -> Check:
        checks = [self.compile(s, base) for s in subs]
        return lambda value: any(c(value) for c in checks)

    def _oneOf(self, subs: list[Any], schema: Any, base: str) -> Check:
        self._monotone()
        checks = [self.compile(s, base) for s in subs]

        def one_of(value: Any) -> bool:
            found = False
            for check in checks:
                if check(value):
                    if found:
                        return False  # a second match: the rest need not run
                    found = True
            return found

        return one_of

    def _not(self, sub: Any, schema: Any, base: str) -> Check:
        self._monotone()
        check = self.compile(sub, base)
        return lambda value: not check(value)

    def _if(self, sub: Any, schema: Any, base: str) -> Check:
        self._monotone()
        test = self.compile(sub, base)
        then = self.compile(schema.get("then", True), base)
        otherwise = self.compile(schema.get("else", True), base)
        return lambda value: then(value) if test(value) else otherwise(value)

    def _enum(self, options: list[Any], schema: Any, base: str) -> Check:
        if all(isinstance(o, str) for o in options):
            strings = frozenset(options)
            return lambda value: isinstance(value, str) and value in strings
        return lambda value: any(_equal(value, o) for o in options)

    def _const(self, const: Any, schema: Any, base: str) -> Check:
        return self._enum([const], schema, base)

    def _format(self, name: str, schema: Any, base: str) -> Check:
        if self.formats is None:
            return _always
        return self.formats.get(name) or (lambda value: not isinstance(value, str))

    def _pattern(self, pattern: str, schema: Any, base: str) -> Check:
        search = re.compile(pattern).search
        return lambda value: not isinstance(value, str) or search(value) is not None

    def _uniqueItems(self, unique: bool, schema: Any, base: str) -> Check:
        return _always if not unique else (lambda value: not isinstance(value, list) or _unique(value))

    def _minimum(self, n: Any, schema: Any, base: str) -> Check:
        return lambda value: not _is_number(value) or not value < n

    def _exclusiveMinimum(self, n: Any, schema: Any, base: str) -> Check:
        return lambda value: not _is_number(value) or not value <= n

    def _maximum(self, n: Any, schema: Any, base: str) -> Check:
        return lambda value: not _is_number(value) or not value > n

    def _exclusiveMaximum(self, n: Any, schema: Any, base: str) -> Check:
        return lambda value: not _is_number(value) or not value >= n

    def _minLength(self, n: int, schema: Any, base: str) -> Check:
        return lambda value: not isinstance(value, str) or len(value) >= n

    def _maxLength(self, n: int, schema: Any, base: str) -> Check:
        return lambda value: not isinstance(value, str) or len(value) <= n

    def _minItems(self, n: int, schema: Any, base: str) -> Check:
        return lambda value: not isinstance(value, list) or len(value) >= n

    def _maxItems(self, n: int, schema: Any, base: str) -> Check:
        return lambda value: not isinstance(value, list) or len(value) <= n

    def _minProperties(self, n: int, schema: Any, base: str) -> Check:
        return lambda value: not isinstance(value, dict) or len(value) >= n

    def _maxProperties(self, n: int, schema: Any, base: str) -> Check:
        return lambda value: not isinstance(value, dict) or len(value) <= n


def _always(value: Any) -> bool:
    return True


def _never(value: Any) -> bool:
    return False


def _every(checks: list[Check]) -> Check:
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda value: first(value) and second(value)

    def every(value: Any) -> bool:
        for check in checks:
            if not check(value):
                return False
        return True

    return every


_TYPE_KEYWORD = frozenset({"type"})
_OBJECT_KEYWORDS = frozenset({"type", "required", "properties", "additionalProperties"})


def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is int or kind is float:  # what YAML gives: decided without the ABC's slower check
        return True
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


_TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "number": _is_number,
    "integer": lambda v: (
        type(v) is int or not isinstance(v, bool) and (isinstance(v, int) or isinstance(v, float) and v.is_integer())
    ),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


_PLAIN_TYPES: dict[str, type] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type(kinds: str | list[str]) -> Check:
    if isinstance(kinds, str):
        return _TYPES[kinds]
    if all(k in _PLAIN_TYPES for k in kinds):  # one isinstance for e.g. ["object", "boolean"]
        plain = tuple(_PLAIN_TYPES[k] for k in kinds)
        return lambda value: isinstance(value, plain)
    checks = [_TYPES[k] for k in kinds]
    return lambda value: any(c(value) for c in checks)


def _equal(one: Any, two: Any) -> bool:
    """jsonschema's equality: True is not 1, 1 is 1.0, lists and mappings compared item by item."""
    if one is two:
        return True
    if isinstance(one, str) or isinstance(two, str):
        return bool(one == two)
    if isinstance(one, list) and isinstance(two, list):
        return len(one) == len(two) and all(_equal(a, b) for a, b in zip(one, two, strict=True))
    if isinstance(one, dict) and isinstance(two, dict):
        return len(one) == len(two) and all(k in two and _equal(v, two[k]) for k, v in one.items())
    if isinstance(one, bool) or isinstance(two, bool):
        return isinstance(one, bool) and isinstance(two, bool) and one == two
    return bool(one == two)


def _unique(items: list[Any]) -> bool:
    if all(isinstance(i, str) for i in items):
        return len(set(items)) == len(items)
    return not any(_equal(a, b) for i, a in enumerate(items) for b in items[i + 1 :])
