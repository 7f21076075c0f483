"""Door -> plan -> chain -> adapter -> door, in process: the Litestar app over the in-process
transport to the emulator, on a fake clock (``tests.unit._app``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from router.doors.anthropic import AnthropicDoor
from router.doors.native import NativeDoor
from router.doors.openai import OpenAIDoor
from router.doors.zchat import ChatDoor
from tests.unit._app import YAML, InProcess, app, say, sse


def run(test: Callable[[InProcess], Awaitable[None]], yaml_text: str = YAML, **kw: Any) -> None:
    async def go() -> None:
        async with app(yaml_text, **kw) as a:
            await test(a)

    asyncio.run(go())


def test_every_door_streams_and_folds() -> None:
    async def t(a: InProcess) -> None:
        c = a.client
        r = await c.post("/v1/tasks", json={"task": "t", "stream": True, "messages": say({"*": {"text": "one two"}})})
        evs = sse(r.text)
        assert evs[0]["type"] == "start" and evs[-1] == {"type": "end", "finish_reason": "stop", "seq": len(evs) - 1}
        assert "".join(e["text"] for e in evs if e["type"] == "text.delta") == "one two"
        r = await c.post("/v1/tasks", json={"task": "t", "messages": say({"*": {"text": "folded"}})})
        assert r.json()["text"] == "folded" and r.json()["provider"] == "glm" and r.json()["attempts"][0]["outcome"] == "ok"
        r = await c.post("/v1/chat/completions", json={"model": "t", "messages": say({"*": {"text": "oa"}})})
        assert r.json()["choices"][0]["message"]["content"] == "oa"
        r = await c.post("/v1/chat/completions", json={"model": "t", "stream": True, "messages": say({"*": {"text": "oa"}})})
        assert r.text.rstrip().endswith("data: [DONE]")
        r = await c.post("/v1/messages", json={"model": "t", "max_tokens": 10, "messages": say({"*": {"text": "an"}})})
        assert r.json()["content"] == [{"type": "text", "text": "an"}]
        r = await c.post("/v1/messages", json={"model": "t", "max_tokens": 10, "stream": True, "messages": say()})
        assert "event: message_stop" in r.text
        r = await c.post("/api/chat", json={"messages": say({"*": {"text": "z"}})})
        assert r.text.rstrip().endswith('data: {"data": "[DONE]"}')

    run(t)


def test_fallback_retry_and_first_token_timeout_take_no_real_time() -> None:
    async def t(a: InProcess) -> None:
        t0, c0 = time.perf_counter(), a.clock.now()
        r = await a.client.post("/v1/tasks", json={"task": "t", "messages": say({"glm-4.6": {"hang": True}, "*": {"text": "late"}})})
        assert r.status_code == 200 and r.json()["text"] == "late" and r.json()["provider"] == "claude"
        glm = r.json()["attempts"][0]
        # non-streamed too: the upstream call streams, so the first-token deadline holds, and a
        # silent target is not retried
        assert glm["code"] == "first_token_timeout" and glm["retries"] == 0
        assert 30 <= a.clock.now() - c0 < 31 and time.perf_counter() - t0 < 5
        r = await a.client.post("/v1/tasks", json={"task": "t", "stream": True,
                                                   "messages": say({"glm-4.6": {"hang": True}, "*": {"text": "s"}})})
        evs = sse(r.text)
        assert evs[0] == {"type": "fallback", "from": "glm/glm-4.6", "to": "claude/claude-sonnet-5-5",
                          "reason": "first_token_timeout", "seq": 0}
        a.clock.advance(31)  # the two timeouts leave the cooldown window (a third failure would trip it)
        r = await a.client.post("/v1/tasks", json={"task": "t", "messages": say({"glm-4.6": {"status": 429, "retry_after": 2, "times": 1}})})
        assert r.json()["provider"] == "glm" and r.json()["attempts"][0]["retries"] == 1 and 2 in a.clock.sleeps

    run(t)


def test_midstream_failures_end_with_error_or_restart() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", json={"task": "t", "stream": True,
                                                   "messages": say({"glm-4.6": {"text": "a b c d", "cut_after": 2}})})
        evs = sse(r.text)
        assert evs[-1]["type"] == "error" and evs[-1]["code"] == "stream_truncated"
        assert not any(e["type"] == "end" for e in evs)
        assert evs[-1]["attempts"][0]["outcome"] == "error"
        r = await a.client.post("/v1/tasks", json={"task": "restart", "stream": True,
                                                   "messages": say({"glm-4.6": {"text": "a b c d", "cut_after": 2},
                                                                    "*": {"text": "again"}})})
        evs = sse(r.text)
        assert [e["type"] for e in evs].count("start") == 2 and evs[-1]["type"] == "end"
        r = await a.client.post("/v1/tasks", json={"task": "t", "stream": True,
                                                   "messages": say({"glm-4.6": {"text": "a b c d", "chunk_delay_ms": 20000}})})
        evs = sse(r.text)  # a 20 s stall past the 10 s idle timeout, after commit: an error, no fallback
        assert evs[-1]["type"] == "error" and evs[-1]["code"] == "idle_timeout"
        assert not any(e["type"] == "fallback" for e in evs)

    run(t)


def test_405_404_and_500_carry_the_request_id_in_the_door_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    async def t(a: InProcess) -> None:
        c = a.client
        r = await c.get("/v1/chat/completions", headers={"x-request-id": "abc-1"})
        assert r.status_code == 405 and r.headers["x-request-id"] == "abc-1" and r.headers["allow"] == "POST"
        assert r.json()["error"]["type"] == "invalid_request_error" or r.json()["error"]["message"]
        assert set(r.json()["error"]) >= {"message", "type", "param", "code"}  # OpenAI's envelope
        r = await c.get("/v1/messages")
        assert r.status_code == 405 and r.json()["type"] == "error" and r.headers["x-request-id"].startswith("req_")
        r = await c.get("/api/chat")
        assert r.status_code == 405 and "detail" in r.json()
        r = await c.get("/v1/tasks")
        assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
        r = await c.get("/healthz", headers={"x-request-id": "ok-2"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "ok-2"
        r = await c.get("/schema/openapi.json")
        assert r.headers["x-request-id"].startswith("req_")
        r = await c.get("/nowhere")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error" and "x-request-id" in r.headers

        def broken(self: Any, answer: Any, req: Any, opts: Any) -> bytes:
            raise RuntimeError("secret-detail")

        monkeypatch.setattr(OpenAIDoor, "answer", broken)
        r = await c.post("/v1/chat/completions", json={"model": "t", "messages": say()})
        assert r.status_code == 500 and r.json()["error"]["message"] == "internal error"
        assert "secret-detail" not in r.text and r.headers["x-request-id"].startswith("req_")

    run(t)


@pytest.mark.parametrize(("door", "path", "body", "terminal"), [
    (NativeDoor, "/v1/tasks", {"task": "t"},
     lambda last: last.startswith("event: error\n") and json.loads(last.split("data: ", 1)[1])["code"] == "internal_error"),
    (OpenAIDoor, "/v1/chat/completions", {"model": "t"},
     lambda last: json.loads(last.removeprefix("data: "))["error"]["message"] == "internal error"),
    (AnthropicDoor, "/v1/messages", {"model": "t", "max_tokens": 50},
     lambda last: last.startswith("event: error\n") and json.loads(last.split("data: ", 1)[1])["type"] == "error"),
    (ChatDoor, "/api/chat", {},
     lambda last: json.loads(last.removeprefix("data: "))["error"]["type"] == "streaming_error"),
])
def test_an_encoder_failure_after_the_start_ends_with_the_doors_error_event(
        monkeypatch: pytest.MonkeyPatch, door: Any, path: str, body: dict[str, Any], terminal: Any) -> None:
    real = door.stream

    async def breaks(self: Any, events: Any, req: Any, opts: Any) -> Any:
        n = 0
        async for chunk in real(self, events, req, opts):
            n += 1
            if n == 3:
                raise RuntimeError("encoder bug")
            yield chunk

    async def t(a: InProcess) -> None:
        monkeypatch.setattr(door, "stream", breaks)
        r = await a.client.post(path, json={**body, "stream": True, "messages": say({"*": {"text": "a b c d e f"}})})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in r.text.split("\n\n") if b.strip()]
        assert len(blocks) >= 3 and terminal(blocks[-1]), blocks  # two chunks, then the terminal error: one start
        assert "[DONE]" not in r.text and "message_stop" not in r.text and "event: end" not in r.text

    run(t)


CORS_YAML = YAML + """
cors: {allow_origins: ["http://localhost:3000"]}
"""


def test_cors_preflight_and_headers_on_every_door() -> None:
    async def t(a: InProcess) -> None:
        origin = {"origin": "http://localhost:3000"}
        r = await a.client.options("/api/chat", headers={**origin, "access-control-request-method": "POST",
                                                          "access-control-request-headers": "content-type"})
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "POST" in r.headers["access-control-allow-methods"]
        for path, body in (("/api/chat", {"messages": say()}), ("/v1/tasks", {"task": "t", "stream": True, "messages": say()}),
                           ("/v1/chat/completions", {"model": "t", "messages": say()})):
            r = await a.client.post(path, json=body, headers=origin)
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
            assert "x-request-id" in r.headers["access-control-expose-headers"]
        r = await a.client.post("/v1/tasks", json={"task": "t", "messages": say()}, headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers

    run(t, CORS_YAML)


def test_no_cors_without_the_key() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.options("/api/chat", headers={"origin": "http://localhost:3000",
                                                          "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in r.headers

    run(t)


DEEP = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize("path,body,check", [
    ("/v1/tasks", '{"task":"t","messages":[{"role":"user","content":"x"}],"tools":[{"function":{"name":"f",'
     '"parameters":{"a":' + DEEP + "}}}]}",
     lambda j: j["error"]["path"] == "tools[0].function.parameters.a[0]..."),
    ("/v1/chat/completions", '{"model":"t","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function",'
     '"function":{"name":"f","parameters":{"p":' + DEEP + "}}}]}",
     lambda j: j["error"]["param"].startswith("tools[0].function.parameters.p")),
    ("/v1/messages", '{"model":"t","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"f",'
     '"input_schema":{"p":' + DEEP + "}}]}",
     lambda j: j["error"]["message"].startswith("tools[0].input_schema.p")),
    ("/api/chat", '{"messages":[{"role":"user","content":"x"}],"model":' + DEEP + "}",
     lambda j: j["detail"].startswith("model")),
])
def test_nesting_past_the_limit_is_a_400_naming_the_field(path: str, body: str, check: Any) -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and check(r.json()), r.text

    run(t)


def test_door_400s_name_the_field_in_their_own_shape() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/messages", json={"model": "t", "max_tokens": "x", "messages": say()})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("max_tokens: ")
        r = await a.client.post("/v1/messages", json={"model": "t", "max_tokens": 5, "messages": say(),
                                                     "tools": [{"name": "f", "input_schema": {}}],
                                                     "tool_choice": {"type": "tool", "name": "g"}})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("tool_choice.name: "), r.text
        r = await a.client.post("/v1/messages", json={"model": "t", "max_tokens": 5, "messages": say(),
                                                     "stop_sequences": [1]})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("stop_sequences"), r.text
        r = await a.client.post("/api/chat", json={"messages": [{"role": "user", "content": 5}]})
        assert r.status_code == 400 and "messages[0].content" in r.json()["detail"]
        for value in (0, -1):
            r = await a.client.post("/v1/chat/completions", json={"model": "t", "max_completion_tokens": value,
                                                                 "messages": say()})
            assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
        r = await a.client.post("/v1/chat/completions", json={"model": "t", "max_completion_tokens": "many",
                                                             "messages": say()})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"

    run(t)


def test_the_callers_slot_is_refunded_when_nothing_was_served() -> None:
    async def t(a: InProcess) -> None:
        bad = {"task": "limited", "messages": say({"*": {"status": 400}})}
        for _ in range(3):  # rpm 2: refused answers give their slot back
            r = await a.client.post("/v1/tasks", json=bad)
            assert r.status_code == 502
        ok = [await a.client.post("/v1/tasks", json={"task": "limited", "messages": say()}) for _ in range(3)]
        assert [r.status_code for r in ok] == [200, 200, 429]
        assert ok[2].headers["retry-after"] and ok[2].json()["error"]["type"] == "rate_limit_error"

    run(t)


def test_cache_hit_replays_and_counts_once() -> None:
    async def t(a: InProcess) -> None:
        body = {"task": "cached", "messages": say({"*": {"text": "kept"}})}
        first = await a.client.post("/v1/tasks", json=body)
        second = await a.client.post("/v1/tasks", json={**body, "stream": True})
        assert first.json()["cached"] is False and first.json()["text"] == "kept"
        evs = sse(second.text)
        assert evs[0]["cached"] is True and "".join(e.get("text", "") for e in evs if e["type"] == "text.delta") == "kept"
        assert a.emulator.stats["claude-sonnet-5-5"]["requests"] == 1

    run(t)


def test_a_caller_that_leaves_mid_stream_is_charged_for_what_upstream_did() -> None:
    """The engine stream closes before the caller's ticket settles: a served request keeps its
    RPM slot, whichever await the disconnect lands in."""
    async def t(a: InProcess) -> None:
        messages: list[dict[str, Any]] = []
        left = asyncio.Event()
        body = json.dumps({"task": "limited", "stream": True,
                           "messages": say({"*": {"text": "a b c d e f g h", "chunk_delay_ms": 50}})}).encode()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)
            if len(messages) == 3:  # the client stops reading: the server's send blocks, then it goes away
                left.set()
                await asyncio.get_running_loop().create_future()

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/tasks", "raw_path": b"/v1/tasks", "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"application/json")],
                 "server": ("router.local", 80), "client": ("10.0.0.9", 5)}
        await a.app(scope, receive, send)
        assert messages[0]["status"] == 200 and not any(m.get("more_body") is False for m in messages)
        for _ in range(100):  # the upstream call of the abandoned stream ends
            await asyncio.sleep(0)
        caller = {"x-caller": "10.0.0.9"}
        first = await a.client.post("/v1/tasks", json={"task": "limited", "messages": say()}, headers=caller)
        second = await a.client.post("/v1/tasks", json={"task": "limited", "messages": say()}, headers=caller)
        assert (first.status_code, second.status_code) == (200, 429)  # rpm 2: the abandoned stream kept its slot

    run(t)


def test_nothing_follows_end_when_the_upstream_breaks_after_its_terminator() -> None:
    from router.inproc import Reply, ScriptedTransport

    chunks = [b'data: {"id":"1","choices":[{"index":0,"delta":{"role":"assistant","content":"hi"}}]}\n\n',
              b'data: {"id":"1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
              b"data: [DONE]\n\n", ConnectionResetError()]

    async def go() -> None:
        broken = ScriptedTransport(lambda request: Reply(body=list(chunks)))
        async with app(YAML, transports={"glm": broken}) as a:
            r = await a.client.post("/v1/tasks", json={"task": "t", "stream": True, "messages": say()})
            evs = sse(r.text)
            assert evs[-1]["type"] == "end" and [e["type"] for e in evs].count("end") == 1
            assert not any(e["type"] in ("error", "fallback") for e in evs)
            r = await a.client.post("/v1/chat/completions", json={"model": "t", "stream": True, "messages": say()})
            assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text

    asyncio.run(go())


def test_an_adapter_bug_mid_stream_is_a_decode_error_of_that_target(monkeypatch: pytest.MonkeyPatch) -> None:
    from providers.openai import OpenAIAdapter

    real = OpenAIAdapter.stream_decoder

    def decoder(self: Any) -> Any:
        d = real(self)
        feed, calls = d.feed, [0]

        def broken(event: str, data: str) -> Any:
            calls[0] += 1
            if calls[0] == 3:
                raise KeyError("choices")
            return feed(event, data)

        d.feed = broken  # type: ignore[method-assign]
        return d

    async def t(a: InProcess) -> None:
        monkeypatch.setattr(OpenAIAdapter, "stream_decoder", decoder)
        r = await a.client.post("/v1/tasks", json={"task": "t", "stream": True, "messages": say({"*": {"text": "a b c d"}})})
        evs = sse(r.text)
        assert evs[-1]["type"] == "error" and evs[-1]["code"] == "decode_error"
        assert evs[-1]["attempts"][0]["outcome"] == "error" and "KeyError" in evs[-1]["message"]

    run(t)
