"""Drop-in for the clients people use (the drop-in issue): the model names a client already sends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from router.loading import ConfigError, parse_config
from router.stores.redis import RedisStore
from tests.unit._app import InProcess, app

YAML = """
version: 1
providers:
  glm:
    protocol: openai
    base_url: http://emulator/api/paas/v4
    api_key: k
    retry: {attempts: 1}
    models:
      glm-4.6: {context_window: 200000}
  zai_anthropic:
    protocol: anthropic
    base_url: http://emulator/api/anthropic
    api_key: k
    retry: {attempts: 1}
    models:
      glm-4.6: {context_window: 200000}
  claude:
    protocol: anthropic
    base_url: http://emulator
    api_key: k
    models:
      claude-haiku-5-5: {context_window: 200000}
tasks:
  chat:
    chain: [glm/glm-4.6, claude/claude-haiku-5-5]
aliases:
  gpt-4o-mini: chat
  claude-3-5-haiku-latest: claude/claude-haiku-5-5
"""


def run(test: Any, yaml_text: str = YAML) -> None:
    async def go() -> None:
        async with app(yaml_text) as a:
            await test(a)

    asyncio.run(go())


def msgs(spec: dict[str, Any] | None = None) -> list[dict[str, str]]:
    return [{"role": "user", "content": "hi" + ("\nemulate: " + json.dumps(spec) if spec else "")}]


def test_a_bare_model_id_is_every_provider_serving_it_in_config_order() -> None:
    """GLM-4.6 through Z.ai's OpenAI-compatible and Anthropic-compatible endpoints: a two-target
    chain, so the GLM guide's ``Anthropic(base_url=router)`` with ``model="glm-4.6"`` works."""
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/messages", json={"model": "glm-4.6", "max_tokens": 50, "messages": msgs()})
        assert r.status_code == 200 and r.json()["model"] == "glm-4.6"
        assert r.headers["x-llm-router-target"] == "glm/glm-4.6" and r.headers["x-llm-router-task"] == "glm-4.6"

    async def failover() -> None:
        from router.inproc import Reply, ScriptedTransport

        refused = ScriptedTransport(lambda request: Reply(body=[ConnectionRefusedError()]))
        async with app(YAML, transports={"glm": refused}) as a:
            r = await a.client.post("/v1/messages", json={"model": "glm-4.6", "max_tokens": 50, "messages": msgs()})
            assert r.status_code == 200 and r.headers["x-llm-router-target"] == "zai_anthropic/glm-4.6"
            assert a.emulator.last["glm-4.6"]["path"] == "/api/anthropic/v1/messages"

    run(t)
    asyncio.run(failover())


def test_aliases_name_a_task_or_a_target() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": msgs()})
        assert r.status_code == 200 and r.json()["router"]["task"] == "chat" and r.json()["model"] == "glm-4.6"
        r = await a.client.post("/v1/messages", json={"model": "claude-3-5-haiku-latest", "max_tokens": 9,
                                                      "messages": msgs()})
        assert r.status_code == 200 and r.json()["model"] == "claude-haiku-5-5"
        listed = {m["id"] for m in (await a.client.get("/v1/models")).json()["data"]}
        assert {"chat", "gpt-4o-mini", "claude-3-5-haiku-latest", "glm-4.6", "glm/glm-4.6"} <= listed

    run(t)


def test_an_unknown_name_is_the_doors_404_listing_what_may_be_named() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/messages", json={"model": "gpt-5", "max_tokens": 9, "messages": msgs()})
        assert r.status_code == 404 and r.json()["type"] == "error"
        message = r.json()["error"]["message"]
        assert message.startswith("task: unknown task or model 'gpt-5'; tasks: chat; aliases: ")
        assert "claude-3-5-haiku-latest, gpt-4o-mini" in message and "models (or provider/model): claude-haiku-5-5, glm-4.6" in message
        oai = await a.client.post("/v1/chat/completions", json={"model": "gpt-5", "messages": msgs()})
        assert oai.status_code == 404 and oai.json()["error"]["type"] == "not_found_error"

    run(t)


@pytest.mark.parametrize(("aliases", "problem"), [
    ("{chat: glm/glm-4.6}", "aliases.chat: is also a task's name"),
    ("{x: nope}", "aliases.x: 'nope' is neither a task nor a provider/model"),
    ("{x: glm/glm-9}", "aliases.x: 'glm/glm-9' is neither a task nor a provider/model"),
    ("[a, b]", "aliases: "),
])
def test_bad_aliases_are_config_errors(aliases: str, problem: str) -> None:
    text = YAML[:YAML.index("aliases:")] + f"aliases: {aliases}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, {})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


