"""Why a value breaks a JSON Schema, explained with jsonschema and referencing (their one boundary module):
the schema half of the slow checks (`fnctl.manifest.slowchecks`, assembled in `fnctl.manifest.fullchecks`).

Nothing on a command's fast path imports it: the compiled checks of `manifest.fastschema` decide, and the CLI
imports this module the first time a value fails one (`fnctl.cli.slowchecks`). jsonschema's errors become
short messages that say what to write instead; a schema may carry an `errorMessage` (the ajv-errors
convention) for values whose pattern means nothing to a reader.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

from fnctl.manifest.diagnostics import JsonPath
from fnctl.manifest.schemas import kind_schema, schemas

_PLAIN_KEYWORDS = {"additionalProperties", "required"}  # their own message beats a schema's errorMessage


@cache
def _registry() -> Registry[Any]:
    return Registry().with_resources((uri, Resource.from_contents(s)) for uri, s in schemas().items())


@cache
def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(kind_schema(kind), registry=_registry())


class SchemaExplainer:
    """The schema methods of `SlowChecks`, with jsonschema."""

    def kind_errors(self, kind: str, data: Any) -> Iterator[tuple[JsonPath, str]]:
        for error in validator(kind).iter_errors(data):
            yield from _explain(error)

    def schema_problem(self, schema: Any) -> str | None:
        try:
            Draft202012Validator.check_schema(schema)
        except Exception as exc:  # SchemaError; its message is the useful part
            return f"not a valid JSON Schema: {getattr(exc, 'message', exc)}"
        return None

    def value_errors(self, schema: Any, value: Any) -> Iterator[tuple[JsonPath, str]]:
        for error in Draft202012Validator(schema).iter_errors(value):
            yield tuple(error.absolute_path), str(error.message)


def _explain(error: ValidationError) -> Iterator[tuple[JsonPath, str]]:
    path: JsonPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = [k for k in error.instance if k not in schema.get("properties", {})]
        for key in extra:
            yield path + (key,), _unknown_property(key, allowed)
        return
    if "errorMessage" in schema and error.validator not in _PLAIN_KEYWORDS:
        yield path, f"{schema['errorMessage']}, got {_show(error.instance)}"
        return
    if error.validator in ("oneOf", "anyOf"):
        yield from _explain_alternatives(error, path)
        return
    yield path, _message(error)


def _explain_alternatives(error: ValidationError, path: JsonPath) -> Iterator[tuple[JsonPath, str]]:
    options = error.validator_value
    if all(isinstance(o, dict) and list(o) == ["required"] for o in options):
        names = ", ".join(o["required"][0] for o in options)
        yield path, f"exactly one of {names} must be set"
        return
    # The alternative the value was meant for is the one it does not fail on type.
    relevant = [e for e in error.context or [] if e.validator not in ("type", "const", "enum")]
    if relevant:
        yield from _explain(relevant[0])
        return
    yield path, f"{_show(error.instance)} is not allowed here"


def _message(error: ValidationError) -> str:
    value = error.validator_value
    got = _show(error.instance)
    match error.validator:
        case "required":
            missing = [k for k in value if k not in error.instance]
            return "missing required " + ", ".join(f"property {k!r}" for k in missing)
        case "type":
            kinds = value if isinstance(value, list) else [value]
            return f"expected {' or '.join(_article(k) for k in kinds)}, got {got}"
        case "enum":
            return f"must be one of {', '.join(map(str, value))}; got {got}"
        case "const":
            return f"must be {value!r}; got {got}"
        case "minimum" | "exclusiveMinimum":
            return f"must be {'>' if error.validator == 'exclusiveMinimum' else '≥'} {value}; got {got}"
        case "maximum" | "exclusiveMaximum":
            return f"must be {'<' if error.validator == 'exclusiveMaximum' else '≤'} {value}; got {got}"
        case "minItems":
            return f"needs at least {value} item{'s' if value != 1 else ''}"
        case "uniqueItems":
            return "items must be unique"
        case "minProperties":
            return f"needs at least {value} entr{'ies' if value != 1 else 'y'}"
        case "pattern":
            return f"{got} does not match the pattern {value}"
        case "minLength":
            return "must not be empty"
    return str(error.message)


def _unknown_property(key: str, allowed: list[str]) -> str:
    message = f"unknown property {key!r}"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"{message} (did you mean {close[0]!r}?)"
    if allowed:
        return f"{message}; allowed: {', '.join(allowed)}"
    return message


def _article(kind: str) -> str:
    return {"object": "a mapping", "array": "a list", "integer": "an integer", "null": "null"}.get(kind, f"a {kind}")


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
