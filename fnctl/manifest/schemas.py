"""The JSON Schemas in `schemas/` (the single source of truth of the manifest format) and schema checking.

Values are checked by the same schemas compiled to plain Python checks (`fnctl.manifest.fastschema`): a
conforming value costs no more. A value that fails is explained by jsonschema, through the slow checks the
running program installed (`fnctl.manifest.slowchecks`; `fnctl.manifest.fullchecks` turns jsonschema's
errors into short messages that say what to write instead): valid input never loads it.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from fnctl.manifest.diagnostics import JsonPath
from fnctl.manifest.fastschema import Check, compile_check
from fnctl.manifest.slowchecks import slow_checks

KINDS = ("Function", "View", "Trigger", "Policy", "Collection")
API_VERSION = "fnctl/v1"


def data_dir(name: str) -> Path:
    """`schemas` or `runtime-image`: shipped inside the wheel, or at the top of a source checkout."""
    packaged = Path(__file__).resolve().parents[1] / "_data" / name
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / name


@cache
def schemas() -> dict[str, Any]:
    """Every schema in `schemas/`, by its `$id` and by its file name."""
    found: dict[str, Any] = {}
    for path in sorted(data_dir("schemas").glob("*.schema.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        found[schema["$id"]] = found[path.name] = schema
    return found


def kind_schema(kind: str) -> Any:
    return schemas()[f"{kind.lower()}.schema.json"]


@cache
def _fast(kind: str) -> Check | None:
    schema = kind_schema(kind)
    return compile_check(schema, schema["$id"], schemas().get)


def schema_errors(kind: str, data: Any) -> Iterator[tuple[JsonPath, str]]:
    """(path, message) for every way `data` breaks the schema of `kind`."""
    fast = _fast(kind)
    if fast is not None and fast(data):
        return
    yield from slow_checks().kind_errors(kind, data)


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
    return slow_checks().schema_problem(schema)


def instance_error(schema: Any, value: Any) -> tuple[JsonPath, str] | None:
    """Where and how `value` first breaks `schema` (a user's JSON Schema, e.g. a function's `returns`), or
    None when it conforms."""
    fast = compile_check(schema, "urn:fnctl:returns", lambda _: None)
    if fast is not None and fast(value):
        return None
    return next(iter(slow_checks().value_errors(schema, value)), None)


def value_check(schema: Any, uri: str) -> Callable[[Any], Iterator[tuple[JsonPath, str]]]:
    """A user's JSON Schema (a Collection's) as a check of values: nothing for a conforming value, else (path,
    message) for every violation, by path. The compiled check decides; jsonschema explains a failure."""
    fast = compile_check(schema, uri, lambda _: None)

    def check(data: Any) -> Iterator[tuple[JsonPath, str]]:
        if fast is not None and fast(data):
            return
        yield from sorted(slow_checks().value_errors(schema, data), key=lambda e: list(map(str, e[0])))

    return check