# -- structured outputs, strict tools, sampling parameters ----------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
          "required": ["city", "temp"], "additionalProperties": False}


def test_structured_output_reaches_each_upstream_in_its_own_form() -> None:
    async def t(a: InProcess) -> None:
        rf = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}
        r = await a.client.post("/v1/chat/completions", json={
            "model": "glm/glm-4.6", "messages": msgs({"*": {"text": '{"city": "Oslo", "temp": 3}'}}),
            "response_format": rf, "tools": [tool], "seed": 7, "frequency_penalty": 0.5, "presence_penalty": -0.5})
        assert r.status_code == 200, r.text
        sent = a.emulator.last["glm-4.6"]["body"]
        assert sent["response_format"] == {"type": "json_object"}  # Z.ai: json_object, the schema in the prompt
        assert sent["messages"][0]["role"] == "system" and '"additionalProperties":false' in sent["messages"][0]["content"]
        # Z.ai's reference lists none of these: not sent to its /paas/v4 endpoint
        assert "strict" not in sent["tools"][0]["function"] and not {"seed", "frequency_penalty"} & set(sent)
        r = await a.client.post("/v1/messages", json={
            "model": "claude/claude-haiku-5-5", "max_tokens": 50, "top_k": 5,
            "messages": msgs({"*": {"text": '{"city": "Rome", "temp": 20}'}}),
            "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
            "tools": [{"name": "f", "input_schema": {"type": "object"}, "strict": True}]})
        assert r.status_code == 200, r.text
        sent = a.emulator.last["claude-haiku-5-5"]["body"]
        assert sent["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
        assert sent["tools"][0]["strict"] is True and sent["top_k"] == 5

    run(t)


def test_an_invalid_structured_answer_falls_back_or_ends_the_stream_with_invalid_output() -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
    bad_then_good = {"glm-4.6": {"text": '{"city": "Oslo"}'}, "claude-haiku-5-5": {"text": '{"city": "Oslo", "temp": 3}'}}

    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/chat/completions", json={"model": "chat", "messages": msgs(bad_then_good),
                                                               "response_format": rf})
        assert r.status_code == 200 and r.json()["model"] == "claude-haiku-5-5"
        assert r.json()["choices"][0]["message"]["content"] == '{"city": "Oslo", "temp": 3}'
        first = r.json()["router"]["attempts"][0]
        assert (first["outcome"], first["code"]) == ("error", "invalid_output")
        assert "at $: 'temp' is a required property" in first["message"]
        s = await a.client.post("/v1/chat/completions", json={"model": "chat", "messages": msgs(bad_then_good),
                                                               "response_format": rf, "stream": True})
        assert '"code":"invalid_output"' in s.text and "[DONE]" not in s.text  # never reported complete
        j = await a.client.post("/v1/chat/completions", json={"model": "glm/glm-4.6", "messages": msgs(
            {"*": {"text": "not json"}}), "response_format": {"type": "json_object"}})
        assert j.status_code == 502 and j.json()["error"]["code"] == "invalid_output"

    run(t)


@pytest.mark.parametrize(("body", "path"), [
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
])
def test_bad_structured_output_and_sampling_requests_are_400_naming_the_field(body: dict[str, Any], path: str) -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/chat/completions", json={"model": "chat", "messages": msgs(), **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == path, r.text

    run(t)


def test_anthropic_output_config_errors_name_the_anthropic_field() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/messages", json={"model": "chat", "max_tokens": 9, "messages": msgs(),
                                                      "output_config": {"format": {"type": "json_schema",
                                                                                   "schema": {"type": 5}}}})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("output_config.format.schema: ")

    run(t)


WITH_OAI = YAML.replace("tasks:\n", """  oai:
    protocol: openai
    base_url: http://emulator/v1
    api_key: k
    models:
      gpt-4o: {context_window: 128000}
tasks:
""", 1)  # an OpenAI-compatible endpoint that is not Z.ai's


