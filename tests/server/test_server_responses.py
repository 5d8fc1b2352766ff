"""POST /v1/responses with the real openai SDK against the real server (stateless)."""

from __future__ import annotations

import json

import pytest

from server_util import MODEL_ID

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_text_answer(client):
    response = client.responses.create(model=MODEL_ID, input="Say hello.", instructions="Be brief.",
                                       max_output_tokens=8, temperature=0)
    assert response.object == "response" and response.status in ("completed", "incomplete")
    assert response.output[0].type == "message" and response.output_text
    assert response.usage.output_tokens <= 8 and response.usage.input_tokens > 0
    assert response.id.startswith("resp_") and response.output[0].id.startswith("msg_")  # OpenAI's id forms


def test_function_call_then_its_output(client):
    first = client.responses.create(model=MODEL_ID, input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice="required", max_output_tokens=60)
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    assert isinstance(json.loads(call.arguments)["city"], str)
    second = client.responses.create(
        model=MODEL_ID, tools=[WEATHER], tool_choice="none", max_output_tokens=20,
        input=[{"role": "user", "content": "What is the weather in Paris?"}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "22 degrees and sunny"}])
    assert second.output[-1].type == "message" and second.output_text


def test_structured_output_by_text_format(client):
    schema = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"],
              "additionalProperties": False}
    response = client.responses.create(model=MODEL_ID, input="A color of the sky, as JSON.", max_output_tokens=30,
                                       text={"format": {"type": "json_schema", "name": "c", "schema": schema}})
    assert set(json.loads(response.output_text)) == {"color"}


def test_stream_event_sequence(client):
    kinds, deltas, final = [], [], None
    with client.responses.create(model=MODEL_ID, input="Count to three.", max_output_tokens=40, temperature=0,
                                 stream=True) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert final is not None and final.output[0].content[0].text == "".join(deltas)
    whole = client.responses.create(model=MODEL_ID, input="Count to three.", max_output_tokens=40, temperature=0)
    assert whole.output_text == "".join(deltas)


def test_streamed_call(client):
    with client.responses.create(model=MODEL_ID, input="Weather in Paris?", tools=[WEATHER], tool_choice="required",
                                 max_output_tokens=60, temperature=0, stream=True) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments)["city"]


@pytest.mark.parametrize("extra, param", [({"previous_response_id": "resp_1"}, "previous_response_id"),
                                          ({"store": True}, "store"),
                                          ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
                                          ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role")])
def test_refused_fields_are_named(api, extra, param):
    body = {"model": MODEL_ID, "input": "Hi", "max_output_tokens": 4, **extra}
    response = api.post(api.url("/v1/responses"), json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param
