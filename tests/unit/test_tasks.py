"""POST /v1/tasks through the whole pipeline, in process: the Litestar app over the in-process
transport to the emulator, on a fake clock (``tests.unit._app``), with the e2e suite's routing
config. (Moved from the e2e suite; the check that the router process never logs a key stays there.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from httpx_sse import EventSource

from tests.e2e._client import answer_fields, ask, fold_events
from tests.e2e.conftest import SECRET_ANTHROPIC, SECRET_ZAI, routing_yaml
from tests.unit._app import InProcess, app

YAML = routing_yaml("http://emulator")


def run(test: Callable[[InProcess], Awaitable[None]]) -> None:
    async def go() -> None:
        async with app(YAML, TEST_ZAI_KEY=SECRET_ZAI, TEST_ANTHROPIC_KEY=SECRET_ANTHROPIC) as a:
            await test(a)

    asyncio.run(go())


async def stream_events(a: InProcess, body: dict[str, Any],
                        headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """``tests.e2e._client.stream_events`` over the in-process client: every SSE message's data,
    after checking event name == data.type, the seq numbers and the one terminal event."""
    out = []
    async with a.client.stream("POST", "/v1/tasks", json={**body, "stream": True},
                               headers={"accept": "text/event-stream", **(headers or {})}) as response:
        es = EventSource(response)
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for sse in es.aiter_sse():
            data = json.loads(sse.data)
            assert data["type"] == sse.event
            out.append(data)
    assert [e["seq"] for e in out] == list(range(len(out)))
    assert sum(e["type"] in ("end", "error") for e in out) == 1 and out[-1]["type"] in ("end", "error")
    return out


SCENARIOS = {
    "text": {"text": "The sky is blue because of Rayleigh scattering.", "input_tokens": 40, "output_tokens": 12},
    "reasoning": {"reasoning": "Light scatters; short wavelengths more.", "text": "Rayleigh scattering.",
                  "input_tokens": 30, "output_tokens": 25},
    "tools": {"text": "Checking both.", "tool_calls": [
        {"id": "call_a", "name": "weather", "arguments": {"city": "Oslo"}},
        {"id": "call_b", "name": "weather", "arguments": {"city": "Rome"}}]},
    "tool_no_args": {"tool_calls": [{"id": "call_c", "name": "now"}]},
    "length": {"text": "Cut sh", "finish_reason": "length"},
}
TASKS = {"glm_task": ("glm", "glm-4.6"), "claude_task": ("claude", "claude-sonnet-5-5"), "oai_task": ("oai", "gpt-4o")}


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_stream_and_non_stream_agree(task: str, scenario: str) -> None:
    async def t(a: InProcess) -> None:
        body = {"task": task, "messages": ask("Why is the sky blue?", {"*": SCENARIOS[scenario]})}
        events = await stream_events(a, body)
        r = await a.client.post("/v1/tasks", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert fold_events(events) == answer_fields(answer)
        provider, model = TASKS[task]
        assert (answer["provider"], answer["model"], answer["task"]) == (provider, model, task)
        assert events[0]["type"] == "start" and events[0]["attempt"] == 1 and events[0]["id"].startswith("req_")
        spec = SCENARIOS[scenario]
        assert answer["text"] == spec.get("text", "")
        assert [json.loads(t["function"]["arguments"]) for t in answer["tool_calls"]] == \
            [t.get("arguments", {}) for t in spec.get("tool_calls", [])]
        assert [t["id"] for t in answer["tool_calls"]] == [t["id"] for t in spec.get("tool_calls", [])]
        assert answer["finish_reason"] == spec.get("finish_reason", "tool_calls" if "tool_calls" in spec else "stop")
        assert answer["attempts"] == [{"target": f"{provider}/{model}", "outcome": "ok",
                                       "latency_ms": answer["attempts"][0]["latency_ms"], "retries": 0}] or \
            answer["attempts"][0]["outcome"] == "ok"

    run(t)


def test_reasoning_and_cost() -> None:
    async def t(a: InProcess) -> None:
        spec = {"*": {"reasoning": "think", "text": "ok", "input_tokens": 1_000_000, "output_tokens": 1_000_000}}
        glm = (await a.client.post("/v1/tasks", json={"task": "glm_task", "messages": ask("q", spec)})).json()
        assert glm["reasoning"] == "think" and glm["reasoning_signature"] is None
        assert glm["usage"]["cost_usd"] == pytest.approx(0.60 + 2.20)  # USD per 1M in and out
        claude = (await a.client.post("/v1/tasks", json={"task": "claude_task", "thinking": True,
                                                         "messages": ask("q", spec)})).json()
        assert claude["reasoning"] == "think" and claude["reasoning_signature"]
        assert claude["usage"]["cost_usd"] == pytest.approx(3.00 + 15.00)
        unpriced = (await a.client.post("/v1/tasks", json={"task": "oai_task", "messages": ask("q", spec)})).json()
        assert unpriced["usage"]["cost_usd"] == 0

    run(t)


def test_wire_bodies_sent_upstream() -> None:
    """What the router put on the wire: params merged, GLM thinking, Anthropic system and tools."""
    async def t(a: InProcess) -> None:
        call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
        history = [{"role": "system", "content": "Be brief."}, *ask("Weather?", {"*": {"text": "5C in Oslo."}}),
                   {"role": "assistant", "content": None, "tool_calls": [call]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "5C"}]
        tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
        for task, model in (("glm_task", "glm-4.6"), ("claude_task", "claude-sonnet-5-5")):
            r = await a.client.post("/v1/tasks", json={"task": task, "messages": history, "tools": tools,
                                                       "thinking": True, "stream": True})
            assert r.status_code == 200 and '"finish_reason":"stop"' in r.text
            seen = a.emulator.last[model]
            body = seen["body"]
            if task == "glm_task":
                assert seen["path"] == "/api/paas/v4/chat/completions"
                assert body["thinking"] == {"type": "enabled"} and body["max_tokens"] == 256
                assert body["temperature"] == 0.3  # the task's params
                assert body["messages"][2]["tool_calls"][0]["type"] == "function"
                assert body["messages"][3] == {"role": "tool", "content": "5C", "tool_call_id": "call_1"}
            else:
                assert seen["path"] == "/v1/messages"
                assert seen["headers"]["anthropic-version"] == "2023-06-01"
                assert body["system"] == "Be brief." and body["thinking"]["type"] == "enabled"
                assert body["messages"][1]["content"][0]["type"] == "tool_use"
                assert body["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": "call_1",
                                                             "content": "5C"}

    run(t)


def test_unusable_target_is_skipped_with_a_reason() -> None:
    async def t(a: InProcess) -> None:
        events = await stream_events(a, {"task": "quick_summary", "messages": ask("hi")})
        assert events[0] == {"type": "fallback", "seq": 0, "from": "nokey/claude-haiku-5-5",
                             "to": "glm/glm-4.5-air", "reason": "unusable"}
        assert events[1]["type"] == "start" and events[1]["model"] == "glm-4.5-air"
        assert events[-1]["type"] == "end"
        r = await a.client.post("/v1/tasks", json={"task": "nothing_usable", "messages": ask("hi")})
        assert r.status_code == 503
        err = r.json()["error"]
        assert err["type"] == "all_targets_failed"
        assert err["attempts"][0]["outcome"] == "skipped"
        assert "TEST_UNSET_KEY_VARIABLE is not set" in err["attempts"][0]["message"]

    run(t)


def test_cut_stream_ends_with_error_never_end() -> None:
    async def t(a: InProcess) -> None:
        for task in ("glm_task", "claude_task"):
            spec = {"*": {"text": "one two three four five six seven", "cut_after": 4}}
            events = await stream_events(a, {"task": task, "messages": ask("hi", spec)})
            assert events[-1]["type"] == "error" and events[-1]["code"] == "stream_truncated"
            assert not any(e["type"] == "end" for e in events)
            r = await a.client.post("/v1/tasks", json={"task": task, "messages": ask("hi", spec)})
            assert r.status_code == 502

    run(t)


@pytest.mark.parametrize("task", ["glm_task", "claude_task"])
def test_midstream_error_event_and_malformed_chunk(task: str) -> None:
    async def t(a: InProcess) -> None:
        code = "overloaded_error" if task == "claude_task" else "1305"
        for spec, expect in (({"text": "a b c d e f", "cut_after": 4, "error_code": code}, code),
                             ({"text": "a b c d e f", "malformed": 4}, "malformed_chunk")):
            events = await stream_events(a, {"task": task, "messages": ask("hi", {"*": spec})})
            assert events[0]["type"] == "start"
            assert events[-1]["type"] == "error" and events[-1]["code"] == expect

    run(t)


def test_upstream_error_status_before_any_event() -> None:
    async def t(a: InProcess) -> None:
        spec = {"*": {"status": 429, "error_code": "1113"}}
        r = await a.client.post("/v1/tasks", json={"task": "glm_task", "messages": ask("hi", spec)})
        assert r.status_code == 502
        attempt = r.json()["error"]["attempts"][0]
        assert (attempt["outcome"], attempt["code"], attempt["status"]) == ("error", "1113", 429)
        s = await a.client.post("/v1/tasks", json={"task": "glm_task", "messages": ask("hi", spec), "stream": True})
        assert s.status_code == 502 and s.json()["error"]["type"] == "all_targets_failed"  # headers wait for a commit

    run(t)


BAD = [
    (b'{"task": "glm_task", "messages": [', 400, None),
    (b'[1, 2]', 400, None),
    (json.dumps({"task": "glm_task"}).encode(), 400, "messages"),
    (json.dumps({"task": "glm_task", "messages": "hi"}).encode(), 400, "messages"),
    (json.dumps({"task": "glm_task", "messages": [{"role": "user", "content": 5}]}).encode(), 400, "messages[0].content"),
    (json.dumps({"task": "glm_task", "messages": ask("x"), "max_tokens": "lots"}).encode(), 400, "max_tokens"),
    (json.dumps({"task": "glm_task", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "r"}]}).encode(),
     400, "messages[0].tool_call_id"),
    (json.dumps({"task": "no_such_task", "messages": ask("x")}).encode(), 404, "task"),
]


@pytest.mark.parametrize(("body", "status", "path"), BAD)
def test_bad_input(body: bytes, status: int, path: str | None) -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status
        err = r.json()["error"]
        assert set(err) >= {"type", "message"} and err.get("path") == path
        if status == 404:
            assert "glm_task" in err["message"] and "quick_summary" in err["message"]

    run(t)


def test_body_too_large() -> None:
    async def t(a: InProcess) -> None:
        big = json.dumps({"task": "glm_task", "messages": ask("x" * (5 * 1024 * 1024))}).encode()
        r = await a.client.post("/v1/tasks", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

    run(t)
