"""/openapi.json states the real contract: each route's request body and its error answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cache_service.app import create_app
from cache_service.settings import load_settings


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data: Path = tmp_path_factory.mktemp("data")
    app = create_app(load_settings(None, upstream_url="http://upstream/v1", data_dir=data))
    schema: dict[str, Any] = app.openapi()
    return schema


def operations(doc: dict[str, Any], methods: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    return [
        (method, path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in methods
    ]


def test_every_post_and_put_declares_its_body_and_error_schema(doc: dict[str, Any]) -> None:
    found = operations(doc, ("post", "put"))
    assert len(found) >= 8
    for method, path, op in found:
        assert "requestBody" in op, (method, path)
        assert op["requestBody"]["content"], (method, path)
        errors = {s: r for s, r in op["responses"].items() if s.startswith("4")}
        assert errors, (method, path)
        for status, response in errors.items():
            schema = next(iter(response["content"].values()))["schema"]
            assert schema.get("$ref"), (method, path, status)


def test_validated_bodies_name_their_schema(doc: dict[str, Any]) -> None:
    refs = {
        path: op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        for _, path, op in operations(doc, ("post", "put"))
        if "application/json" in op["requestBody"]["content"]
    }
    assert refs["/v1/chat/completions"].endswith("/ChatRequest")
    assert refs["/v1/messages"].endswith("/AnthropicRequest")
    assert refs["/v1/responses"].endswith("/ResponsesRequest")
    assert refs["/v1/cache/store"].endswith("/StoreRequest")
    assert refs["/v1/admin/limits"].endswith("/LimitsUpdate")


def test_error_shape_follows_the_route(doc: dict[str, Any]) -> None:
    def error_ref(path: str) -> str:
        response = doc["paths"][path]["post"]["responses"]["400"]
        ref: str = response["content"]["application/json"]["schema"]["$ref"]
        return ref

    assert error_ref("/v1/messages").endswith("/AnthropicError")
    assert error_ref("/v1/chat/completions").endswith("/OpenAIError")
    assert error_ref("/v1/cache/lookup").endswith("/OpenAIError")
    for status in ("408", "413", "429", "502", "503", "504"):
        assert status in doc["paths"]["/v1/chat/completions"]["post"]["responses"]


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    text = json.dumps(doc)
    schemas = doc["components"]["schemas"]
    for name in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in schemas, name
    assert "$defs" not in text
    # Query parameters that fail validation are answered 400, never FastAPI's 422.
    assert '"422"' not in text
