"""Python client libraries nobody here wrote, against the session router over a real socket:
LangChain's ChatOpenAI and ChatAnthropic, LiteLLM's SDK, pydantic-ai's OpenAI and Anthropic models
(its structured output through a strict tool)."""

from __future__ import annotations

import asyncio
import gc
import sys
import uuid
import warnings
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from tests.e2e._client import directive

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _release_clients() -> Iterator[None]:
    """These libraries keep HTTP clients in module caches and close them only when collected: drop
    them here, so no unclosed socket is reported in a later test."""
    yield
    litellm = sys.modules.get("litellm")
    if litellm is not None:
        litellm.in_memory_llm_clients_cache.flush_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def say(spec: dict) -> str:  # type: ignore[type-arg]
    return uuid.uuid4().hex[:8] + "\n" + directive({"*": spec})


def test_langchain_chat_openai_and_chat_anthropic(router: str) -> None:
    from langchain_anthropic import ChatAnthropic
    from langchain_openai import ChatOpenAI

    oai = ChatOpenAI(base_url=router + "/v1", api_key="unused", model="glm_task", max_retries=0)  # type: ignore[arg-type]
    assert oai.invoke(say({"text": "Four."})).content == "Four."
    assert "".join(str(c.content) for c in oai.stream(say({"text": "one two"}))) == "one two"
    weather = {"type": "function", "function": {"name": "weather", "description": "by city",
                                                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    msg = oai.bind_tools([weather]).invoke(say({"tool_calls": [{"id": "call_1", "name": "weather", "arguments": {"city": "Oslo"}}]}))
    assert msg.tool_calls[0]["name"] == "weather" and msg.tool_calls[0]["args"] == {"city": "Oslo"}  # type: ignore[attr-defined]
    ant = ChatAnthropic(base_url=router, api_key="unused", model="claude_task", max_retries=0)  # type: ignore[call-arg,arg-type]
    assert ant.invoke(say({"text": "Hi from Claude."})).content == "Hi from Claude."


def test_litellm_sdk(router: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its bundled price map, not the network
    import litellm

    r = litellm.completion(model="openai/glm_task", api_base=router + "/v1", api_key="unused",
                           messages=[{"role": "user", "content": say({"text": "Four."})}])
    assert r.choices[0].message.content == "Four."  # type: ignore[union-attr]
    chunks = litellm.completion(model="openai/claude_task", api_base=router + "/v1", api_key="unused", stream=True,
                                messages=[{"role": "user", "content": say({"text": "a b"})}])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a b"  # type: ignore[union-attr]
    a = litellm.completion(model="anthropic/claude_task", api_base=router, api_key="unused", max_tokens=32,
                           messages=[{"role": "user", "content": say({"text": "via anthropic"})}])
    assert a.choices[0].message.content == "via anthropic"  # type: ignore[union-attr]


class City(BaseModel):
    city: str
    temp: float


def test_pydantic_ai_agents_text_and_structured_output(router: str) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.anthropic import AnthropicProvider
    from pydantic_ai.providers.openai import OpenAIProvider

    async def go() -> None:
        oai = OpenAIChatModel("glm_task", provider=OpenAIProvider(base_url=router + "/v1", api_key="unused"))
        assert (await Agent(oai).run(say({"text": "Four."}))).output == "Four."
        structured = await Agent(oai, output_type=City).run(say({"tool_calls": [
            {"id": "call_1", "name": "final_result", "arguments": {"city": "Oslo", "temp": 3}}]}))
        assert structured.output == City(city="Oslo", temp=3)
        ant = AnthropicModel("claude_task", provider=AnthropicProvider(base_url=router, api_key="unused"))
        assert (await Agent(ant).run(say({"text": "Hi."}))).output == "Hi."

    asyncio.run(go())


PNG = "data:image/png;base64,iVBORw0KGgo="
SEEN = "I see 1 image(s) or document(s) (the claude-sonnet-5-5 emulator)."


def test_langchain_streams_tools_thinking_and_images(router: str) -> None:
    from langchain_anthropic import ChatAnthropic
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    weather = {"type": "function", "function": {"name": "weather", "description": "by city",
                                                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    oai = ChatOpenAI(base_url=router + "/v1", api_key="unused", model="claude_task", max_retries=0)  # type: ignore[arg-type]
    ask = HumanMessage(say({"tool_calls": [{"id": "call_7", "name": "weather", "arguments": {"city": "Oslo"}}]}))
    chunks = list(oai.bind_tools([weather]).stream([ask]))
    turn = chunks[0]
    for c in chunks[1:]:
        turn += c  # type: ignore[assignment]
    assert [(t["id"], t["args"]) for t in turn.tool_calls] == [("call_7", {"city": "Oslo"})]  # type: ignore[attr-defined]
    done = oai.bind_tools([weather]).invoke([ask, turn, ToolMessage(say({"text": "Cold."}), tool_call_id="call_7")])
    assert done.content == "Cold."
    seen = oai.invoke([HumanMessage(content=[{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": PNG}}])])
    assert seen.content == SEEN
    ant = ChatAnthropic(base_url=router, api_key="unused", model="claude_task", max_retries=0,  # type: ignore[call-arg,arg-type]
                        max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024})
    blocks = ant.invoke(say({"reasoning": "Let me see.", "text": "Seen."})).content
    assert [b["type"] for b in blocks] == ["thinking", "text"] and blocks[0]["signature"]  # type: ignore[index]
    streamed = "".join(b.get("text", "") for c in ant.stream(say({"reasoning": "Hm.", "text": "a b c"}))
                       for b in (c.content if isinstance(c.content, list) else []) if isinstance(b, dict))
    assert streamed == "a b c"


def test_litellm_tools_streamed_and_reasoning(router: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    weather = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    chunks = list(litellm.completion(model="openai/glm_task", api_base=router + "/v1", api_key="unused", stream=True, tools=[weather],
                                     messages=[{"role": "user", "content": say({"tool_calls": [
                                         {"id": "call_3", "name": "weather", "arguments": {"city": "Rome"}}]})}]))
    args = "".join(tc.function.arguments or "" for c in chunks for tc in (c.choices[0].delta.tool_calls or []))  # type: ignore[union-attr]
    assert args.replace(" ", "") == '{"city":"Rome"}'
    r = litellm.completion(model="openai/glm_task", api_base=router + "/v1", api_key="unused",
                           messages=[{"role": "user", "content": say({"reasoning": "Think.", "text": "Done."})}])
    assert (r.choices[0].message.content, r.choices[0].message.reasoning_content) == ("Done.", "Think.")  # type: ignore[union-attr]


def test_pydantic_ai_tool_round_trips_and_streams(router: str) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.anthropic import AnthropicProvider
    from pydantic_ai.providers.openai import OpenAIProvider

    async def go() -> None:
        models = [OpenAIChatModel("glm_task", provider=OpenAIProvider(base_url=router + "/v1", api_key="unused")),
                  AnthropicModel("claude_task", provider=AnthropicProvider(base_url=router, api_key="unused"))]
        for model in models:
            agent = Agent(model)
            calls: list[str] = []

            @agent.tool_plain
            def weather(city: str) -> str:
                calls.append(city)
                return "-3C\n" + directive({"*": {"text": f"It is -3C in {city}."}})  # the next turn's script

            got = await agent.run(say({"tool_calls": [{"id": "call_5", "name": "weather", "arguments": {"city": "Oslo"}}]}))
            assert calls == ["Oslo"] and got.output == "It is -3C in Oslo."
            async with Agent(model).run_stream(say({"text": "one two three"})) as s:
                assert "".join([d async for d in s.stream_text(delta=True)]) == "one two three"

    asyncio.run(go())