def test_openai_compatible_endpoints_other_than_zai_get_seed_penalties_and_strict() -> None:
    yaml_text = WITH_OAI

    async def t(a: InProcess) -> None:
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}
        r = await a.client.post("/v1/chat/completions", json={"model": "oai/gpt-4o", "messages": msgs(), "tools": [tool],
                                                               "seed": 7, "frequency_penalty": 0.5, "presence_penalty": -0.5})
        assert r.status_code == 200
        sent = a.emulator.last["gpt-4o"]["body"]
        assert sent["tools"][0]["function"]["strict"] is True
        assert (sent["seed"], sent["frequency_penalty"], sent["presence_penalty"]) == (7, 0.5, -0.5)

    run(t, yaml_text)


def test_glm_tool_stream_and_always_thinking_models_and_anthropic_beta_pass_through() -> None:
    yaml_text = YAML.replace("      glm-4.6: {context_window: 200000}\n  zai_anthropic:",
                             "      glm-4.6: {context_window: 200000, tool_stream: true}\n"
                             "      glm-5.3: {context_window: 200000, thinking: always}\n  zai_anthropic:", 1)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

    async def t(a: InProcess) -> None:
        await a.client.post("/v1/chat/completions", json={"model": "glm/glm-4.6", "messages": msgs(),
                                                           "tools": [tool], "stream": True})
        assert a.emulator.last["glm-4.6"]["body"]["tool_stream"] is True
        await a.client.post("/v1/chat/completions", json={"model": "glm/glm-4.6", "messages": msgs(), "stream": True})
        assert "tool_stream" not in a.emulator.last["glm-4.6"]["body"]  # no tools, nothing to stream
        await a.client.post("/v1/chat/completions", json={"model": "glm/glm-5.3", "messages": msgs(), "tools": [tool],
                                                           "thinking": {"type": "disabled"}})
        sent = a.emulator.last["glm-5.3"]["body"]
        assert "thinking" not in sent and "tool_stream" not in sent  # always thinks; tool_stream not declared
        await a.client.post("/v1/messages", json={"model": "claude/claude-haiku-5-5", "max_tokens": 9, "messages": msgs()},
                            headers={"anthropic-beta": "interleaved-thinking-2025-05-14, context-1m-2025-08-07"})
        assert a.emulator.last["claude-haiku-5-5"]["headers"]["anthropic-beta"] == \
            "interleaved-thinking-2025-05-14,context-1m-2025-08-07"

    run(t, yaml_text)


def test_count_tokens_for_a_task_or_model() -> None:
    yaml_text = WITH_OAI

    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/messages/count_tokens", json={"model": "claude/claude-haiku-5-5",
                                                                   "messages": msgs(), "system": "Be brief."})
        assert r.status_code == 200 and r.json() == {"input_tokens": r.json()["input_tokens"]} and r.json()["input_tokens"] > 0
        assert r.headers["x-llm-router-estimated"] == "false" and a.emulator.stats["_count_tokens"]["requests"] == 1
        g = await a.client.post("/v1/messages/count_tokens", json={"model": "chat", "messages": msgs()})  # Z.ai's tokenizer
        assert g.status_code == 200 and "estimated" not in g.json() and g.headers["x-llm-router-target"] == "glm/glm-4.6"
        assert a.emulator.stats["_tokenizer"]["requests"] == 1
        sent = a.emulator.last["_tokenizer"]
        assert sent["path"] == "/api/paas/v4/tokenizer" and sent["body"]["model"] == "glm-4.6"
        assert set(sent["body"]) == {"model", "messages"}
        o = await a.client.post("/v1/messages/count_tokens", json={"model": "oai/gpt-4o", "messages": msgs()})
        assert o.status_code == 200 and o.json()["estimated"] is True  # no counting API there: the estimate
        failed = await a.client.post("/v1/messages/count_tokens", json={"model": "chat", "messages": msgs({"*": {"status": 500}})})
        assert failed.status_code == 200 and failed.json()["estimated"] is True  # the tokenizer failed: the estimate
        bad = await a.client.post("/v1/messages/count_tokens", json={"model": "nope", "messages": msgs()})
        assert bad.status_code == 404 and bad.json()["type"] == "error"  # the Anthropic door's shape
        missing = await a.client.post("/v1/messages/count_tokens", json={"model": "chat"})
        assert missing.status_code == 400 and missing.json()["error"]["message"].startswith("messages")

    run(t, yaml_text)


# -- images and documents --------------------------------------------------------------------

PNG = "data:image/png;base64,iVBORw0KGgo="
PDF = "data:application/pdf;base64,JVBERi0xLjQK"
VISION = YAML.replace("      claude-haiku-5-5: {context_window: 200000}",
                      "      claude-haiku-5-5: {context_window: 200000, vision: true}", 1)


