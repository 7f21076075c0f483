"""Fallback, retries, cooldowns and timeouts under real failures, in process: the router over the
in-process transport to the emulator (and a scripted one that refuses connections), on a fake
clock, so a timeout or a cooldown takes no real time. (Moved from the e2e suite; the caller
disconnect, which needs a real socket, stays there.)"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from router.inproc import Reply, ScriptedTransport
from tests.unit._app import InProcess, app, say, sse

RETRY = "{attempts: 3, initial_wait: 0.5, max_wait: 5, max_total_wait: 8}"


def config(*, emu: str = "http://emulator", dead: str = "http://dead.invalid/v1", midstream: str = "error", retry: str = RETRY, timeouts: str = "{first_token: 0.4, idle: 0.3, total: 1}",
           windows: tuple[int, int] = (200000, 200000),
           cooldown: str = "{failures: 3, window: 60, duration: 10, max_duration: 40}") -> str:
    return f"""
version: 1
providers:
  glm:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: k
    retry: {retry}
    timeouts: {timeouts}
    cooldown: {cooldown}
    models:
      glm-a: {{context_window: {windows[0]}, price: {{input: 1, output: 1}}}}
      glm-b: {{context_window: {windows[1]}}}
  claude:
    protocol: anthropic
    base_url: {emu}
    api_key: k
    retry: {retry}
    timeouts: {timeouts}
    models:
      claude-a: {{context_window: 200000}}
  dead:
    protocol: openai
    base_url: {dead}
    api_key: k
    retry: {{attempts: 2, initial_wait: 0.5}}
    models:
      dead-a: {{context_window: 200000}}
tasks:
  t:
    chain: [glm/glm-a, claude/claude-a]
    midstream: {midstream}
  small_first:
    chain: [glm/glm-a, glm/glm-b, claude/claude-a]
  dead_first:
    chain: [dead/dead-a, glm/glm-a]
  only_glm:
    chain: [glm/glm-a]
  two_glm:
    chain: [glm/glm-a, glm/glm-b]
