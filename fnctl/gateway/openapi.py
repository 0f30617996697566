"""The OpenAPI 3.1 description of the data API (`GET /v1/openapi.json`), with each collection's JSON Schema:
pure, built from the collections' schemas alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROBLEM_TYPE = "application/problem+json"
MERGE_PATCH = "application/merge-patch+json"


def _problem_ref() -> dict[str, Any]:
    return {
        "description": "a problem (RFC 9457)",
        "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def openapi_document(collections: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the API, with each collection's JSON Schema (collection → its schema;
    None: any object)."""
    schemas: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "violations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        },
    }
    paths: dict[str, Any] = {}
    errors = {str(code): _problem_ref() for code in (400, 401, 403, 404, 409, 412, 428, 429)}
    if_match = {"name": "If-Match", "in": "header", "required": True, "schema": {"type": "string"}}
    for name, spec in sorted(collections.items()):  # spec: the collection's JSON Schema
        data_ref = f"#/components/schemas/{name}"
        schemas[name] = spec if isinstance(spec, dict) and spec else {"type": "object"}
        schemas[f"{name}.document"] = {
            "type": "object",
            "required": ["id", "version", "data"],
            "properties": {
                "id": {"type": "string"},
                "version": {"type": "integer"},
                "createdAt": {"type": "string"},
                "createdBy": {"type": "string"},
                "updatedAt": {"type": "string"},
                "updatedBy": {"type": "string"},
                "data": {"$ref": data_ref},
            },
        }
        doc = {
            "description": "the document (ETag: its version)",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}.document"}}},
        }
        body = {"required": True, "content": {"application/json": {"schema": {"$ref": data_ref}}}}
        id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
        paths[f"/v1/collections/{name}/docs"] = {
            "get": {
                "operationId": f"find_{name}",
                "parameters": [
                    {"name": n, "in": "query", "schema": {"type": t}}
                    for n, t in (("filter", "string"), ("order", "string"), ("limit", "integer"), ("cursor", "string"))
                ],
                "responses": {"200": {"description": "a page: documents and the next cursor"}, **errors},
            },
            "post": {
                "operationId": f"insert_{name}",
                "requestBody": body,
                "parameters": [{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}],
                "responses": {"201": doc, **errors},
            },
        }
        paths[f"/v1/collections/{name}/docs/{{id}}"] = {
            "get": {"operationId": f"get_{name}", "parameters": [id_param], "responses": {"200": doc, **errors}},
            "put": {
                "operationId": f"replace_{name}",
                "parameters": [id_param, if_match],
                "requestBody": body,
                "responses": {"200": doc, **errors},
            },
            "patch": {
                "operationId": f"patch_{name}",
                "parameters": [id_param, if_match],
                "requestBody": {"required": True, "content": {MERGE_PATCH: {"schema": {"type": "object"}}}},
                "responses": {"200": doc, **errors},
            },
            "delete": {
                "operationId": f"delete_{name}",
                "parameters": [id_param, if_match],
                "responses": {"204": {"description": "deleted"}, **errors},
            },
        }
    paths["/v1/batch"] = {
        "post": {"operationId": "batch", "responses": {"200": {"description": "all applied"}, **errors}}
    }
    paths["/v1/changes"] = {
        "get": {
            "operationId": "changes",
            "parameters": [
                {"name": name, "in": "query", "schema": {"type": kind}}
                for name, kind in (("since", "integer"), ("limit", "integer"), ("collection", "string"))
            ],
            "responses": {"200": {"description": "the changes the caller may read, after `since`"}, **errors},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "fnctl data API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
    }