def test_images_and_documents_reach_vision_targets_in_their_own_form() -> None:
    async def t(a: InProcess) -> None:
        parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PNG}},
                 {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                 {"type": "file", "file": {"file_data": PDF, "filename": "a.pdf"}}]
        r = await a.client.post("/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": parts}]})
        assert r.status_code == 200 and r.json()["model"] == "claude-haiku-5-5"  # glm-4.6 has no vision: skipped
        assert r.json()["router"]["attempts"][0]["code"] == "capability"
        blocks = a.emulator.last["claude-haiku-5-5"]["body"]["messages"][0]["content"]
        assert blocks == [{"type": "text", "text": "What is this?"},
                          {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                          {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                          {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                          "data": "JVBERi0xLjQK"}}]
        ant = await a.client.post("/v1/messages", json={"model": "chat", "max_tokens": 9, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "text", "text": "and this?"}]}]})
        assert ant.status_code == 200
        assert a.emulator.last["claude-haiku-5-5"]["body"]["messages"][0]["content"][0]["type"] == "image"

    run(t, VISION)


def test_a_glm_vision_model_gets_image_url_parts() -> None:
    yaml_text = YAML.replace("      glm-4.6: {context_window: 200000}\n  zai_anthropic:",
                             "      glm-4.6: {context_window: 200000}\n      glm-4.5v: {context_window: 64000, vision: true}\n"
                             "  zai_anthropic:", 1)

    async def t(a: InProcess) -> None:
        parts = [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}}]
        r = await a.client.post("/v1/chat/completions", json={"model": "glm/glm-4.5v", "messages": [{"role": "user", "content": parts}]})
        assert r.status_code == 200
        assert a.emulator.last["glm-4.5v"]["body"]["messages"][0]["content"] == parts

    run(t, yaml_text)


def test_media_no_target_takes_and_blocks_a_door_cannot_carry_are_400s() -> None:
    async def t(a: InProcess) -> None:
        img = {"type": "image_url", "image_url": {"url": PNG}}
        r = await a.client.post("/v1/chat/completions", json={"model": "glm/glm-4.6", "messages": [{"role": "user", "content": [img]}]})
        assert r.status_code == 400 and "vision" in r.json()["error"]["message"]
        ant = await a.client.post("/v1/messages", json={"model": "chat", "max_tokens": 9, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}]}]})
        assert ant.status_code == 400 and ant.json()["error"]["message"].startswith("messages[0].content[0].source.type: ")
        odd = await a.client.post("/v1/messages", json={"model": "chat", "max_tokens": 9, "messages": [{"role": "user", "content": [
            {"type": "search_result", "title": "x"}]}]})
        assert odd.status_code == 400 and odd.json()["error"]["message"].startswith("messages[0].content[0].type: ")

    run(t)


# -- the Responses API ------------------------------------------------------------------------

def responses_events(body: str) -> list[dict[str, Any]]:
    out = []
    for block in body.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if "data" in lines:
            data = json.loads(lines["data"])
            assert data["type"] == lines["event"]
            out.append(data)
    return out


def test_responses_text_tools_and_structured_output() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/responses", json={"model": "chat", "instructions": "Be brief.",
                                                        "input": "hi\nemulate: " + json.dumps({"*": {"text": "hello there"}})})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "response" and body["status"] == "completed"
        assert body["output"][-1]["content"][0] == {"type": "output_text", "text": "hello there", "annotations": []}
        assert body["model"] == "glm-4.6" and body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + body["usage"]["output_tokens"]
        assert a.emulator.last["glm-4.6"]["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
        tool = {"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
        spec = {"*": {"tool_calls": [{"id": "call_1", "name": "weather", "arguments": {"city": "Oslo"}}]}}
        r = await a.client.post("/v1/responses", json={"model": "chat", "tools": [tool], "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?\nemulate: " + json.dumps(spec)}]}]})
        call = r.json()["output"][-1]
        assert (call["type"], call["call_id"], call["name"], json.loads(call["arguments"])) == ("function_call", "call_1", "weather", {"city": "Oslo"})
        r = await a.client.post("/v1/responses", json={"model": "chat", "tools": [tool], "input": [
            {"role": "user", "content": "weather?"}, {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "cold"}]})
        sent = a.emulator.last["glm-4.6"]["body"]["messages"]
        assert sent[1]["tool_calls"][0]["id"] == "call_1" and sent[2] == {"role": "tool", "content": "cold", "tool_call_id": "call_1"}
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        r = await a.client.post("/v1/responses", json={"model": "glm/glm-4.6", "text": {"format": {"type": "json_schema", "name": "n",
                                "schema": schema}}, "input": "n?\nemulate: " + json.dumps({"*": {"text": '{"n": 3}'}})})
        assert r.status_code == 200 and a.emulator.last["glm-4.6"]["body"]["response_format"] == {"type": "json_object"}

    run(t)


