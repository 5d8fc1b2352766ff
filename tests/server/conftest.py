"""Fixtures that start the real server process (python -m janlib.server) on a free port."""

from __future__ import annotations

import json

import pytest

requests = pytest.importorskip("requests")

from server_util import API_KEY, CTX, MODEL_ID, SPEC_PATH, api_session, start  # noqa: E402


@pytest.fixture(scope="session")
def server():
    """The real SmolLM2 model, two slots, one API key, a small context, OpenAI's 404 for other model names."""
    s = start("--api-key", API_KEY, "--alias", MODEL_ID, "--parallel", "2", "--ctx-size", str(2 * CTX),
               "--threads", "1", "--metrics", "--strict-model-name", "--log-level", "warning")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def api(server):
    """requests.Session with the key, and .url(path)."""
    session = api_session(server)
    yield session
    session.close()


@pytest.fixture(scope="session")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def jan_spec():
    if not SPEC_PATH.exists():
        pytest.skip(f"the Jan spec is not here ({SPEC_PATH.name})")
    return json.loads(SPEC_PATH.read_text("utf-8"))


def openapi_to_jsonschema(node):
    """OpenAPI 3.0 schema → JSON Schema: nullable becomes a null alternative."""
    if isinstance(node, dict):
        out = {k: openapi_to_jsonschema(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable"):
            if "type" in out:
                out["type"] = [out["type"], "null"]
            else:
                out = {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(node, list):
        return [openapi_to_jsonschema(v) for v in node]
    return node


@pytest.fixture(scope="session")
def validate():
    """validate(instance, schema_name, doc=the shipped openapi.json or the Jan spec)."""
    jsonschema = pytest.importorskip("jsonschema")
    from janlib.server.misc import openapi_document

    docs = {"janlib": openapi_to_jsonschema(openapi_document())}
    if SPEC_PATH.exists():
        docs["jan"] = openapi_to_jsonschema(json.loads(SPEC_PATH.read_text("utf-8")))

    def check(instance, name: str, doc: str = "jan"):
        if doc not in docs:
            doc = "janlib"
        root = docs[doc]
        schema = {"$ref": f"#/components/schemas/{name}", "components": root["components"]}
        jsonschema.validate(instance, schema)

    return check
