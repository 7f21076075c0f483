"""Request encoding: the canonical request as each provider's wire body."""

from __future__ import annotations

import json

from providers import Call, adapter_for
from router.request import (
    FunctionCall,
    Message,
    Tool,
    ToolCall,
    ToolChoiceFunction,
    ToolChoiceNamed,
    ToolFunction,
)

HISTORY = [
    Message(role="system", content="Be brief."),
    Message(role="user", content="Weather in Oslo and Rome?"),
    Message(role="assistant", content="Checking.", reasoning="need two calls", reasoning_signature="sig==",
            tool_calls=[ToolCall(id="c1", function=FunctionCall(name="weather", arguments='{"city":"Oslo"}')),
                        ToolCall(id="c2", function=FunctionCall(name="weather", arguments='{"city":"Rome"}'))]),
    Message(role="tool", tool_call_id="c1", content="5C"),
    Message(role="tool", tool_call_id="c2", content="20C"),
    Message(role="user", content="Thanks. Which is warmer?"),
]
TOOLS = [Tool(function=ToolFunction(name="weather", description="Weather by city",
                                    parameters={"type": "object", "properties": {"city": {"type": "string"}}}))]


def _encode(protocol: str, **kw):  # type: ignore[no-untyped-def]
    call = Call(model="m", messages=HISTORY, tools=TOOLS, **kw)
    req = adapter_for(protocol).encode(call, "https://up.example/base", "sk-secret", {"x-extra": "1"})
    return req, json.loads(req.body)


def test_openai_request() -> None:
    req, body = _encode("openai", stream=True, thinking=True, max_tokens=100, temperature=0.2, stop=["END"])
    assert req.url == "https://up.example/base/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-secret" and req.headers["x-extra"] == "1"
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "tool", "user"]
    calls = body["messages"][2]["tool_calls"]
    assert all(c["type"] == "function" for c in calls)  # GLM answers 1214 without it
    assert [c["id"] for c in calls] == ["c1", "c2"]
    assert [m.get("tool_call_id") for m in body["messages"][3:5]] == ["c1", "c2"]
    assert body["thinking"] == {"type": "enabled"}
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["stop"]) == (100, 0.2, ["END"])
    assert body["tools"][0]["function"]["name"] == "weather"
    _, plain = _encode("openai", thinking=False)
    assert plain["thinking"] == {"type": "disabled"} and "stream" not in plain


def test_anthropic_request() -> None:
    named = ToolChoiceNamed(function=ToolChoiceFunction(name="weather"))
    req, body = _encode("anthropic", stream=True, max_tokens=300, temperature=0.5, tool_choice=named)
    assert req.url == "https://up.example/base/v1/messages"
    assert req.headers["x-api-key"] == "sk-secret" and req.headers["anthropic-version"] == "2023-06-01"
    assert body["system"] == "Be brief."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assistant = body["messages"][1]["content"]
    assert assistant[0] == {"type": "thinking", "thinking": "need two calls", "signature": "sig=="}
    assert assistant[1] == {"type": "text", "text": "Checking."}
    assert assistant[2] == {"type": "tool_use", "id": "c1", "name": "weather", "input": {"city": "Oslo"}}
    results = body["messages"][2]["content"]
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]
    assert [b.get("tool_use_id") for b in results[:2]] == ["c1", "c2"]
    assert body["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}
    assert body["tool_choice"] == {"type": "tool", "name": "weather"}
    assert body["temperature"] == 0.5 and body["max_tokens"] == 300 and body["stream"] is True


def test_anthropic_thinking_budget() -> None:
    _, small = _encode("anthropic", thinking=True, max_tokens=512, temperature=0.5)
    assert small["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert small["max_tokens"] == 1024 + 512  # the visible answer keeps its 512 tokens
    assert "temperature" not in small  # not allowed with extended thinking
    _, big = _encode("anthropic", thinking=True, max_tokens=8000)
    assert big["thinking"]["budget_tokens"] == 4000 and big["max_tokens"] == 8000
    _, default = _encode("anthropic")
    assert default["max_tokens"] == 4096 and "thinking" not in default


def test_anthropic_tool_choice_mapping() -> None:
    for choice, wire in (("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})):
        assert _encode("anthropic", tool_choice=choice)[1]["tool_choice"] == wire


def test_anthropic_adaptive_thinking_and_no_sampling() -> None:
    _, adaptive = _encode("anthropic", thinking=True, thinking_style="adaptive", max_tokens=512)
    assert adaptive["thinking"] == {"type": "adaptive"} and adaptive["max_tokens"] == 512
    _, fixed = _encode("anthropic", temperature=0.3, top_p=0.9, sampling=False)
    assert "temperature" not in fixed and "top_p" not in fixed
    _, oai = _encode("openai", temperature=0.3, sampling=False)
    assert "temperature" not in oai


def test_anthropic_redacted_thinking_is_sent_back_unchanged() -> None:
    history = [Message(role="user", content="q"),
               Message(role="assistant", content="a", reasoning="r", reasoning_signature="sig",
                       reasoning_redacted=["EmwKAhgBEgy3va3pzix/LafPsn4a", "Eo0BCkYIBxgC"]),
               Message(role="user", content="and?")]
    body = json.loads(adapter_for("anthropic").encode(Call(model="m", messages=history), "https://x", "k", {}).body)
    assert [b["type"] for b in body["messages"][1]["content"]] == ["thinking", "redacted_thinking", "redacted_thinking", "text"]
    assert body["messages"][1]["content"][1] == {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}
