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
