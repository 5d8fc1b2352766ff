"""/openapi.json: the server's own document contains every path, schema and required field of the Jan
spec, agrees with the validator's ranges, and is what build_openapi.py makes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from janlib.server.misc import openapi_document
from janlib.server.schema import FIELDS

HERE = Path(__file__).parent
# the deliberate departures: choice.logprobs is {"content": [...]}, what OpenAI clients parse; the
# message role may be developer too (OpenAI's successor to system)
DEPARTURES = {"$.components.schemas.ChoiceDto.properties.logprobs",
              "$.components.schemas.ChatCompletionMessage.properties.role.enum"}


def contains(ours, theirs, path="$"):
    """Every key and value of theirs is in ours; required lists may grow."""
    if path in DEPARTURES:
        return
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), path
        for key, value in theirs.items():
            assert key in ours, f"{path}.{key} is missing"
            if key == "required" and isinstance(value, list):
                assert set(value) <= set(ours[key]), f"{path}.required lost {set(value) - set(ours[key])}"
            elif key == "description" and isinstance(value, str):
                assert ours[key].startswith(value), f"{path}.description changed"
            elif key in ("info", "servers"):
                continue
            else:
                contains(ours[key], value, f"{path}.{key}")
    else:
        assert ours == theirs, f"{path}: {ours!r} != {theirs!r}"


def test_document_contains_the_jan_spec(jan_spec):
    doc = openapi_document()
    contains(doc, jan_spec)
    for path, item in jan_spec["paths"].items():
        for method in item:
            assert method in doc["paths"][path]
    for name, schema in jan_spec["components"]["schemas"].items():
        assert set(schema.get("required", [])) <= set(doc["components"]["schemas"][name].get("required", []))


def test_ranges_match_the_validator():
    props = openapi_document()["components"]["schemas"]["CreateChatCompletionDto"]["properties"]
    for name, field in FIELDS.items():
        if name in props:
            assert props[name].get("minimum") == field.minimum, name
            assert props[name].get("maximum") == field.maximum, name


def test_document_is_what_the_builder_makes(jan_spec):
    spec = importlib.util.spec_from_file_location("build_openapi", HERE / "build_openapi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build(jan_spec) == openapi_document()


@pytest.mark.slow
def test_served_document(api, jan_spec):
    r = api.get(api.url("/openapi.json"))
    assert r.status_code == 200
    contains(r.json(), jan_spec)
    assert json.loads(r.content) == openapi_document()
