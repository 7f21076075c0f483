"""The front doors with the official SDKs as clients: every door against both protocols."""

from __future__ import annotations

import json
import uuid

import anthropic
import httpx
import openai
import pytest

from tests.e2e._client import directive

pytestmark = pytest.mark.e2e

BACKENDS = {"glm_task": "glm-4.6", "claude_task": "claude-sonnet-5-5"}
TOOL = {"type": "function", "function": {"name": "weather", "description": "by city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CLAUDE_TOOL = {"name": "weather", "description": "by city",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def say(spec: dict) -> str:  # type: ignore[type-arg]
    return uuid.uuid4().hex[:8] + "\n" + directive({"*": spec})


def last(emulator: str, model: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(f"{emulator}/_emulator/last/{model}").json()["body"]


@pytest.mark.parametrize("task", sorted(BACKENDS))
def test_openai_door_non_stream_and_stream(oai: openai.OpenAI, task: str) -> None:
    spec = {"text": "Four.", "reasoning": "Two plus two.", "input_tokens": 12, "output_tokens": 7}
    r = oai.chat.completions.create(model=task, messages=[{"role": "user", "content": say(spec)}])
    msg = r.choices[0].message
    assert msg.content == "Four." and r.choices[0].finish_reason == "stop" and r.model == BACKENDS[task]
    assert msg.model_extra["reasoning_content"] == "Two plus two."
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (12, 7)
    chunks = list(oai.chat.completions.create(model=task, messages=[{"role": "user", "content": say(spec)}],
                                              stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Four."
    assert "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                   for c in chunks if c.choices) == "Two plus two."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert {c.model for c in chunks} == {BACKENDS[task]}  # who answered, on every chunk


@pytest.mark.parametrize("task", sorted(BACKENDS))
def test_openai_door_tool_conversation(oai: openai.OpenAI, emulator: str, task: str) -> None:
    spec = {"tool_calls": [{"id": "call_one", "name": "weather", "arguments": {"city": "Oslo"}},
                           {"id": "call_two", "name": "weather", "arguments": {"city": "Rome"}}]}
    first = [{"role": "user", "content": say(spec)}]
    stream = oai.chat.completions.create(model=task, messages=first, tools=[TOOL], stream=True)  # type: ignore[list-item]
    calls: dict[int, dict[str, str]] = {}
    for c in stream:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            d = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            d["id"] = tc.id or d["id"]
            d["name"] = (tc.function.name if tc.function else None) or d["name"]
            d["arguments"] += (tc.function.arguments if tc.function else None) or ""
    assert [(c["id"], json.loads(c["arguments"])) for c in calls.values()] == \
        [("call_one", {"city": "Oslo"}), ("call_two", {"city": "Rome"})]
    second = first + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls.values()]},
        {"role": "tool", "tool_call_id": "call_one", "content": "5C"},
        {"role": "tool", "tool_call_id": "call_two", "content": "20C"},
    ]
    r = oai.chat.completions.create(model=task, messages=second, tools=[TOOL])  # type: ignore[arg-type]
    assert r.choices[0].finish_reason == "tool_calls"  # accepted and answered (the first turn's directive still rules)
    body = last(emulator, BACKENDS[task])
    if task == "glm_task":
        assert [m.get("tool_call_id") for m in body["messages"][2:]] == ["call_one", "call_two"]
        assert [tc["id"] for tc in body["messages"][1]["tool_calls"]] == ["call_one", "call_two"]
    else:
        assert [b["id"] for b in body["messages"][1]["content"] if b["type"] == "tool_use"] == ["call_one", "call_two"]
        assert [(b["tool_use_id"], b["content"]) for b in body["messages"][2]["content"]] == \
            [("call_one", "5C"), ("call_two", "20C")]


def test_openai_door_claude_thinking_signature_round_trip(oai: openai.OpenAI, emulator: str) -> None:
    spec = {"reasoning": "Let me think.", "text": "Answer."}
    r = oai.chat.completions.create(model="claude_task", messages=[{"role": "user", "content": say(spec)}],
                                    extra_body={"thinking": {"type": "enabled"}})
    sig = r.choices[0].message.model_extra["reasoning_signature"]
    assert sig
    history = [{"role": "user", "content": say(spec)},
               {"role": "assistant", "content": "Answer.", "reasoning_content": "Let me think.", "reasoning_signature": sig},
               {"role": "user", "content": "And then?"}]
    oai.chat.completions.create(model="claude_task", messages=history, extra_body={"thinking": {"type": "enabled"}})  # type: ignore[arg-type]
    sent = last(emulator, "claude-sonnet-5-5")["messages"][1]["content"][0]
    assert sent == {"type": "thinking", "thinking": "Let me think.", "signature": sig}


def test_openai_door_errors(oai: openai.OpenAI, router: str) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        oai.chat.completions.create(model="no_such_task", messages=[{"role": "user", "content": "hi"}])
    assert "glm_task" in nf.value.message
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="glm_task", messages=[])
    caller = {"x-caller": "door-" + uuid.uuid4().hex[:6]}
    oai.chat.completions.create(model="one_per_minute", messages=[{"role": "user", "content": "a"}], extra_headers=caller)
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="one_per_minute", messages=[{"role": "user", "content": "b"}], extra_headers=caller)
    with pytest.raises(openai.APIStatusError) as upstream:
        oai.chat.completions.create(model="glm_task", messages=[{"role": "user", "content": say({"status": 400})}])
    assert upstream.value.status_code == 502
    pinned = oai.chat.completions.create(model="glm/glm-4.5-air", messages=[{"role": "user", "content": say({"text": "p"})}])
    assert pinned.choices[0].message.content == "p"
    ids = [m.id for m in oai.models.list()]
    assert "glm_task" in ids and "claude/claude-sonnet-5-5" in ids


