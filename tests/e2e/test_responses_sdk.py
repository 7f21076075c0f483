"""The OpenAI Responses API through ``POST /v1/responses`` with the official ``openai`` SDK
(``client.responses.create`` and ``.stream``), over a real socket against the emulator."""

from __future__ import annotations

import json
import uuid

import openai
import pytest

from tests.e2e._client import directive

pytestmark = pytest.mark.e2e


def say(spec: dict) -> str:  # type: ignore[type-arg]
    return uuid.uuid4().hex[:8] + "\n" + directive({"*": spec})


def test_responses_create_text_and_a_tool_round_trip(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="glm_task", instructions="Be brief.", input=say({"text": "Four."}))
    assert r.output_text == "Four." and r.status == "completed" and r.usage is not None
    tool = {"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": False}
    first = oai.responses.create(model="claude_task", tools=[tool], input=say(  # type: ignore[list-item]
        {"tool_calls": [{"id": "toolu_1", "name": "weather", "arguments": {"city": "Oslo"}}]}))
    call = next(o for o in first.output if o.type == "function_call")
    assert call.name == "weather" and json.loads(call.arguments) == {"city": "Oslo"}
    second = oai.responses.create(model="claude_task", tools=[tool], input=[  # type: ignore[list-item]
        {"role": "user", "content": say({"text": "It is cold in Oslo."})},
        {"type": "function_call", "call_id": call.call_id, "name": "weather", "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "cold"}])
    assert second.output_text == "It is cold in Oslo."


def test_responses_stream_through_the_sdk(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="glm_task", input=say({"text": "one two three"})) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "one two three" and final.output_text == "one two three"
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="glm_task", input="x", previous_response_id="resp_123")
    follow = oai.responses.create(model="glm_task", input=say({"text": "Norway."}), previous_response_id=final.id)
    assert follow.output_text == "Norway."


def test_responses_stream_with_reasoning_through_the_sdk(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="claude_task", input=say({"reasoning": "Think first.", "text": "Then answer."}),
                              reasoning={"effort": "medium"}) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.reasoning_summary_text.delta" in kinds
    summary = next(o for o in final.output if o.type == "reasoning").summary[0].text  # type: ignore[union-attr]
    assert summary == "Think first." and final.output_text == "Then answer."


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
          "required": ["city", "temp"], "additionalProperties": False}


def test_responses_structured_output_images_and_errors_as_the_sdks_classes(oai: openai.OpenAI) -> None:
    fmt = {"format": {"type": "json_schema", "name": "weather", "schema": SCHEMA, "strict": True}}
    good = oai.responses.create(model="claude_task", input=say({"text": '{"city": "Oslo", "temp": 3}'}), text=fmt)  # type: ignore[arg-type]
    assert json.loads(good.output_text) == {"city": "Oslo", "temp": 3}
    with pytest.raises(openai.APIStatusError) as bad:  # every target answered JSON that is not the schema's
        oai.responses.create(model="glm_task", input=say({"text": '{"city": 3}'}), text=fmt)  # type: ignore[arg-type]
    assert bad.value.status_code == 502 and "invalid_output" in str(bad.value.body)
    with oai.responses.stream(model="claude_task", input=say({"text": "not json"}), text=fmt) as stream:  # type: ignore[arg-type]
        kinds = [e.type for e in stream]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
    seen = oai.responses.create(model="claude_task", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}]}])
    assert seen.output_text == "I see 1 image(s) or document(s) (the claude-sonnet-5-5 emulator)."
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="no_such_task", input="x")
    with pytest.raises(openai.BadRequestError) as empty:
        oai.responses.create(model="glm_task", input="x", max_output_tokens=0)
    assert empty.value.body["param"] == "max_output_tokens"  # type: ignore[index]
