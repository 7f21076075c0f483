"""The OpenAI (/v1/chat/completions), Anthropic (/v1/messages) and Z.AI backend (/api/chat) doors,
in process, in both directions: what a door's request becomes upstream (read back from the
emulator's record of the last request per model) and what the upstream's answer becomes in the
door's own shape, streamed and folded, with each door's error shapes."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from router.auth import hash_key
from router.config import Experiment, Variant
from router.doors.anthropic import AnthropicDoor
from router.doors.zchat import ChatDoor
from router.emulator.wire import signature_for
from router.errors import RouterError, UpstreamError
from router.experiments import assign
from router.request import Message, TaskRequest
from tests.unit._app import YAML, InProcess, app, say, sse
from tests.unit._local import Local, data_lines, served

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "wire" / "anthropic"
GLM, CLAUDE = "glm-4.6", "claude-sonnet-5-5"
PIN_CLAUDE = "claude/claude-sonnet-5-5"


def run(test: Callable[[InProcess], Awaitable[None]], yaml_text: str = YAML, **kw: Any) -> None:
    async def go() -> None:
        async with app(yaml_text, **kw) as a:
            await test(a)

    asyncio.run(go())


def run_local(test: Callable[[Local], Awaitable[None]], yaml_text: str = YAML, **kw: Any) -> None:
    async def go() -> None:
        async with served(yaml_text, **kw) as a:
            await test(a)

    asyncio.run(go())


def upstream(a: InProcess, model: str) -> dict[str, Any]:
    """The JSON body of the last request the emulator saw for ``model``."""
    body: dict[str, Any] = a.emulator.last[model]["body"]
    return body


def directive(spec: dict[str, Any]) -> str:
    return "emulate: " + json.dumps(spec)


WEATHER_TOOL = {"type": "function", "function": {"name": "weather", "description": "the weather",
                                                  "parameters": {"type": "object",
                                                                 "properties": {"city": {"type": "string"}}}}}


# -- OpenAI door -------------------------------------------------------------------------------
def test_openai_request_history_and_params_reach_glm_translated() -> None:
    async def t(a: InProcess) -> None:
        messages = [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "name": "bob", "content": [{"type": "text", "text": "weather "},
                                                        {"type": "text", "text": "in Paris?"}]},
            {"role": "assistant", "content": None, "reasoning_content": "a tool knows",
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": "thanks\n" + directive({"*": {"text": "You are welcome.",
                                                                      "input_tokens": 1000, "output_tokens": 100}})},
        ]
        r = await a.client.post("/v1/chat/completions", json={
            "model": "chat", "messages": messages, "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "temperature": 0.5, "top_p": 0.9, "max_tokens": 50, "max_completion_tokens": 70, "stop": "END",
            "thinking": {"type": "disabled"}, "user": "end-user-7", "metadata": {"k": "v"}})
        assert r.status_code == 200, r.text
        sent = upstream(a, GLM)
        assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool", "user"]
        assert sent["messages"][0]["content"] == "be brief"
        assert sent["messages"][1] == {"role": "user", "content": "weather in Paris?", "name": "bob"}
        assert sent["messages"][2]["content"] is None
        assert sent["messages"][2]["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
            "name": "weather", "arguments": '{"city": "Paris"}'}}]
        assert sent["messages"][3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
        assert sent["tools"][0]["function"]["name"] == "weather"
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
        assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["stop"]) == (0.5, 0.9, 70, ["END"])
        assert sent["thinking"] == {"type": "disabled"}
        body = r.json()
        assert body["object"] == "chat.completion" and body["model"] == GLM  # who answered, not the task
        assert body["id"].startswith("chatcmpl-") and body["choices"][0]["finish_reason"] == "stop"
        assert body["choices"][0]["message"]["content"] == "You are welcome."
        assert set(body["choices"][0]["message"]) <= {"content", "role"}  # no reasoning, no tool calls
        assert body["usage"]["prompt_tokens"] == 1000 and body["usage"]["completion_tokens"] == 100
        assert body["usage"]["total_tokens"] == 1100
        assert body["usage"]["cost_usd"] == pytest.approx((1000 * 0.60 + 100 * 2.20) / 1e6)
        assert body["router"]["provider"] == "glm" and body["router"]["cached"] is False
        assert body["router"]["attempts"][0]["outcome"] == "ok"

    run(t)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_folded_chat_completion_messages_carry_the_assistant_role(path: str) -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post(path, json={"model": "chat", "stream": False, "messages": say()})
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["role"] == "assistant"

    run(t)


def test_openai_max_tokens_alone_and_enabled_thinking() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/chat/completions", json={
            "model": "chat", "messages": say(), "max_tokens": 33, "stop": ["a", "b"], "thinking": {"type": "enabled"}})
        assert r.status_code == 200
        sent = upstream(a, GLM)
        assert sent["max_tokens"] == 33 and sent["stop"] == ["a", "b"] and sent["thinking"] == {"type": "enabled"}

    run(t)


def test_openai_assistant_reasoning_signature_and_redacted_reach_claude() -> None:
    async def t(a: InProcess) -> None:
        messages = [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "calling", "reasoning_content": "I think",
             "reasoning_signature": "sig-1", "reasoning_redacted": ["opaque-1"],
             "tool_calls": [{"id": "toolu_1", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "cold"},
            {"role": "user", "content": "and now?"},
        ]
        r = await a.client.post("/v1/chat/completions", json={"model": PIN_CLAUDE, "messages": messages,
                                                             "tools": [WEATHER_TOOL], "tool_choice": "required"})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == CLAUDE and r.json()["router"]["provider"] == "claude"
        sent = upstream(a, CLAUDE)
        assert sent["system"] == "sys" and sent["tool_choice"] == {"type": "any"}
        assistant = sent["messages"][1]
        assert assistant["role"] == "assistant"
        assert assistant["content"] == [
            {"type": "thinking", "thinking": "I think", "signature": "sig-1"},
            {"type": "redacted_thinking", "data": "opaque-1"},
            {"type": "text", "text": "calling"},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]
        assert sent["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"}

    run(t)


@pytest.mark.parametrize("body,param", [
    ({"n": 2}, "n"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"max_tokens": 0}, "max_tokens"),
])
def test_openai_unsupported_input_is_a_400_naming_the_param(body: dict[str, Any], param: str) -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/chat/completions", json={"model": "chat", "messages": say(), **body})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error" and err["code"] == "invalid_request_error"
        assert a.emulator.stats == {}

    run(t)


def test_openai_stream_of_glm_reasoning_and_tool_calls_with_the_usage_chunk() -> None:
    async def t(a: InProcess) -> None:
        spec = {"*": {"reasoning": "need the weather", "tool_calls": [{"id": "call_9", "name": "weather",
                                                                       "arguments": {"city": "Rome"}}],
                      "input_tokens": 20, "output_tokens": 8}}
        r = await a.client.post("/v1/chat/completions", json={
            "model": "chat", "stream": True, "stream_options": {"include_usage": True}, "messages": say(spec),
            "tools": [WEATHER_TOOL]})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = data_lines(r.text)
        assert chunks[-1] == "[DONE]"
        body = chunks[:-1]
        assert all(c["object"] == "chat.completion.chunk" and c["model"] == GLM for c in body)
        assert len({c["id"] for c in body}) == 1
        assert body[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        deltas = [c["choices"][0]["delta"] for c in body if c["choices"]]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == "need the weather"
        calls = [tc for d in deltas for tc in d.get("tool_calls", ())]
        assert calls[0] == {"index": 0, "id": "call_9", "type": "function", "function": {"name": "weather", "arguments": ""}}
        assert json.loads("".join(tc["function"]["arguments"] for tc in calls)) == {"city": "Rome"}
        finish = [c for c in body if c["choices"] and c["choices"][0]["finish_reason"]]
        assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "tool_calls"
        usage = body[-1]
        assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == 20
        assert usage["usage"]["completion_tokens"] == 8 and usage["usage"]["total_tokens"] == 28
        r = await a.client.post("/v1/chat/completions", json={"model": "chat", "stream": True, "messages": say()})
        assert all(c == "[DONE]" or c["choices"] for c in data_lines(r.text))  # no usage chunk unasked

    run(t)


def test_openai_stream_carries_claude_signatures_and_fallback_comments() -> None:
    async def t(a: InProcess) -> None:
        spec = {GLM: {"status": 400}, "*": {"reasoning": "deep thought", "text": "42"}}
        r = await a.client.post("/v1/chat/completions", json={"model": "t", "stream": True, "messages": say(spec)})
        assert r.status_code == 200
        assert r.text.startswith(": fallback glm/glm-4.6 -> claude/claude-sonnet-5-5 (")
        deltas = [c["choices"][0]["delta"] for c in data_lines(r.text) if c != "[DONE]"]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == "deep thought"
        assert [d["reasoning_signature"] for d in deltas if "reasoning_signature" in d] == [signature_for("deep thought")]
        assert "".join(d.get("content", "") for d in deltas) == "42"

    run(t)


def test_openai_folded_claude_answer_keeps_reasoning_signature_and_tool_calls() -> None:
    async def t(a: InProcess) -> None:
        spec = {"*": {"reasoning": "hmm", "tool_calls": [{"id": "toolu_7", "name": "weather", "arguments": {"city": "Nice"}}]}}
        r = await a.client.post("/v1/chat/completions", json={"model": PIN_CLAUDE, "messages": say(spec),
                                                             "tools": [WEATHER_TOOL]})
        msg = r.json()["choices"][0]["message"]
        assert msg["content"] is None and msg["reasoning_content"] == "hmm"
        assert msg["reasoning_signature"] == signature_for("hmm")
        (call,) = msg["tool_calls"]
        assert (call["id"], call["type"], call["function"]["name"]) == ("toolu_7", "function", "weather")
        assert json.loads(call["function"]["arguments"]) == {"city": "Nice"}
        assert r.json()["choices"][0]["finish_reason"] == "tool_calls"

    run(t)


def test_openai_midstream_failure_is_an_error_chunk_without_done() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/chat/completions", json={
            "model": "chat", "stream": True, "messages": say({"*": {"text": "a b c d", "cut_after": 2}})})
        chunks = data_lines(r.text)
        assert "[DONE]" not in chunks
        assert chunks[-1] == {"error": {"message": chunks[-1]["error"]["message"], "type": "api_error", "param": None,
                                        "code": "stream_truncated"}}

    run(t)


# -- Anthropic door ----------------------------------------------------------------------------
def test_anthropic_request_blocks_become_the_canonical_history() -> None:
    async def t(a: InProcess) -> None:
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "use the tool", "signature": "sig-A"},
                {"type": "redacted_thinking", "data": "opaque-A"},
                {"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "toolu_A", "name": "weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_A",
                 "content": [{"type": "text", "text": "cold "}, {"type": "text", "text": "and dark"}]},
                {"type": "text", "text": "so?\n" + directive({"*": {"text": "wear a coat"}})}]},
        ]
        r = await a.client.post("/v1/messages", json={
            "model": PIN_CLAUDE, "max_tokens": 300, "messages": messages,
            "system": [{"type": "text", "text": "be "}, {"type": "text", "text": "kind"}],
            "tools": [{"name": "weather", "description": "the weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "weather"}, "stop_sequences": ["STOP"],
            "temperature": 0.2})
        assert r.status_code == 200, r.text
        sent = upstream(a, CLAUDE)
        assert sent["system"] == "be kind" and sent["max_tokens"] == 300 and sent["stop_sequences"] == ["STOP"]
        assert sent["temperature"] == 0.2
        assert sent["tools"] == [{"name": "weather", "description": "the weather", "input_schema": {"type": "object"}}]
        assert sent["tool_choice"] == {"type": "tool", "name": "weather"}
        assert sent["messages"][1]["content"] == messages[1]["content"]  # thinking, signature, redacted: all back
        assert sent["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": "toolu_A", "content": "cold and dark"},
            {"type": "text", "text": "so?\n" + directive({"*": {"text": "wear a coat"}})}]
        body = r.json()
        assert body["type"] == "message" and body["role"] == "assistant" and body["model"] == CLAUDE
        assert body["id"].startswith("msg_") and body["content"] == [{"type": "text", "text": "wear a coat"}]
        assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None

    run(t)


def test_anthropic_tool_results_reach_glm_as_tool_messages() -> None:
    async def t(a: InProcess) -> None:
        messages = [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "rain"}]},
        ]
        r = await a.client.post("/v1/messages", json={"model": "chat", "max_tokens": 20, "messages": messages,
                                                      "system": "plain system"})
        assert r.status_code == 200, r.text
        sent = upstream(a, GLM)["messages"]
        assert sent[0] == {"role": "system", "content": "plain system"}
        assert sent[2]["role"] == "assistant" and sent[2]["content"] is None
        assert sent[2]["tool_calls"][0]["function"] == {"name": "weather", "arguments": "{}"}
        assert sent[3] == {"role": "tool", "content": "rain", "tool_call_id": "t1"}

    run(t)


@pytest.mark.parametrize("choice,wire", [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "something_new"}, "auto"), ({"type": "tool", "name": "weather"},
                                          {"type": "function", "function": {"name": "weather"}}),
])
def test_anthropic_tool_choice_forms(choice: dict[str, Any], wire: Any) -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/messages", json={
            "model": "chat", "max_tokens": 20, "messages": say(), "tool_choice": choice,
            "tools": [{"name": "weather", "input_schema": {"type": "object"}}]})
        assert r.status_code == 200, r.text
        assert upstream(a, GLM)["tool_choice"] == wire

    run(t)


@pytest.mark.parametrize("thinking,wire", [
    ({"type": "enabled", "budget_tokens": 2048}, {"type": "enabled"}),
    ({"type": "adaptive"}, {"type": "enabled"}),
    ({"type": "disabled"}, {"type": "disabled"}),
])
def test_anthropic_thinking_forms(thinking: dict[str, Any], wire: dict[str, str]) -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/messages", json={"model": "chat", "max_tokens": 20, "messages": say(),
                                                      "thinking": thinking, "top_p": 0.5})
        assert r.status_code == 200
        assert upstream(a, GLM)["thinking"] == wire and upstream(a, GLM)["top_p"] == 0.5

    run(t)


def test_anthropic_folded_claude_answer_with_thinking_and_tool_use() -> None:
    async def t(a: InProcess) -> None:
        spec = {"*": {"reasoning": "let me see", "text": "Calling.", "input_tokens": 12, "output_tokens": 9,
                      "tool_calls": [{"id": "toolu_X", "name": "weather", "arguments": {"city": "Lima"}}]}}
        r = await a.client.post("/v1/messages", json={"model": PIN_CLAUDE, "max_tokens": 100, "messages": say(spec)})
        body = r.json()
        assert body["content"] == [
            {"type": "thinking", "thinking": "let me see", "signature": signature_for("let me see")},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_X", "name": "weather", "input": {"city": "Lima"}}]
        assert body["stop_reason"] == "tool_use"
        assert body["usage"].pop("cost_usd") >= 0  # the router's own field beside Anthropic's
        assert body["usage"] == {"input_tokens": 12, "output_tokens": 9, "cache_read_input_tokens": 0,
                                 "cache_creation_input_tokens": 0}

    run(t)


def test_anthropic_folded_glm_reasoning_is_a_thinking_block_without_signature() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/messages", json={"model": "chat", "max_tokens": 100, "messages": say(
            {"*": {"reasoning": "glm thinks", "text": "done", "finish_reason": "length"}})})
        assert r.json()["content"] == [{"type": "thinking", "thinking": "glm thinks", "signature": ""},
                                       {"type": "text", "text": "done"}]
        assert r.json()["stop_reason"] == "max_tokens"

    run(t)


def test_anthropic_stream_of_claude_thinking_text_and_tool_use() -> None:
    async def t(a: InProcess) -> None:
        spec = {"*": {"reasoning": "step one", "text": "Let me check.", "input_tokens": 30, "output_tokens": 11,
                      "tool_calls": [{"id": "toolu_S", "name": "weather", "arguments": {"city": "Bern"}}]}}
        r = await a.client.post("/v1/messages", json={"model": PIN_CLAUDE, "max_tokens": 100, "stream": True,
                                                      "messages": say(spec)})
        evs = sse(r.text)
        kinds = [e["type"] for e in evs]
        assert kinds[:2] == ["message_start", "ping"] and kinds[-2:] == ["message_delta", "message_stop"]
        start = evs[0]["message"]
        assert start["model"] == CLAUDE and start["id"].startswith("msg_") and start["content"] == []
        blocks = [e for e in evs if e["type"] == "content_block_start"]
        assert [b["index"] for b in blocks] == [0, 1, 2]
        assert blocks[0]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
        assert blocks[1]["content_block"] == {"type": "text", "text": ""}
        assert blocks[2]["content_block"] == {"type": "tool_use", "id": "toolu_S", "name": "weather", "input": {}}
        deltas = [e for e in evs if e["type"] == "content_block_delta"]
        by_kind: dict[str, str] = {}
        for d in deltas:
            kind = d["delta"]["type"]
            field = {"thinking_delta": "thinking", "signature_delta": "signature", "text_delta": "text",
                     "input_json_delta": "partial_json"}[kind]
            by_kind[kind] = by_kind.get(kind, "") + d["delta"][field]
        assert by_kind == {"thinking_delta": "step one", "signature_delta": signature_for("step one"),
                           "text_delta": "Let me check.", "input_json_delta": '{"city": "Bern"}'}
        stops = [e["index"] for e in evs if e["type"] == "content_block_stop"]
        assert stops == [0, 1, 2]
        # every block is stopped before the next one starts
        order = [(e["type"], e.get("index")) for e in evs if e["type"].startswith("content_block_") and
                 e["type"] != "content_block_delta"]
        assert order == [("content_block_start", 0), ("content_block_stop", 0), ("content_block_start", 1),
                         ("content_block_stop", 1), ("content_block_start", 2), ("content_block_stop", 2)]
        delta = evs[-2]
        assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
        assert delta["usage"].pop("cost_usd") >= 0
        assert delta["usage"] == {"input_tokens": 30, "output_tokens": 11, "cache_read_input_tokens": 0,
                                  "cache_creation_input_tokens": 0}

    run(t)


def test_anthropic_midstream_failure_is_an_error_event() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/messages", json={"model": "chat", "max_tokens": 100, "stream": True,
                                                      "messages": say({"*": {"text": "a b c d", "cut_after": 2}})})
        evs = sse(r.text)
        assert evs[-1]["type"] == "error" and evs[-1]["error"]["type"] == "overloaded_error"  # retryable
        assert evs[-1]["error"]["message"].endswith("(stream_truncated)")
        assert "message_stop" not in [e["type"] for e in evs]

    run(t)


def test_anthropic_role_other_than_user_or_assistant_is_a_400() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/messages", json={"model": "chat", "max_tokens": 5,
                                                      "messages": [{"role": "system", "content": "x"}]})
        assert r.status_code == 400
        assert r.json() == {"type": "error", "error": {
            "type": "invalid_request_error",
            "message": "messages[0].role: role must be user or assistant, got 'system'"}}

    run(t)


def test_anthropic_400_paths_name_the_requests_own_message() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/messages", json={"model": "chat", "max_tokens": 5, "system": "sys", "messages": [
            {"role": "user", "content": "question"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_nope", "content": "x"}]}]})
        assert r.status_code == 400
        assert r.json()["error"]["message"].startswith("messages[1]")

    run(t)


AB_YAML = YAML + """
  ab:
    chain: [glm/glm-4.6]
    experiment:
      variants:
        g: {chain: [glm/glm-4.6], weight: 1}
        c: {chain: [claude/claude-sonnet-5-5], weight: 1}