"""


REFUSED = ScriptedTransport(lambda request: Reply(body=[ConnectionRefusedError()]))


def run(test: Callable[[InProcess], Awaitable[None]], yaml_text: str | None = None) -> None:
    async def go() -> None:
        async with app(yaml_text or config(), transports={"dead": REFUSED}) as a:
            await test(a)

    asyncio.run(go())


def stats(a: InProcess) -> dict[str, Any]:
    return {k: dict(v) for k, v in a.emulator.stats.items()}


async def post(a: InProcess, task: str, spec: dict[str, Any], *, stream: bool = False) -> httpx.Response:
    """A task with a fresh prompt (the emulator's ``times`` counts identical requests)."""
    return await a.client.post("/v1/tasks", json={"task": task, "messages": say(spec, uuid.uuid4().hex),
                                                  "stream": stream})


async def events(a: InProcess, task: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    r = await post(a, task, spec, stream=True)
    assert r.status_code == 200
    evs = sse(r.text)
    assert [e["seq"] for e in evs] == list(range(len(evs)))
    assert sum(e["type"] in ("end", "error") for e in evs) == 1 and evs[-1]["type"] in ("end", "error")
    return evs


async def settle(pred: Callable[[], bool]) -> None:
    """Let the loop run (no clock time passes) until ``pred`` holds."""
    for _ in range(1000):
        if pred():
            return
        await asyncio.sleep(0)
    raise AssertionError("never settled")


def test_429_with_retry_after_then_success_on_the_same_target() -> None:
    async def t(a: InProcess) -> None:
        r = await post(a, "t", {"glm-a": {"status": 429, "retry_after": 3, "times": 1, "text": "ok"}})
        assert r.status_code == 200 and r.json()["model"] == "glm-a" and r.json()["text"] == "ok"
        assert r.json()["attempts"][0]["retries"] == 1
        assert a.clock.sleeps == [pytest.approx(3.0, abs=0.5)] and a.clock.sleeps[0] >= 3.0  # Retry-After honoured
        assert stats(a)["glm-a"]["requests"] == 2 and "claude-a" not in stats(a)

    run(t)


def test_503_retried_then_fallback() -> None:
    async def t(a: InProcess) -> None:
        evs = await events(a, "t", {"glm-a": {"status": 503}})
        assert evs[0] == {"type": "fallback", "seq": 0, "from": "glm/glm-a", "to": "claude/claude-a", "reason": "503"}
        assert evs[1]["type"] == "start" and evs[1]["model"] == "claude-a" and evs[1]["attempt"] == 2
        assert evs[-1]["type"] == "end"
        assert len(a.clock.sleeps) == 2 and a.clock.sleeps[1] > a.clock.sleeps[0] > 0  # exponential backoff
        assert stats(a)["glm-a"]["requests"] == 3

    run(t)


def test_529_on_claude_is_retried() -> None:
    async def t(a: InProcess) -> None:
        r = await post(a, "t", {"claude-a": {"status": 529, "times": 2}, "glm-a": {"status": 503}})
        body = r.json()
        assert r.status_code == 200 and body["model"] == "claude-a"
        assert [(x["target"], x["outcome"], x["retries"]) for x in body["attempts"]] == \
            [("glm/glm-a", "error", 2), ("claude/claude-a", "ok", 2)]

    run(t)


def test_zai_1113_is_not_retried() -> None:
    async def t(a: InProcess) -> None:
        r = await post(a, "t", {"glm-a": {"status": 429, "error_code": "1113"}})
        first = r.json()["attempts"][0]
        assert (first["code"], first["status"], first["retries"]) == ("1113", 429, 0)
        assert a.clock.sleeps == [] and r.json()["model"] == "claude-a"

    run(t)


def test_connection_refused_and_reset_before_the_first_byte() -> None:
    async def t(a: InProcess) -> None:
        refused = await post(a, "dead_first", {})
        reset = await post(a, "t", {"glm-a": {"cut_after": 0}}, stream=True)
        assert refused.json()["attempts"][0]["code"] == "connect_error" and refused.json()["model"] == "glm-a"
        assert refused.json()["attempts"][0]["retries"] == 1
        assert '"reason":"connect_error"' in reset.text and '"model":"claude-a"' in reset.text

    run(t)


def test_hang_hits_the_first_token_timeout() -> None:
    async def t(a: InProcess) -> None:
        t0, c0 = time.perf_counter(), a.clock.now()
        r = await post(a, "t", {"glm-a": {"hang": True}}, stream=True)
        assert '"reason":"first_token_timeout"' in r.text and '"type":"end"' in r.text
        assert a.clock.now() - c0 >= 0.4 - 1e-9 and time.perf_counter() - t0 < 2
        await settle(lambda: stats(a)["glm-a"]["aborted"] == 1)  # the hung upstream call was closed

    run(t, config(retry="{attempts: 1}"))


def test_cut_midstream_is_an_error_or_a_restart() -> None:
    spec = {"glm-a": {"text": "one two three four five six", "cut_after": 3}, "claude-a": {"text": "whole answer"}}

    async def error(a: InProcess) -> None:
        evs = await events(a, "t", spec)
        assert [e["type"] for e in evs] == ["start", "text.delta", "text.delta", "text.delta", "error"]
        assert evs[-1]["code"] == "stream_truncated" and evs[-1]["attempts"][0]["outcome"] == "error"

    async def restart(a: InProcess) -> None:
        evs = await events(a, "t", spec)
        types = [e["type"] for e in evs]
        assert types[:5] == ["start", "text.delta", "text.delta", "text.delta", "fallback"]
        assert evs[4]["reason"] == "stream_truncated" and evs[5]["type"] == "start"
        assert evs[5]["model"] == "claude-a" and types[-1] == "end"
        assert "".join(e["text"] for e in evs[5:] if e["type"] == "text.delta") == "whole answer"

    run(error)
    run(restart, config(midstream="restart"))


def test_malformed_before_the_first_event_falls_back() -> None:
    async def t(a: InProcess) -> None:
        r = await post(a, "t", {"glm-a": {"malformed": 0}}, stream=True)
        assert '"reason":"malformed_chunk"' in r.text and '"model":"claude-a"' in r.text

    run(t)


def test_idle_stall_after_commit_is_a_terminal_error() -> None:
    async def t(a: InProcess) -> None:
        evs = await events(a, "t", {"glm-a": {"text": "a b c d", "chunk_delay_ms": 1500}})
        assert [e["type"] for e in evs] == ["start", "text.delta", "error"]
        assert evs[-1]["code"] == "idle_timeout"

    run(t)


@pytest.mark.parametrize("backoff", [None, 2])
def test_cooldown_skip_then_half_open_probe(backoff: float | None) -> None:
    """A failed probe re-opens the circuit for ``duration`` (10 s), or ``duration x backoff``
    (20 s) when the provider asks for growth."""
    failing = {"glm-a": {"status": 503}}
    reopen = 10 * (backoff or 1)

    async def t(a: InProcess) -> None:
        for _ in range(3):
            assert (await post(a, "t", failing)).json()["model"] == "claude-a"
        assert stats(a)["glm-a"]["requests"] == 3
        routes = (await a.client.get("/v1/routes")).json()
        assert routes["targets"]["glm/glm-a"]["state"] == "open"
        cooled = await post(a, "t", {})  # glm-a would answer now, but it is cooling down
        assert cooled.json()["model"] == "claude-a"
        assert cooled.json()["attempts"][0] == {"target": "glm/glm-a", "outcome": "skipped", "code": "cooldown",
                                                "message": "glm/glm-a: cooling down after repeated failures",
                                                "status": None, "latency_ms": None, "retries": 0}
        assert stats(a)["glm-a"]["requests"] == 3  # not called
        a.clock.advance(11)  # past the 10 s cooldown: one probe goes through
        assert (await a.client.get("/v1/routes")).json()["targets"]["glm/glm-a"]["state"] == "half_open"
        assert (await post(a, "t", failing)).json()["model"] == "claude-a"  # the probe fails: open again
        assert (await a.client.get("/v1/routes")).json()["targets"]["glm/glm-a"]["trips"] == 2
        a.clock.advance(reopen - 1)
        assert (await post(a, "t", {})).json()["model"] == "claude-a"  # still cooling
        a.clock.advance(2)
        probe = await post(a, "t", {})
        assert probe.json()["model"] == "glm-a", probe.json()["attempts"]
        assert (await a.client.get("/v1/routes")).json()["targets"]["glm/glm-a"]["state"] == "closed"
        assert stats(a)["glm-a"]["requests"] == 5

    growth = f", backoff: {backoff}" if backoff else ""
    run(t, config(retry="{attempts: 1}", cooldown="{failures: 3, window: 60, duration: 10, max_duration: 40" + growth + "}"))


@pytest.mark.parametrize(("spec", "status"), [
    ({"glm-a": {"status": 503}, "claude-a": {"status": 400}}, 502),
    ({"glm-a": {"hang": True}, "claude-a": {"hang": True}}, 504),
    ({"glm-a": {"status": 429, "retry_after": 7}, "claude-a": {"status": 429, "retry_after": 6}}, 429),
])
def test_every_target_failed_status(spec: dict[str, Any], status: int) -> None:
    async def t(a: InProcess) -> None:
        r = await post(a, "t", spec)
        s = await post(a, "t", spec, stream=True)
        assert r.status_code == status
        body = r.json()["error"]
        assert body["type"] == "all_targets_failed" and len(body["attempts"]) == 2
        if status == 429:
            assert r.headers["retry-after"] == "6"  # the shortest wait asked
        # streamed too: nothing was committed, so the status and body are the failure's, not 200
        assert s.status_code == status and s.headers["content-type"] == "application/json"
        assert s.json()["error"]["type"] == "all_targets_failed" and len(s.json()["error"]["attempts"]) == 2
        assert s.headers.get("retry-after") == r.headers.get("retry-after")

    run(t, config(retry="{attempts: 1}"))


def test_all_unusable_or_cooling_is_503() -> None:
    async def t(a: InProcess) -> None:
        for _ in range(3):
            await post(a, "only_glm", {"glm-a": {"status": 503}})
        r = await post(a, "only_glm", {})
        assert r.status_code == 503 and r.json()["error"]["attempts"][0]["code"] == "cooldown"

    run(t, config(retry="{attempts: 1}"))


def test_retry_after_beyond_the_caps_falls_back_without_sleeping() -> None:
    async def over_max(a: InProcess) -> None:
        r = await post(a, "t", {"glm-a": {"status": 429, "retry_after": 6}})  # max_wait 5
        assert r.json()["model"] == "claude-a" and a.clock.sleeps == []

    async def over_total(a: InProcess) -> None:
        r = await post(a, "t", {"glm-a": {"status": 429, "retry_after": 4}})  # under max_wait, over the total
        assert r.json()["model"] == "claude-a" and a.clock.sleeps == []
        assert r.json()["attempts"][0]["retries"] == 0

    run(over_max)
    run(over_total, config(retry="{attempts: 3, max_wait: 5, max_total_wait: 3}"))


def test_total_wait_is_shared_by_the_whole_chain() -> None:
    async def t(a: InProcess) -> None:
        r = await post(a, "t", {"glm-a": {"status": 429, "retry_after": 2}, "claude-a": {"status": 529, "retry_after": 2}})
        assert sum(a.clock.sleeps) <= 5 and a.clock.sleeps == [2, 2]
        assert [x["retries"] for x in r.json()["error"]["attempts"]] == [2, 0]

    run(t, config(retry="{attempts: 3, initial_wait: 0, max_wait: 5, max_total_wait: 5}"))


def test_context_window_skip_and_prompt_too_long() -> None:
    async def t(a: InProcess) -> None:
        big = await a.client.post("/v1/tasks", json={"task": "small_first", "messages": say(None, "x" * 8000)})
        assert big.json()["model"] == "glm-b"
        assert big.json()["attempts"][0]["code"] == "context_window"
        assert stats(a).get("glm-a", {}).get("requests", 0) == 0
        too_long = await post(a, "small_first", {"glm-a": {"status": 400, "error_code": "1261"}})
        # glm-a said prompt too long: glm-b (larger window) is tried, not skipped
        assert too_long.json()["model"] == "glm-b" and too_long.json()["attempts"][0]["code"] == "1261"

    run(t, config(windows=(1000, 300000)))


def test_concurrent_requests_keep_their_own_attempts() -> None:
    async def t(a: InProcess) -> None:
        results = await asyncio.gather(*(post(a, "two_glm", {"glm-a": {"status": 503}} if i % 2 else {})
                                         for i in range(8)))
        for i, r in enumerate(results):
            assert len(r.json()["attempts"]) == (2 if i % 2 else 1)

    run(t, config(retry="{attempts: 1}", cooldown="{failures: 1000}"))
