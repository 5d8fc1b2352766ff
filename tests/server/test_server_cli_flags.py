"""llama-server's command line in janlib serve: the flags map onto ServerConfig with their meaning, an unknown flag
is an error naming it, and the endpoint switches act (one in-process app on the real model)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from janlib.server.__main__ import parse_args
from janlib.server.config import ConfigError, ServerConfig


def test_llama_server_flags_map_onto_the_config(tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    c = parse_args(["-m", "model.gguf", "--host", "127.0.0.1", "--port", "8080", "-c", "4096", "-np", "4", "-t", "2",
                    "-n", "64", "-b", "512", "--api-key", "k1,k2", "-a", "zeta,alpha", "--seed", "7", "--temp", "0.3",
                    "--jinja", "--chat-template-file", str(template), "--metrics", "--no-slots", "--props",
                    "--embeddings", "--pooling", "mean", "--no-context-shift", "--no-webui",
                    "--slot-save-path", str(tmp_path), "-cb", "-ngl", "99", "-fa", "on", "--kv-unified",
                    "-ctk", "q8_0", "-ctv", "q4_0"])
    assert (c.model, c.port, c.ctx_size, c.parallel, c.threads, c.n_predict, c.batch_size) == \
        ("model.gguf", 8080, 4096, 4, 2, 64, 512)
    assert c.api_keys == ["k1", "k2"] and c.alias == "alpha" and c.aliases == ["zeta"]
    assert (c.seed, c.temperature, c.chat_template) == (7, 0.3, template.read_text())
    assert (c.metrics, c.slots, c.props, c.embeddings, c.pooling, c.context_shift, c.webui, c.kv_unified) == \
        (True, False, True, True, "mean", False, False, True)
    assert c.slot_save_path == str(tmp_path)
    assert (c.cache_type_k, c.cache_type_v) == ("q8_0", "q4_0")
    assert parse_args(["--no-metrics"]).metrics is False and parse_args([]).context_shift is True
    assert parse_args([]).metrics is False  # llama-server's default: /metrics only with --metrics


def test_llama_server_flags_with_a_janlib_meaning_or_none(tmp_path):
    c = parse_args(["--reasoning", "off", "--reasoning-format", "none", "--cors-origins", "localhost, http://a.example",
                    "--cors-origin", "*", "--swa-full", "--cache-ram", "100", "--no-cache-idle-slots", "--backend_sampling",
                    "-bs", "--media-path", str(tmp_path), "--tools", "all", "--ui-mcp-proxy", "--no-cors-credentials"])
    assert (c.reasoning, c.reasoning_format) == ("off", "none")
    assert c.cors_origins == ["localhost", "http://a.example", "*"] and not c.cors_credentials and c.cors_proxy
    c.validate()
    defaults = parse_args([])
    assert (defaults.reasoning, defaults.reasoning_format) == ("auto", "deepseek")
    # llama-server's CORS defaults: every origin, with credentials; only this machine's with --tools
    assert (defaults.cors_origins, defaults.cors_credentials, defaults.cors_proxy) == (["*"], True, False)
    assert parse_args(["--tools", "all"]).cors_origins == ["localhost"]
    assert parse_args(["--tools", "all", "--cors-origins", "https://a.example"]).cors_origins == ["https://a.example"]
    assert parse_args(["--cors-origins", ""]).cors_origins == []
    assert parse_args(["--ui-mcp-proxy", "--no-webui-mcp-proxy"]).cors_proxy is False


@pytest.mark.parametrize("argv, named", [(["--bogus-flag", "1"], "--bogus-flag"), (["-m", "x", "--lora-base", "a"], "--lora-base"),
                                         (["--chat-template-file", "/nonexistent/t.jinja"], "--chat-template-file"),
                                         (["-ctk", "iq4_nl"], "--cache-type-k"), (["--reasoning", "maybe"], "--reasoning"),
                                         (["--media-path", "/nonexistent/media"], "--media-path")])
def test_unknown_flags_and_unreadable_files_are_named(argv, named):
    r = subprocess.run([sys.executable, "-m", "janlib.server", *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and named in r.stderr.splitlines()[-1]


@pytest.mark.parametrize("config, message", [
    (ServerConfig(ctx_size=2, parallel=4), "--parallel"), (ServerConfig(seed=-2), "--seed"),
    (ServerConfig(temperature=-1.0), "--temp"), (ServerConfig(slot_save_path="/nonexistent/dir"), "--slot-save-path"),
    (ServerConfig(batch_size=0), "--batch-size"), (ServerConfig(cache_type_k="q5_1"), "--cache-type-k"),
    (ServerConfig(cache_type_v="bf16"), "--cache-type-v")])
def test_bad_values_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        config.validate()


@pytest.mark.slow
def test_endpoint_switches_act():
    from janlib.server import create_app

    app = create_app(parse_args(["-c", "512", "-t", "1", "--no-slots", "--no-webui", "--props", "--temp", "0"]))
    client = app.test_client()
    assert client.get("/slots").status_code == 501
    metrics = client.get("/metrics")  # off by default, llama-server's status and message
    assert metrics.status_code == 501 and metrics.get_json()["error"]["type"] == "not_supported_error"
    assert "--metrics" in metrics.get_json()["error"]["message"]
    assert client.get("/cors-proxy?url=http://127.0.0.1:1/").status_code == 403  # off without --ui-mcp-proxy
    assert client.get("/").status_code == 404
    props = client.get("/props").get_json()["default_generation_settings"]
    assert props["n_ctx"] == 512 and props["params"]["temperature"] == 0.0
    assert client.post("/props", json={"temperature": 0.5}).get_json() == {"success": True}
    assert client.get("/props").get_json()["default_generation_settings"]["params"]["temperature"] == 0.5
    assert client.post("/props", json={"bogus": 1}).status_code == 400
    app.extensions["janlib"].engine.close()


THINKING_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
                     "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")  # always opens, as DeepSeek-R1's


@pytest.mark.slow
@pytest.mark.parametrize("reasoning, prompt_end", [("auto", "<|assistant|><think>\n"),
                                                   ("off", "<|assistant|><think>\n</think>")])
def test_reasoning_off_closes_the_thinking_before_the_answer(reasoning, prompt_end):
    from janlib.server import create_app

    app = create_app(parse_args(["-c", "256", "-t", "1", "--reasoning", reasoning, "--chat-template", THINKING_TEMPLATE]))
    client = app.test_client()
    messages = [{"role": "user", "content": "Hi"}]
    assert client.post("/apply-template", json={"messages": messages}).get_json()["prompt"].endswith(prompt_end)
    answer = client.post("/v1/chat/completions", json={"model": app.extensions["janlib"].model_id, "messages": messages,
                                                      "max_tokens": 3, "temperature": 0}).get_json()
    message = answer["choices"][0]["message"]
    # off: the model starts after </think>, so what it says is content; auto: it starts inside the thinking
    assert ("reasoning_content" in message) == (reasoning == "auto")
    app.extensions["janlib"].engine.close()


def test_health_is_503_while_the_model_loads():
    from janlib.server import _AppHolder

    seen = []
    body = _AppHolder(None)({"PATH_INFO": "/health"}, lambda status, headers: seen.append(status))
    assert seen == ["503 Service Unavailable"] and b'"loading"' in b"".join(body)


def test_several_hosts_each_get_a_socket():
    """--host 127.0.0.1,::1 (llama-server's form) listens on both addresses with the same port."""
    import socket

    from janlib.server import make_server
    from server_util import free_port

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    config = parse_args(["--host", "127.0.0.1,::1", "--port", str(free_port())])
    config.validate()  # both loopback: no API key needed
    server, _ = make_server(config)
    try:
        assert sorted(addr[0] for addr in server.effective_listen) == ["127.0.0.1", "::1"]
    finally:
        server.close()
    with pytest.raises(ConfigError, match="without an API key"):
        parse_args(["--host", "127.0.0.1,0.0.0.0"]).validate()


@pytest.mark.slow
def test_models_lists_every_alias_and_the_given_tags():
    from janlib.server import create_app

    app = create_app(parse_args(["-c", "256", "-t", "1", "-a", "tinyllama-2,fim,code", "--tags", "chat,small"]))
    model = app.test_client().get("/models").get_json()["data"][0]
    assert model["id"] == "code" and model["aliases"] == ["code", "fim", "tinyllama-2"]
    assert model["tags"] == ["chat", "small"]
    app.extensions["janlib"].engine.close()