"""


def _users_for_each_variant() -> dict[str, str]:
    exp = Experiment(variants={"g": Variant(chain=["glm/glm-4.6"], weight=1),
                               "c": Variant(chain=["claude/claude-sonnet-5-5"], weight=1)})
    found: dict[str, str] = {}
    for i in range(100):
        user = f"user-{i}"
        req = TaskRequest(task="ab", messages=[Message(role="user", content="x")], metadata={"user": user})
        found.setdefault(assign("ab", exp, req), user)
    return found


def test_metadata_user_ids_keep_callers_on_their_variant_through_both_doors() -> None:
    users = _users_for_each_variant()

    async def t(a: InProcess) -> None:
        for _ in range(2):
            r = await a.client.post("/v1/messages", json={"model": "ab", "max_tokens": 5, "messages": say(),
                                                          "metadata": {"user_id": users["g"]}})
            assert r.status_code == 200
            r = await a.client.post("/v1/chat/completions", json={"model": "ab", "messages": say(),
                                                                  "metadata": {"user": users["c"]}})
            assert r.json()["router"]["provider"] == "claude"
        assert a.emulator.stats[GLM]["requests"] == 2 and a.emulator.stats[CLAUDE]["requests"] == 2

    run(t, AB_YAML)


# -- /api/chat ---------------------------------------------------------------------------------
def test_zchat_streams_in_the_backends_exact_format() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/api/chat", json={"model": "glm-4-plus", "temperature": 0.3, "max_tokens": 40,
                                                   "messages": [{"role": "system", "content": ""}] +
                                                   say({"*": {"text": "one two"}})})
        assert r.status_code == 200
        lines = [b for b in r.text.split("\n\n") if b]
        assert lines[0].startswith('data: {"choices": [{"delta": {"content": "one "}}], "model": "glm-4.6", "created": ')  # the model that served
        assert lines[-1] == 'data: {"data": "[DONE]"}'
        assert "".join(json.loads(x.removeprefix("data: "))["choices"][0]["delta"]["content"] for x in lines[:-1]) == "one two"
        sent = upstream(a, GLM)  # unknown model: the chat task; the empty system message is dropped
        assert [m["role"] for m in sent["messages"]] == ["user"]
        assert sent["temperature"] == 0.3 and sent["max_tokens"] == 40

    run(t)


def test_zchat_model_naming_a_task_or_target_is_used() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/api/chat", json={"model": PIN_CLAUDE, "stream": False, "messages": say()})
        body = r.json()
        assert body["object"] == "chat.completion" and body["model"] == CLAUDE
        assert body["router"]["provider"] == "claude" and body["choices"][0]["message"]["content"]
        r = await a.client.post("/api/chat", json={"model": "quick_summary", "stream": False,
                                                   "messages": say({GLM: {"status": 400}, "*": {"text": "claude"}})})
        assert r.json()["choices"][0]["message"]["content"] == "claude"  # the task's fallback chain ran
        r = await a.client.post("/api/chat", json={"stream": False, "messages": say()})
        assert r.json()["model"] == GLM and r.json()["router"]["task"] == "chat"

    run(t)


def test_zchat_midstream_failure_is_the_streaming_error_line() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/api/chat", json={"messages": say({"*": {"text": "a b c d", "cut_after": 2}})})
        last = [b for b in r.text.split("\n\n") if b][-1]
        err = json.loads(last.removeprefix("data: "))
        assert err["error"]["type"] == "streaming_error" and err["error"]["message"]
        assert '"[DONE]"' not in r.text

    run(t)


@pytest.mark.parametrize("messages,detail", [
    ([], "Messages array is required and cannot be empty"),
    ([{"role": "user", "content": ""}], "No valid messages provided"),
])
def test_zchat_empty_messages_in_the_backends_words(messages: list[Any], detail: str) -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/api/chat", json={"messages": messages})
        assert r.status_code == 400 and r.json() == {"detail": detail}

    run(t)


def test_zchat_unknown_default_task_is_a_404_detail() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/api/chat", json={"messages": say()})
        assert r.status_code == 404
        assert r.json()["detail"].startswith("task: unknown task or model 'chat'; tasks: ")

    run(t, YAML.replace("  chat:\n    chain: [glm/glm-4.6]\n", "", 1))


def test_zchat_400_paths_name_the_requests_own_message() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/api/chat", json={"messages": [{"role": "user", "content": ""},
                                                                {"role": "bot", "content": "x"}]})
        assert r.status_code == 400 and r.json()["detail"].startswith("messages[1].role")

    run(t)


# -- redacted thinking, from recorded and scripted Claude answers -------------------------------
REDACTED_JSON = {"id": "msg_r", "type": "message", "role": "assistant", "model": CLAUDE,
                 "content": [{"type": "redacted_thinking", "data": "opaque-data-1"},
                             {"type": "text", "text": "visible answer"}],
                 "stop_reason": "end_turn", "stop_sequence": None,
                 "usage": {"input_tokens": 10, "output_tokens": 5}}


def _fixtures(tmp_path: Path) -> Path:
    shutil.copy(RECORDED / "redacted-thinking-text.sonnet-4-5.sse", tmp_path / "redacted.sse")
    (tmp_path / "redacted.json").write_text(json.dumps(REDACTED_JSON))
    return tmp_path


def _recorded_redacted() -> list[str]:
    out = []
    for block in (RECORDED / "redacted-thinking-text.sonnet-4-5.sse").read_text().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: ") and '"redacted_thinking"' in line:
                out.append(json.loads(line.removeprefix("data: "))["content_block"]["data"])
    return out


def test_redacted_thinking_streams_through_both_doors(tmp_path: Path) -> None:
    recorded = _recorded_redacted()
    assert len(recorded) == 2

    async def t(a: Local) -> None:
        msgs = say({"*": {"replay": "redacted.sse"}})
        r = await a.client.post("/v1/messages", json={"model": PIN_CLAUDE, "max_tokens": 100, "stream": True,
                                                      "messages": msgs})
        evs = sse(r.text)
        blocks = [e["content_block"] for e in evs if e["type"] == "content_block_start"]
        assert blocks[:2] == [{"type": "redacted_thinking", "data": d} for d in recorded]
        assert blocks[2] == {"type": "text", "text": ""}
        assert [e["index"] for e in evs if e["type"] == "content_block_stop"] == [0, 1, 2]
        text = "".join(e["delta"]["text"] for e in evs if e["type"] == "content_block_delta")
        assert text.startswith("I notice that you've sent what") and evs[-1]["type"] == "message_stop"
        r = await a.client.post("/v1/chat/completions", json={"model": PIN_CLAUDE, "stream": True, "messages": msgs})
        deltas = [c["choices"][0]["delta"] for c in data_lines(r.text) if c != "[DONE]" and c["choices"]]
        assert [d["reasoning_redacted"] for d in deltas if "reasoning_redacted" in d] == [[d] for d in recorded]

    run_local(t, fixtures=_fixtures(tmp_path))


def test_redacted_thinking_in_folded_answers_of_both_doors(tmp_path: Path) -> None:
    """Folded from the upstream stream (the default) and from a non-streamed upstream answer
    (``stream_upstream: false``)."""
    recorded = _recorded_redacted()

    def check(replay: str, redacted: list[str], text: str) -> Callable[[Local], Awaitable[None]]:
        async def t(a: Local) -> None:
            msgs = say({"*": {"replay": replay}})
            r = await a.client.post("/v1/messages", json={"model": PIN_CLAUDE, "max_tokens": 100, "messages": msgs})
            content = r.json()["content"]
            assert content[:-1] == [{"type": "redacted_thinking", "data": d} for d in redacted]
            assert content[-1]["type"] == "text" and content[-1]["text"].startswith(text)
            r = await a.client.post("/v1/chat/completions", json={"model": PIN_CLAUDE, "messages": msgs})
            msg = r.json()["choices"][0]["message"]
            assert msg["reasoning_redacted"] == redacted and msg["content"].startswith(text)
            assert "reasoning_signature" not in msg and "reasoning_content" not in msg

        return t

    run_local(check("redacted.sse", recorded, "I notice that you've sent what"), fixtures=_fixtures(tmp_path))
    no_stream = YAML.replace("  claude:\n", "  claude:\n    stream_upstream: false\n", 1)
    assert no_stream != YAML
    run_local(check("redacted.json", ["opaque-data-1"], "visible answer"), no_stream, fixtures=_fixtures(tmp_path))


# -- error shapes ------------------------------------------------------------------------------
KEY, ADMIN = "sk-door-test", "sk-door-admin"
ERRORS_YAML = YAML.replace("tasks:\n", "tasks:\n  dead:\n    chain: [nokey/m]\n", 1).replace(
    "providers:\n", "providers:\n  nokey:\n    protocol: openai\n    base_url: http://emulator/v1\n"
                    "    api_key: ${UNSET_KEY}\n    models:\n      m: {context_window: 1000}\n", 1) + f"""
