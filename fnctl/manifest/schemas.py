"""The JSON Schemas in `schemas/` (the single source of truth of the manifest format) and schema checking.

jsonschema's errors are turned into short messages that say what to write instead; a schema may carry an
`errorMessage` (the ajv-errors convention) for values whose pattern means nothing to a reader.
Valid values take a fast path: the same schemas compiled to plain Python checks (`fnctl.manifest.fastschema`).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnctl.manifest.diagnostics import JsonPath
from fnctl.manifest.fastschema import Check, compile_check

# jsonschema and referencing (~0.12 s to import, measured: a tenth of `fnctl validate`'s 1 s budget) are
# imported inside the functions below, only when a value fails its compiled check: every command reads
# fnctl.toml through `schema_errors`, and valid values never need them. This module is their one boundary.
if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError
    from referencing import Registry

KINDS = ("Function", "View", "Trigger", "Policy", "Collection")
API_VERSION = "fnctl/v1"
_PLAIN_KEYWORDS = {"additionalProperties", "required"}  # their own message beats a schema's errorMessage


def data_dir(name: str) -> Path:
    """`schemas` or `runtime-image`: shipped inside the wheel, or at the top of a source checkout."""
    packaged = Path(__file__).resolve().parents[1] / "_data" / name
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / name


@cache
def _schemas() -> dict[str, Any]:
    """Every schema in `schemas/`, by its `$id` and by its file name."""
    schemas: dict[str, Any] = {}
    for path in sorted(data_dir("schemas").glob("*.schema.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        schemas[schema["$id"]] = schemas[path.name] = schema
    return schemas


@cache
def _registry() -> Registry:
    from referencing import Registry, Resource  # lazy: see the note at the top

    return Registry().with_resources((uri, Resource.from_contents(s)) for uri, s in _schemas().items())


@cache
def validator(kind: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator  # lazy: see the note at the top (~0.12 s)

    schema = _schemas()[f"{kind.lower()}.schema.json"]
    return Draft202012Validator(schema, registry=_registry())


@cache
def _fast(kind: str) -> Check | None:
    schema = _schemas()[f"{kind.lower()}.schema.json"]
    return compile_check(schema, schema["$id"], _schemas().get)


def schema_errors(kind: str, data: Any) -> Iterator[tuple[JsonPath, str]]:
    """(path, message) for every way `data` breaks the schema of `kind`."""
    fast = _fast(kind)
    if fast is not None and fast(data):
        return
    for error in validator(kind).iter_errors(data):
        yield from _explain(error)


@cache
def _fast_meta() -> Check | None:
    """The draft 2020-12 meta-schema, compiled from jsonschema's own copy (read, not imported: importing
    jsonschema costs more than checking a thousand schemas). Formats other than `regex` are not decided
    here: a string under one of them (`$id`, `$ref`, ...) sends the schema to jsonschema."""
    try:
        spec = importlib.util.find_spec("jsonschema_specifications")
        locations = list(spec.submodule_search_locations or ()) if spec else []
        folder = Path(locations[0]) / "schemas" / "draft202012"
        metas = {}
        for path in [folder / "metaschema.json", *sorted((folder / "vocabularies").iterdir())]:
            meta = json.loads(path.read_text(encoding="utf-8"))
            metas[meta["$id"]] = meta
        root = metas["https://json-schema.org/draft/2020-12/schema"]
    except (LookupError, OSError, ValueError, TypeError):
        return None
    return compile_check(root, root["$id"], metas.get, formats={"regex": _is_regex})


def _is_regex(value: Any) -> bool:
    """jsonschema's `regex` format: a string Python's `re` compiles."""
    if not isinstance(value, str):
        return True
    try:
        re.compile(value)
    except Exception:  # re.error, or worse (OverflowError, RecursionError): jsonschema will say
        return False
    return True


def check_json_schema(schema: Any) -> str | None:
    """Why `schema` (a user's `parameters`/`returns`) is not a valid JSON Schema, or None."""
    fast = _fast_meta()
    if fast is not None and fast(schema):
        return None
    from jsonschema import Draft202012Validator  # lazy: see the note at the top (~0.12 s)

    try:
        Draft202012Validator.check_schema(schema)
    except Exception as exc:  # SchemaError; its message is the useful part
        return f"not a valid JSON Schema: {getattr(exc, 'message', exc)}"
    return None


def instance_error(schema: Any, value: Any) -> tuple[JsonPath, str] | None:
    """Where and how `value` first breaks `schema` (a user's JSON Schema, e.g. a function's `returns`), or
    None when it conforms."""
    from jsonschema import Draft202012Validator  # lazy: see the note at the top (~0.12 s)

    error = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    return None if error is None else (tuple(error.absolute_path), str(error.message))


def value_check(schema: Any, uri: str) -> Callable[[Any], Iterator[tuple[JsonPath, str]]]:
    """A user's JSON Schema (a Collection's) as a check of values: nothing for a conforming value, else (path,
    message) for every violation, by path. The compiled check decides; jsonschema explains a failure."""
    fast = compile_check(schema, uri, lambda _: None)
    explaining: list[Draft202012Validator] = []

    def check(data: Any) -> Iterator[tuple[JsonPath, str]]:
        if fast is not None and fast(data):
            return
        if not explaining:
            from jsonschema import Draft202012Validator  # lazy: see the note at the top (~0.12 s)

            explaining.append(Draft202012Validator(schema))
        for error in sorted(explaining[0].iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
            yield tuple(error.absolute_path), str(error.message)

    return check


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
