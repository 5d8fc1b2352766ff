"""schemathesis against /openapi.json with the real server up: no 5xx and no response that violates
the document, in positive and negative modes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from server_util import API_KEY, MODEL_ID, start

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def capped_server():
    s = start("--api-key", API_KEY, "--alias", MODEL_ID, "--ctx-size", "512", "--n-predict", "2", "--threads", "1",
              "--metrics", "--log-level", "error")
    yield s
    s.stop()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis(capped_server, tmp_path, mode):
    cli = shutil.which("schemathesis") or shutil.which("st")
    if cli is None:
        pytest.skip("schemathesis is not installed")
    import requests

    headers = {"Authorization": f"Bearer {API_KEY}"}
    doc = requests.get(capped_server.base + "/openapi.json", headers=headers).json()
    # let generated requests name the served model, so that positive cases reach the engine (optional
    # fields may be null: the served document says so)
    doc["components"]["schemas"]["CreateChatCompletionDto"]["properties"]["model"]["enum"] = [MODEL_ID]
    doc["components"]["schemas"]["CreateCompletionDto"]["properties"]["model"]["enum"] = [MODEL_ID]
    assert doc["components"]["schemas"]["CreateChatCompletionDto"]["properties"]["top_k"]["nullable"]
    started = generations_started(capped_server.base, headers)
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(doc))
    result = subprocess.run(
        [cli, "run", str(path), "--url", capped_server.base + "/v1", "-H", f"Authorization: Bearer {API_KEY}",
         "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
         "--mode", mode, "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--request-timeout", "60",
         "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all", "--no-color"],
        capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    if mode == "positive":
        assert generations_started(capped_server.base, headers) > started, "no generated request reached the engine"


def generations_started(base: str, headers: dict) -> int:
    import requests

    metrics = requests.get(base + "/metrics", headers=headers, timeout=30).text
    return int(re.search(r"^janlib_requests_total (\d+)$", metrics, re.M).group(1))


def test_no_internal_errors_logged(capped_server):
    assert "Traceback" not in capped_server.output()