tenants:
  acme:
    keys: ["{hash_key(KEY)}"]
    tasks: [chat, limited, dead]
admin_keys: ["{hash_key(ADMIN)}"]
"""
AUTH = {"authorization": f"Bearer {KEY}"}

DOORS: dict[str, Callable[[str, list[dict[str, Any]]], dict[str, Any]]] = {
    "/v1/chat/completions": lambda model, msgs: {"model": model, "messages": msgs},
    "/v1/messages": lambda model, msgs: {"model": model, "max_tokens": 10, "messages": msgs},
    "/api/chat": lambda model, msgs: {"model": model, "stream": False, "messages": msgs},
}


def _shape(path: str, body: Any) -> tuple[str | None, str]:
    """(error type, message) in each door's shape; zchat's FastAPI ``detail`` has no type."""
    if path == "/v1/chat/completions":
        assert set(body["error"]) >= {"message", "type", "param", "code"}
        return body["error"]["type"], body["error"]["message"]
    if path == "/v1/messages":
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
        return body["error"]["type"], body["error"]["message"]
    assert set(body) == {"detail"}
    return None, body["detail"]


@pytest.mark.parametrize("path", list(DOORS))
def test_each_door_answers_errors_in_its_own_shape(path: str) -> None:
    make = DOORS[path]
    oa, an = path == "/v1/chat/completions", path == "/v1/messages"

    async def t(a: InProcess) -> None:
        c = a.client
        r = await c.post(path, json=make("chat", say()))
        assert r.status_code == 401
        kind, msg = _shape(path, r.json())
        assert msg.startswith("an API key is required") and kind in (None, "authentication_error")
        r = await c.post(path, json=make("chat", say()), headers={"x-api-key": "sk-wrong"})
        assert r.status_code == 401 and _shape(path, r.json())[1] == "the API key is not valid"
        r = await c.post(path, json=make("t", say()), headers=AUTH)
        assert r.status_code == 403 and "may not use 't'" in _shape(path, r.json())[1]
        assert _shape(path, r.json())[0] in (None, "permission_error")
        if path != "/api/chat":  # /api/chat sends unknown models to its chat task
            r = await c.post(path, json=make("nope", say()), headers=AUTH)
            assert r.status_code == 404
            kind, msg = _shape(path, r.json())
            assert kind == "not_found_error" and "unknown task or model 'nope'" in msg
            if oa:
                assert r.json()["error"]["param"] == "task" and r.json()["error"]["code"] == "not_found_error"
            if an:
                assert msg.startswith("task: ")
        r = await c.post(path, json=make("chat", say({"*": {"status": 400}})), headers=AUTH)
        assert r.status_code == 502
        kind, msg = _shape(path, r.json())
        assert kind in (None, "api_error") and "every target of the chain failed" in msg
        if oa:
            assert r.json()["error"]["code"] == "all_targets_failed"
            assert r.json()["error"]["attempts"][0]["target"] == "glm/glm-4.6"
        r = await c.post(path, json=make("dead", say()), headers=AUTH)
        assert r.status_code == 503
        assert _shape(path, r.json())[0] in (None, "overloaded_error" if an else "api_error")
        statuses = [(await c.post(path, json=make("limited", say()), headers=AUTH)).status_code for _ in range(2)]
        assert statuses == [200, 200]
        r = await c.post(path, json=make("limited", say()), headers=AUTH)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert _shape(path, r.json())[0] in (None, "rate_limit_error")
        assert r.headers["x-ratelimit-limit"] == "2" and r.headers["x-ratelimit-remaining"] == "0"

    run(t, ERRORS_YAML)


def test_failures_after_the_stream_began_end_with_each_doors_error_event(monkeypatch: pytest.MonkeyPatch) -> None:
    for door in (AnthropicDoor, ChatDoor):
        real = door.stream

        def breaking(real: Any) -> Any:
            async def stream(self: Any, events: Any, req: Any, opts: Any) -> Any:
                n = 0
                async for chunk in real(self, events, req, opts):
                    if chunk:
                        n += 1
                    if n == 3:
                        raise RuntimeError("secret encoder detail")
                    yield chunk
            return stream

        monkeypatch.setattr(door, "stream", breaking(real))

    async def t(a: InProcess) -> None:
        msgs = say({"*": {"text": "a b c d e f g h"}})
        r = await a.client.post("/v1/messages", json={"model": "chat", "max_tokens": 9, "stream": True, "messages": msgs})
        evs = sse(r.text)
        assert evs[-1] == {"type": "error", "error": {"type": "api_error", "message": "internal error (internal_error)"}}
        assert "secret" not in r.text and "message_stop" not in r.text
        r = await a.client.post("/api/chat", json={"messages": msgs})
        last = [b for b in r.text.split("\n\n") if b][-1]
        assert json.loads(last.removeprefix("data: ")) == {"error": {"message": "internal error", "type": "streaming_error"}}
        assert "[DONE]" not in r.text

    run(t)


def test_error_events_say_whether_trying_again_may_help() -> None:
    door = AnthropicDoor(1000)
    err = UpstreamError("overloaded upstream", code="overloaded_error", retryable=True)
    got = door.error_event(err, 4).decode()
    assert got.startswith("event: error\ndata: ")
    assert json.loads(got.split("data: ", 1)[1]) == {"type": "error", "error": {
        "type": "overloaded_error", "message": "overloaded upstream (overloaded_error)"}}
    status, body = door.error(RouterError("boom"))
    assert status == 500 and json.loads(body) == {"type": "error", "error": {"type": "api_error", "message": "boom"}}
