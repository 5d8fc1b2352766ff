"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) with the real anthropic SDK."""

from __future__ import annotations

import pytest

from server_util import API_KEY, MODEL_ID

pytestmark = pytest.mark.slow
anthropic = pytest.importorskip("anthropic")

WEATHER = {"name": "get_weather", "description": "The current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


# (this SDK version takes the sampling fields only through extra_body)
@pytest.fixture(scope="module")
def claude(server):  # x-api-key, as the SDK sends it
    return anthropic.Anthropic(base_url=server.base, api_key=API_KEY, max_retries=0, timeout=120)


def test_text_message(claude):
    message = claude.messages.create(model=MODEL_ID, max_tokens=10, system="Be brief.", messages=ASK,
                                     extra_body={"temperature": 0, "top_k": 20, "top_p": 0.9})
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and message.usage.input_tokens > 0


def test_stop_sequence_is_reported(claude):
    message = claude.messages.create(model=MODEL_ID, max_tokens=40, messages=ASK, stop_sequences=["."],
                                     extra_body={"temperature": 0})
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "."


def test_tool_use_then_tool_result(claude):
    first = claude.messages.create(model=MODEL_ID, max_tokens=60, messages=ASK, tools=[WEATHER],
                                   tool_choice={"type": "any"})
    assert first.stop_reason == "tool_use"
    uses = [block for block in first.content if block.type == "tool_use"]
    assert uses and all(u.name == "get_weather" and isinstance(u.input["city"], str) for u in uses)
    answer = claude.messages.create(
        model=MODEL_ID, max_tokens=20, tools=[WEATHER], tool_choice={"type": "none"},
        messages=ASK + [{"role": "assistant", "content": [u.model_dump(exclude_none=True) for u in uses]},
                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": u.id, "content": "22 C"}
                                                     for u in uses]}])
    assert answer.content[0].type == "text" and answer.content[0].text


def test_stream_event_sequence_assembles_to_the_message(claude):
    kwargs = dict(model=MODEL_ID, max_tokens=30, messages=ASK, extra_body={"temperature": 0})
    with claude.messages.stream(**kwargs) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    whole = claude.messages.create(**kwargs)
    assert final.content[0].text == whole.content[0].text and final.stop_reason == whole.stop_reason


def test_streamed_tool_use(claude):
    with claude.messages.stream(model=MODEL_ID, max_tokens=60, messages=ASK, tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].type == "tool_use"
    assert isinstance(final.content[-1].input["city"], str)


def test_count_tokens(claude):
    counted = claude.messages.count_tokens(model=MODEL_ID, messages=ASK, system="Be brief.")
    message = claude.messages.create(model=MODEL_ID, max_tokens=1, messages=ASK, system="Be brief.")
    assert counted.input_tokens == message.usage.input_tokens


def test_errors_use_anthropics_envelope(server, claude):
    with pytest.raises(anthropic.AuthenticationError) as error:
        anthropic.Anthropic(base_url=server.base, api_key="wrong", max_retries=0).messages.create(
            model=MODEL_ID, max_tokens=4, messages=ASK)
    assert error.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                           "message": "invalid API key"}}
    with pytest.raises(anthropic.BadRequestError) as error:
        claude.messages.create(model=MODEL_ID, max_tokens=4, messages=[{"role": "system", "content": "x"}])
    assert error.value.body["type"] == "error" and "messages[0].role" in error.value.body["error"]["message"]
    # any model name is served (Anthropic clients send Anthropic's names): test_server_native checks it