@pytest.mark.parametrize("task", sorted(BACKENDS))
def test_anthropic_door(ant: anthropic.Anthropic, task: str) -> None:
    spec = {"text": "Hello there.", "reasoning": "Greeting.", "input_tokens": 9, "output_tokens": 4}
    m = ant.messages.create(model=task, max_tokens=2048, messages=[{"role": "user", "content": say(spec)}],
                            thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == "Greeting." and m.content[1].text == "Hello there."
    assert bool(m.content[0].signature) == (task == "claude_task")  # GLM reasoning carries no signature
    assert m.stop_reason == "end_turn" and m.usage.output_tokens == 4
    with ant.messages.stream(model=task, max_tokens=2048, messages=[{"role": "user", "content": say(spec)}],
                             thinking={"type": "enabled", "budget_tokens": 1024}) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[1].text == "Hello there." and final.usage.output_tokens == 4


@pytest.mark.parametrize("task", sorted(BACKENDS))
def test_anthropic_door_tool_conversation(ant: anthropic.Anthropic, emulator: str, task: str) -> None:
    spec = {"text": "Checking.", "tool_calls": [{"id": "toolu_a", "name": "weather", "arguments": {"city": "Oslo"}}]}
    first = [{"role": "user", "content": say(spec)}]
    with ant.messages.stream(model=task, max_tokens=512, tools=[CLAUDE_TOOL], messages=first) as s:  # type: ignore[list-item]
        turn = s.get_final_message()
    tool = [b for b in turn.content if b.type == "tool_use"][0]
    assert (tool.id, tool.input, turn.stop_reason) == ("toolu_a", {"city": "Oslo"}, "tool_use")
    second = first + [{"role": "assistant", "content": [b.model_dump() for b in turn.content]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "5C"}]}]
    reply = ant.messages.create(model=task, max_tokens=512, tools=[CLAUDE_TOOL], messages=second)  # type: ignore[arg-type]
    assert reply.content
    body = last(emulator, BACKENDS[task])
    if task == "glm_task":
        assert body["messages"][1]["tool_calls"][0]["id"] == "toolu_a"
        assert body["messages"][2] == {"role": "tool", "content": "5C", "tool_call_id": "toolu_a"}
    else:
        assert body["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": "toolu_a", "content": "5C"}