def test_responses_stream_event_sequence() -> None:
    async def t(a: InProcess) -> None:
        spec = {"*": {"reasoning": "think", "text": "one two", "tool_calls": [{"id": "c1", "name": "f", "arguments": {"a": 1}}]}}
        r = await a.client.post("/v1/responses", json={"model": "chat", "stream": True, "tools": [
            {"type": "function", "name": "f", "parameters": {"type": "object"}}], "input": "x\nemulate: " + json.dumps(spec)})
        evs = responses_events(r.text)
        kinds = [e["type"] for e in evs]
        assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
        assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
        assert "".join(e["delta"] for e in evs if e["type"] == "response.output_text.delta") == "one two"
        assert "response.function_call_arguments.done" in kinds and "response.output_text.done" in kinds
        done = evs[-1]["response"]
        assert [o["type"] for o in done["output"]] == ["reasoning", "message", "function_call"]
        assert done["output"][0]["summary"][0]["text"] == "think" and done["usage"]["output_tokens"] > 0
        assert "".join(e["delta"] for e in evs if e["type"] == "response.reasoning_summary_text.delta") == "think"
        assert kinds.index("response.reasoning_summary_part.added") < kinds.index("response.reasoning_summary_text.done")
        cut = await a.client.post("/v1/responses", json={"model": "glm/glm-4.6", "stream": True,
                                                         "input": "x\nemulate: " + json.dumps({"*": {"text": "a b c d", "cut_after": 2}})})
        last = responses_events(cut.text)[-1]
        assert last["type"] == "response.failed" and last["response"]["error"]["code"] == "stream_truncated"

    run(t)


def test_responses_bad_input_is_a_400_in_the_openai_shape() -> None:
    async def t(a: InProcess) -> None:
        for body, param in (({"previous_response_id": "resp_1", "input": "x"}, "previous_response_id"),
                            ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
                            ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
                            ({"input": "x", "max_output_tokens": 0}, "max_output_tokens")):
            r = await a.client.post("/v1/responses", json={"model": "chat", **body})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (param, r.text)

    run(t)


def test_a_parameter_a_protocol_cannot_take_is_dropped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def t(a: InProcess) -> None:
        for _ in range(2):
            r = await a.client.post("/v1/chat/completions", json={"model": "claude/claude-haiku-5-5", "seed": 3,
                                                                   "messages": msgs()})
            assert r.status_code == 200 and "seed" not in a.emulator.last["claude-haiku-5-5"]["body"]

    with caplog.at_level("WARNING", logger="llm_router"):
        run(t)
    assert [r.getMessage() for r in caplog.records].count(
        "claude/claude-haiku-5-5: seed is not sent (its API has no such parameter)") == 1


def test_previous_response_id_continues_a_recent_conversation() -> None:
    async def t(a: InProcess) -> None:
        first = await a.client.post("/v1/responses", json={"model": "chat", "input": "Name a city.\nemulate: " +
                                                           json.dumps({"*": {"text": "Oslo."}})})
        rid = first.json()["id"]
        second = await a.client.post("/v1/responses", json={"model": "chat", "previous_response_id": rid,
                                                            "instructions": "Be brief.", "input": "Its country?"})
        assert second.status_code == 200, second.text
        sent = a.emulator.last["glm-4.6"]["body"]["messages"]
        assert [(m["role"], m["content"].split("\n")[0]) for m in sent] == [
            ("system", "Be brief."), ("user", "Name a city."), ("assistant", "Oslo."), ("user", "Its country?")]
        s = await a.client.post("/v1/responses", json={"model": "chat", "stream": True, "input": "Again?\nemulate: " +
                                                       json.dumps({"*": {"text": "Bergen."}})})
        streamed = responses_events(s.text)[-1]["response"]["id"]
        third = await a.client.post("/v1/responses", json={"model": "chat", "previous_response_id": streamed, "input": "And?"})
        assert third.status_code == 200 and a.emulator.last["glm-4.6"]["body"]["messages"][1]["content"] == "Bergen."

    run(t)


