"""Fallback, retries, cooldowns and timeouts under real failures: the emulator as a real process,
the router in-process over real HTTP with its sleep and wall clock injected (no needless waits)."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest
from httpx_sse import connect_sse

from router.emulator import free_port
from tests.e2e._client import ask, stream_events
from tests.e2e._inproc import FakeTime, serve

pytestmark = pytest.mark.e2e


def config(emu: str, *, midstream: str = "error", retry: str = "{attempts: 3, initial_wait: 0.5, max_wait: 5, max_total_wait: 8}",
           timeouts: str = "{first_token: 0.4, idle: 0.3, total: 1}", windows: tuple[int, int] = (200000, 200000),
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
    base_url: http://127.0.0.1:{free_port()}/v1
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


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def emu(emulator: str) -> str:
    httpx.post(emulator + "/_emulator/reset")
    return emulator


def stats(emu: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(emu + "/_emulator/stats").json()


def unique() -> str:
    return uuid.uuid4().hex  # a fresh prompt: the emulator's `times` counts identical requests


def post(url: str, task: str, spec: dict, *, stream: bool = False, **extra) -> httpx.Response:  # type: ignore[no-untyped-def,type-arg]
    return httpx.post(url + "/v1/tasks", json={"task": task, "messages": ask(unique(), spec),
                                                "stream": stream, **extra}, timeout=30)


def test_429_with_retry_after_then_success_on_the_same_target(emu: str, fake: FakeTime) -> None:
    with serve(config(emu), sleep=fake.sleep, wall=fake.wall) as url:
        r = post(url, "t", {"glm-a": {"status": 429, "retry_after": 3, "times": 1, "text": "ok"}})
    assert r.status_code == 200 and r.json()["model"] == "glm-a" and r.json()["text"] == "ok"
    assert r.json()["attempts"][0]["retries"] == 1
    assert fake.sleeps == [pytest.approx(3.0, abs=0.5)] and fake.sleeps[0] >= 3.0  # Retry-After honoured
    assert stats(emu)["glm-a"]["requests"] == 2 and "claude-a" not in stats(emu)


def test_503_retried_then_fallback(emu: str, fake: FakeTime) -> None:
    with serve(config(emu), sleep=fake.sleep, wall=fake.wall) as url, httpx.Client() as c:
        events = stream_events(c, url, {"task": "t", "messages": ask(unique(), {"glm-a": {"status": 503}})})
    assert events[0] == {"type": "fallback", "seq": 0, "from": "glm/glm-a", "to": "claude/claude-a", "reason": "503"}
    assert events[1]["type"] == "start" and events[1]["model"] == "claude-a" and events[1]["attempt"] == 2
    assert events[-1]["type"] == "end"
    assert len(fake.sleeps) == 2 and fake.sleeps[1] > fake.sleeps[0] > 0  # exponential backoff
    assert stats(emu)["glm-a"]["requests"] == 3


def test_529_on_claude_is_retried(emu: str, fake: FakeTime) -> None:
    with serve(config(emu), sleep=fake.sleep, wall=fake.wall) as url:
        r = post(url, "t", {"claude-a": {"status": 529, "times": 2}, "glm-a": {"status": 503}})
    a = r.json()
    assert r.status_code == 200 and a["model"] == "claude-a"
    assert [(x["target"], x["outcome"], x["retries"]) for x in a["attempts"]] == \
        [("glm/glm-a", "error", 2), ("claude/claude-a", "ok", 2)]


def test_zai_1113_is_not_retried(emu: str, fake: FakeTime) -> None:
    with serve(config(emu), sleep=fake.sleep, wall=fake.wall) as url:
        r = post(url, "t", {"glm-a": {"status": 429, "error_code": "1113"}})
    first = r.json()["attempts"][0]
    assert (first["code"], first["status"], first["retries"]) == ("1113", 429, 0)
    assert fake.sleeps == [] and r.json()["model"] == "claude-a"


def test_connection_refused_and_reset_before_the_first_byte(emu: str, fake: FakeTime) -> None:
    with serve(config(emu), sleep=fake.sleep, wall=fake.wall) as url:
        refused = post(url, "dead_first", {})
        reset = post(url, "t", {"glm-a": {"cut_after": 0}}, stream=True)
    assert refused.json()["attempts"][0]["code"] == "connect_error" and refused.json()["model"] == "glm-a"
    assert refused.json()["attempts"][0]["retries"] == 1
    assert '"reason":"connect_error"' in reset.text and '"model":"claude-a"' in reset.text


def test_hang_hits_the_first_token_timeout(emu: str, fake: FakeTime) -> None:
    with serve(config(emu, retry="{attempts: 1}"), sleep=fake.sleep, wall=fake.wall) as url:
        t0 = time.monotonic()
        r = post(url, "t", {"glm-a": {"hang": True}}, stream=True)
        took = time.monotonic() - t0
    assert '"reason":"first_token_timeout"' in r.text and '"type":"end"' in r.text
    assert 0.35 < took < 3
    time.sleep(0.2)
    assert stats(emu)["glm-a"]["aborted"] == 1  # the hung upstream call was closed


def test_cut_midstream_is_an_error_or_a_restart(emu: str, fake: FakeTime) -> None:
    spec = {"glm-a": {"text": "one two three four five six", "cut_after": 3}, "claude-a": {"text": "whole answer"}}
    with serve(config(emu), sleep=fake.sleep, wall=fake.wall) as url, httpx.Client() as c:
        events = stream_events(c, url, {"task": "t", "messages": ask(unique(), spec)})
    assert [e["type"] for e in events] == ["start", "text.delta", "text.delta", "text.delta", "error"]
    assert events[-1]["code"] == "stream_truncated" and events[-1]["attempts"][0]["outcome"] == "error"
    with serve(config(emu, midstream="restart"), sleep=fake.sleep, wall=fake.wall) as url, httpx.Client() as c:
        events = stream_events(c, url, {"task": "t", "messages": ask(unique(), spec)})
    types = [e["type"] for e in events]
    assert types[:5] == ["start", "text.delta", "text.delta", "text.delta", "fallback"]
    assert events[4]["reason"] == "stream_truncated" and events[5]["type"] == "start"
    assert events[5]["model"] == "claude-a" and types[-1] == "end"
    assert "".join(e["text"] for e in events[5:] if e["type"] == "text.delta") == "whole answer"


def test_malformed_before_the_first_event_falls_back(emu: str, fake: FakeTime) -> None:
    with serve(config(emu), sleep=fake.sleep, wall=fake.wall) as url:
        r = post(url, "t", {"glm-a": {"malformed": 0}}, stream=True)
    assert '"reason":"malformed_chunk"' in r.text and '"model":"claude-a"' in r.text


def test_idle_stall_after_commit_is_a_terminal_error(emu: str, fake: FakeTime) -> None:
    spec = {"glm-a": {"text": "a b c d", "chunk_delay_ms": 1500}}
    with serve(config(emu), sleep=fake.sleep, wall=fake.wall) as url, httpx.Client() as c:
        events = stream_events(c, url, {"task": "t", "messages": ask(unique(), spec)})
    assert [e["type"] for e in events] == ["start", "text.delta", "error"]
    assert events[-1]["code"] == "idle_timeout"


def test_cooldown_skip_then_half_open_probe(emu: str, fake: FakeTime) -> None:
    failing = {"glm-a": {"status": 503}}
    with serve(config(emu, retry="{attempts: 1}"), sleep=fake.sleep, wall=fake.wall) as url:
        for _ in range(3):
            assert post(url, "t", failing).json()["model"] == "claude-a"
        assert stats(emu)["glm-a"]["requests"] == 3
        routes = httpx.get(url + "/v1/routes").json()
        assert routes["targets"]["glm/glm-a"]["state"] == "open"
        cooled = post(url, "t", {})  # glm-a would answer now, but it is cooling down
        assert cooled.json()["model"] == "claude-a"
        assert cooled.json()["attempts"][0] == {"target": "glm/glm-a", "outcome": "skipped", "code": "cooldown",
                                                "message": "glm/glm-a: cooling down after repeated failures",
                                                "status": None, "latency_ms": None, "retries": 0}
        assert stats(emu)["glm-a"]["requests"] == 3  # not called
        fake.now += 11  # past the 10 s cooldown: one probe goes through
        assert httpx.get(url + "/v1/routes").json()["targets"]["glm/glm-a"]["state"] == "half_open"
        assert post(url, "t", failing).json()["model"] == "claude-a"  # the probe fails: open again, longer
        assert httpx.get(url + "/v1/routes").json()["targets"]["glm/glm-a"]["trips"] == 2
        fake.now += 11
        assert post(url, "t", {}).json()["model"] == "claude-a"  # 20 s now: still cooling
        fake.now += 10
        probe = post(url, "t", {})
        assert probe.json()["model"] == "glm-a"  # the probe succeeds: closed
        assert httpx.get(url + "/v1/routes").json()["targets"]["glm/glm-a"]["state"] == "closed"
        assert stats(emu)["glm-a"]["requests"] == 5


def test_caller_disconnect_cancels_upstream_without_fallback(emu: str, fake: FakeTime) -> None:
    spec = {"glm-a": {"text": " ".join(["w"] * 40), "chunk_delay_ms": 50}}
    with serve(config(emu), sleep=fake.sleep, wall=fake.wall) as url, httpx.Client(timeout=10) as c:
        with connect_sse(c, "POST", url + "/v1/tasks",
                         json={"task": "t", "stream": True, "messages": ask(unique(), spec)}) as es:
            seen = []
            for sse in es.iter_sse():
                seen.append(json.loads(sse.data)["type"])
                if len(seen) == 3:
                    break
        deadline = time.monotonic() + 5
        while stats(emu)["glm-a"]["aborted"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert seen == ["start", "text.delta", "text.delta"]
    s = stats(emu)
    assert s["glm-a"]["aborted"] == 1 and s["glm-a"]["completed"] == 0
    assert "claude-a" not in s  # no fallback for a caller that left


@pytest.mark.parametrize(("spec", "status"), [
    ({"glm-a": {"status": 503}, "claude-a": {"status": 400}}, 502),
    ({"glm-a": {"hang": True}, "claude-a": {"hang": True}}, 504),
    ({"glm-a": {"status": 429, "retry_after": 7}, "claude-a": {"status": 429, "retry_after": 6}}, 429),
])
def test_every_target_failed_status(emu: str, fake: FakeTime, spec: dict, status: int) -> None:  # type: ignore[type-arg]
    with serve(config(emu, retry="{attempts: 1}"), sleep=fake.sleep, wall=fake.wall) as url:
        r = post(url, "t", spec)
        s = post(url, "t", spec, stream=True)
    assert r.status_code == status
    body = r.json()["error"]
    assert body["type"] == "all_targets_failed" and len(body["attempts"]) == 2
    if status == 429:
        assert r.headers["retry-after"] == "6"  # the shortest wait asked
    last = json.loads(s.text.strip().split("data: ")[-1])
    assert last["type"] == "error" and last["code"] == "all_targets_failed" and len(last["attempts"]) == 2


def test_all_unusable_or_cooling_is_503(emu: str, fake: FakeTime) -> None:
    with serve(config(emu, retry="{attempts: 1}"), sleep=fake.sleep, wall=fake.wall) as url:
        for _ in range(3):
            post(url, "only_glm", {"glm-a": {"status": 503}})
        r = post(url, "only_glm", {})
    assert r.status_code == 503 and r.json()["error"]["attempts"][0]["code"] == "cooldown"


def test_retry_after_beyond_the_caps_falls_back_without_sleeping(emu: str, fake: FakeTime) -> None:
    with serve(config(emu), sleep=fake.sleep, wall=fake.wall) as url:
        over_max = post(url, "t", {"glm-a": {"status": 429, "retry_after": 6}})  # max_wait 5
    assert over_max.json()["model"] == "claude-a" and fake.sleeps == []
    with serve(config(emu, retry="{attempts: 3, max_wait: 5, max_total_wait: 3}"), sleep=fake.sleep, wall=fake.wall) as url:
        over_total = post(url, "t", {"glm-a": {"status": 429, "retry_after": 4}})  # under max_wait, over the total
    assert over_total.json()["model"] == "claude-a" and fake.sleeps == []
    assert over_total.json()["attempts"][0]["retries"] == 0


def test_total_wait_is_shared_by_the_whole_chain(emu: str, fake: FakeTime) -> None:
    retry = "{attempts: 3, initial_wait: 0, max_wait: 5, max_total_wait: 5}"
    with serve(config(emu, retry=retry), sleep=fake.sleep, wall=fake.wall) as url:
        r = post(url, "t", {"glm-a": {"status": 429, "retry_after": 2}, "claude-a": {"status": 529, "retry_after": 2}})
    assert sum(fake.sleeps) <= 5 and fake.sleeps == [2, 2]
    assert [a["retries"] for a in r.json()["error"]["attempts"]] == [2, 0]


def test_context_window_skip_and_prompt_too_long(emu: str, fake: FakeTime) -> None:
    with serve(config(emu, windows=(1000, 300000)), sleep=fake.sleep, wall=fake.wall) as url:
        big = httpx.post(url + "/v1/tasks", json={"task": "small_first", "messages": ask("x" * 8000)}, timeout=10)
        assert big.json()["model"] == "glm-b"
        assert big.json()["attempts"][0]["code"] == "context_window"
        assert stats(emu).get("glm-a", {}).get("requests", 0) == 0
        too_long = post(url, "small_first", {"glm-a": {"status": 400, "error_code": "1261"}})
    # glm-a said prompt too long: glm-b (larger window) is tried, not skipped
    assert too_long.json()["model"] == "glm-b" and too_long.json()["attempts"][0]["code"] == "1261"


def test_concurrent_requests_keep_their_own_attempts(emu: str, fake: FakeTime) -> None:
    no_cooldown = "{failures: 1000}"
    with serve(config(emu, retry="{attempts: 1}", cooldown=no_cooldown), sleep=fake.sleep, wall=fake.wall) as url:
        results: dict[int, httpx.Response] = {}

        def go(i: int) -> None:
            spec = {"glm-a": {"status": 503}} if i % 2 else {}
            results[i] = post(url, "two_glm", spec)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, r in results.items():
        assert len(r.json()["attempts"]) == (2 if i % 2 else 1)