def test_anthropic_door_errors(ant: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        ant.messages.create(model="no_such_task", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    caller = {"x-caller": "door-" + uuid.uuid4().hex[:6]}
    ant.messages.create(model="one_per_minute", max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_headers=caller)
    with pytest.raises(anthropic.RateLimitError):
        ant.messages.create(model="one_per_minute", max_tokens=5, messages=[{"role": "user", "content": "y"}],
                            extra_headers=caller)
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.create(model="glm_task", max_tokens=5, messages=[{"role": "robot", "content": "x"}])  # type: ignore[typeddict-item]


def test_api_chat_contract(router: str) -> None:
    with httpx.Client(timeout=10) as c:
        r = c.post(router + "/api/chat", json={"messages": [{"role": "user", "content": say({"text": "a b c"})}]})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.text.split("\n\n") if line]
        assert lines[-1] == 'data: {"data": "[DONE]"}'
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        assert "".join(ch["choices"][0]["delta"]["content"] for ch in chunks) == "a b c"
        assert all(set(ch) == {"choices", "model", "created"} and ch["model"] == "glm-4.6" for ch in chunks)
        assert lines[0].startswith('data: {"choices": [{"delta": {"content": ')  # json.dumps spacing, as the backend
        whole = c.post(router + "/api/chat", json={"stream": False, "model": "claude_task",
                                                   "messages": [{"role": "user", "content": say({"text": "x"})}]})
        assert whole.json()["choices"][0]["message"]["content"] == "x" and whole.json()["object"] == "chat.completion"
        assert whole.json()["router"]["provider"] == "claude"
        other = c.post(router + "/api/chat", json={"stream": False, "model": "glm-4.6",  # not a task: the chat task
                                                   "messages": [{"role": "user", "content": say({"text": "y"})}]})
        assert other.json()["router"]["model"] == "glm-4.6" and other.json()["model"] == "glm-4.6"
        empty = c.post(router + "/api/chat", json={"messages": []})
        assert empty.status_code == 400 and empty.json() == {"detail": "Messages array is required and cannot be empty"}
        health = c.get(router + "/health").json()
        assert health["status"] == "healthy" and "timestamp" in health


@pytest.mark.parametrize("task", sorted(BACKENDS))
def test_cut_stream_raises_in_both_sdks(oai: openai.OpenAI, ant: anthropic.Anthropic, task: str) -> None:
    spec = {"text": "one two three four five six", "cut_after": 4}
    with pytest.raises(openai.APIError):
        for _ in oai.chat.completions.create(model=task, stream=True,
                                             messages=[{"role": "user", "content": say(spec)}]):
            pass
    with pytest.raises(anthropic.APIStatusError):
        with ant.messages.stream(model=task, max_tokens=64, messages=[{"role": "user", "content": say(spec)}]) as s:
            s.get_final_message()


def test_redacted_thinking_round_trip_through_the_anthropic_door(ant: anthropic.Anthropic, emulator: str) -> None:
    replay = {"replay": "anthropic/redacted-thinking-text.sonnet-4-5.sse"}
    first = [{"role": "user", "content": say(replay)}]
    with ant.messages.stream(model="claude_task", max_tokens=1024, messages=first) as s:
        turn = s.get_final_message()
    redacted = [b for b in turn.content if b.type == "redacted_thinking"]
    assert len(redacted) == 2 and all(len(b.data) > 100 for b in redacted)
    second = first + [{"role": "assistant", "content": [b.model_dump() for b in turn.content]},
                      {"role": "user", "content": "Go on."}]
    with ant.messages.stream(model="claude_task", max_tokens=64, messages=second) as s:  # type: ignore[arg-type]
        s.get_final_message()  # the first turn's directive still replays the recording
    sent = last(emulator, "claude-sonnet-5-5")["messages"][1]["content"]
    assert [b["data"] for b in sent if b["type"] == "redacted_thinking"] == [b.data for b in redacted]


def _raw_http(router: str, data: bytes, wait: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection; the first response (head and ``content-length`` body),
    or what came before the server closed the connection or ``wait`` seconds passed."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(router)
    with socket.create_connection((u.hostname, u.port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                head, sep, body = out.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if sep and length is not None and len(body) >= length:
                    break
        except TimeoutError:
            pass
        return out


def test_slow_clients_get_408_and_an_oversized_expect_100_gets_413_at_once(router: str) -> None:
    """The session router reads headers and bodies within READ_TIMEOUT (0.25 s)."""
    import time

    from tests.e2e.conftest import READ_TIMEOUT

    t0 = time.monotonic()
    late_headers = _raw_http(router, b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n")
    assert late_headers.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in late_headers
    assert READ_TIMEOUT - 0.05 <= time.monotonic() - t0 < READ_TIMEOUT + 3
    late_body = _raw_http(router, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                                  b"content-length: 100\r\n\r\n{\"model\": \"glm_task\",")
    assert late_body.startswith(b"HTTP/1.1 408 ") and b'"code":"request_timeout"' in late_body  # OpenAI shape
    big = _raw_http(router, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                            b"expect: 100-continue\r\ncontent-length: 52428800\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in big
    assert b'"type":"request_too_large"' in big  # the Anthropic door's error shape