def test_previous_response_id_is_found_by_another_replica_on_the_same_redis(redis_url: str, redis_prefix: str) -> None:
    """Two routers (one process each in production; two apps here) on one Redis: a response
    answered by one is continued through the other; an expired one is the 400 naming the field."""
    async def go() -> None:
        stores = [RedisStore(redis_url, prefix=redis_prefix, timeout=1.0) for _ in range(2)]
        try:
            async with app(store=stores[0]) as one, app(store=stores[1]) as two:
                first = await one.client.post("/v1/responses", json={"model": "chat", "input": "Name a city.\nemulate: " +
                                                                     json.dumps({"*": {"text": "Oslo."}})})
                rid = first.json()["id"]
                follow = await two.client.post("/v1/responses", json={"model": "chat", "previous_response_id": rid,
                                                                      "input": "Its country?"})
                assert follow.status_code == 200, follow.text
                sent = two.emulator.last["glm-4.6"]["body"]["messages"]
                assert [m["content"].split("\n")[0] for m in sent] == ["Name a city.", "Oslo.", "Its country?"]
                raw = await stores[0].kv_get(f"responses:{rid}")
                assert raw is not None and b"Oslo." in raw
                await stores[0].client.delete(f"{redis_prefix}:kv:{{responses:{rid}}}")  # expired
                gone = await two.client.post("/v1/responses", json={"model": "chat", "previous_response_id": rid, "input": "x"})
                assert gone.status_code == 400 and gone.json()["error"]["param"] == "previous_response_id"
        finally:
            for st in stores:
                await st.close()

    asyncio.run(go())


def test_review_fixes_remote_refs_top_k_with_thinking_and_beta_flags() -> None:
    async def t(a: InProcess) -> None:
        remote = {"type": "json_schema", "json_schema": {"schema": {"$ref": "http://169.254.169.254/latest"}}}
        r = await a.client.post("/v1/chat/completions", json={"model": "chat", "messages": msgs(), "response_format": remote})
        assert r.status_code == 400 and "only local $ref" in r.json()["error"]["message"]
        await a.client.post("/v1/messages", json={"model": "claude/claude-haiku-5-5", "max_tokens": 2000, "top_k": 5,
                                                  "thinking": {"type": "enabled", "budget_tokens": 1024}, "messages": msgs()})
        assert "top_k" not in a.emulator.last["claude-haiku-5-5"]["body"]  # thinking allows no sampling changes
        bad = await a.client.post("/v1/tasks", json={"task": "chat", "messages": msgs(), "anthropic_beta": ["a\r\nb"]})
        assert bad.status_code == 400 and bad.json()["error"]["path"] == "anthropic_beta[0]"

    run(t)


def test_anthropic_message_start_carries_the_prompt_tokens_the_upstream_reported() -> None:
    async def t(a: InProcess) -> None:
        def start_of(text: str) -> dict[str, Any]:
            return next(json.loads(line[6:]) for line in text.split("\n") if '"message_start"' in line)

        r = await a.client.post("/v1/messages", json={"model": "claude/claude-haiku-5-5", "max_tokens": 20, "stream": True,
                                                      "messages": msgs({"*": {"text": "hi", "input_tokens": 42}})})
        assert start_of(r.text)["message"]["usage"]["input_tokens"] == 42
        g = await a.client.post("/v1/messages", json={"model": "glm/glm-4.6", "max_tokens": 20, "stream": True,
                                                      "messages": msgs({"*": {"text": "hi", "input_tokens": 42}})})
        assert start_of(g.text)["message"]["usage"]["input_tokens"] == 0  # GLM's wire reports usage only at the end
        native = await a.client.post("/v1/tasks", json={"task": "claude/claude-haiku-5-5", "stream": True,
                                                        "messages": msgs({"*": {"text": "hi", "input_tokens": 42}})})
        assert '"input_tokens":42' in native.text.split("\n\n")[0]

    run(t)


def test_clear_thinking_reaches_zai_in_its_thinking_object() -> None:
    async def t(a: InProcess) -> None:
        await a.client.post("/v1/chat/completions", json={"model": "glm/glm-4.6", "messages": msgs(),
                                                           "thinking": {"type": "enabled", "clear_thinking": False}})
        assert a.emulator.last["glm-4.6"]["body"]["thinking"] == {"type": "enabled", "clear_thinking": False}

    run(t)
