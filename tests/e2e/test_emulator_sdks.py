"""The emulator speaks the providers' exact formats: the official SDKs parse what it sends."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.e2e._client import directive

pytestmark = pytest.mark.e2e

TOOL_SPEC = {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}},
                            {"name": "weather", "arguments": {"city": "Rome"}}], "text": "Checking."}


def _user(spec: dict) -> list[dict]:  # type: ignore[type-arg]
    return [{"role": "user", "content": "Weather?\n" + directive({"*": spec})}]


@pytest.fixture(params=["/v1", "/api/paas/v4"], ids=["openai", "glm"])
def oai(request: pytest.FixtureRequest, emulator: str):  # type: ignore[no-untyped-def]
    with openai.OpenAI(base_url=emulator + request.param, api_key="sk-test", max_retries=0) as c:
        yield c


@pytest.fixture
def claude(emulator: str):  # type: ignore[no-untyped-def]
    with anthropic.Anthropic(base_url=emulator, api_key="sk-ant-test", max_retries=0) as c:
        yield c


def test_openai_sdk_non_stream(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model="glm-4.6", messages=_user({"text": "Hi there.", "reasoning": "hmm"}))
    assert r.choices[0].message.content == "Hi there." and r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens > 0
    t = oai.chat.completions.create(model="glm-4.6", messages=_user(TOOL_SPEC))
    calls = t.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert t.choices[0].finish_reason == "tool_calls"


def test_openai_sdk_stream(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="glm-4.6", messages=_user({"text": "one two three"}),
                                              stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert any(c.usage is not None for c in chunks)
    tools = list(oai.chat.completions.create(model="glm-4.6", messages=_user(TOOL_SPEC), stream=True))
    args: dict[int, str] = {}
    for c in tools:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "")
    assert [json.loads(a) for _, a in sorted(args.items())] == [{"city": "Oslo"}, {"city": "Rome"}]


def test_openai_sdk_error(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="glm-4.6", messages=_user({"status": 429, "error_code": "1302"}))


def test_anthropic_sdk_non_stream(claude: anthropic.Anthropic) -> None:
    m = claude.messages.create(model="claude-sonnet-5-5", max_tokens=2048, messages=_user(
        {"text": "Answer.", "reasoning": "Let me think."}), thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].signature and m.stop_reason == "end_turn"


def test_anthropic_sdk_stream_final_message(claude: anthropic.Anthropic) -> None:
    tools = [{"name": "weather", "description": "by city", "input_schema": {"type": "object"}}]
    with claude.messages.stream(model="claude-sonnet-5-5", max_tokens=2048, tools=tools,  # type: ignore[arg-type]
                                thinking={"type": "enabled", "budget_tokens": 1024},
                                messages=_user({**TOOL_SPEC, "reasoning": "Two cities."})) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert final.content[0].thinking == "Two cities." and final.content[0].signature
    assert [b.input for b in final.content if b.type == "tool_use"] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert final.stop_reason == "tool_use" and final.usage.output_tokens > 0
    with claude.messages.stream(model="claude-sonnet-5-5", max_tokens=64, messages=_user({"text": "a b c"})) as s:
        assert "".join(s.text_stream) == "a b c"


def test_anthropic_sdk_errors(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as info:
        claude.messages.create(model="m", max_tokens=5, messages=_user({"status": 529}))
    assert info.value.status_code == 529
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model="m", max_tokens=5, messages=_user({"status": 429, "retry_after": 2}))


def test_emulator_times_delay_stats_and_replay(emulator: str) -> None:
    with httpx.Client(timeout=10) as c:
        body = {"model": "times-model", "messages": _user({"status": 503, "times": 2, "text": "finally"})}
        assert [c.post(emulator + "/v1/chat/completions", json=body).status_code for _ in range(3)] == [503, 503, 200]
        stats = c.get(emulator + "/_emulator/stats").json()["times-model"]
        assert (stats["requests"], stats["failed"], stats["completed"]) == (3, 2, 1)
        replay = {"model": "r", "stream": True,
                  "messages": _user({"replay": "anthropic/text-basic.haiku-4-5.sse"})}
        r = c.post(emulator + "/v1/messages", json=replay)
        assert r.status_code == 200 and "message_stop" in r.text
        outside = {"model": "r", "messages": _user({"replay": "../../../etc/passwd"})}
        assert c.post(emulator + "/v1/messages", json=outside).status_code == 404
