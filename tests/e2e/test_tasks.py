"""POST /v1/tasks end to end: router and emulator as real processes, real HTTP on loopback."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e._client import answer_fields, ask, fold_events, stream_events
from tests.e2e.conftest import SECRET_ANTHROPIC, SECRET_ZAI

pytestmark = pytest.mark.e2e

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
def test_stream_and_non_stream_agree(client: httpx.Client, router: str, task: str, scenario: str) -> None:
    body = {"task": task, "messages": ask("Why is the sky blue?", {"*": SCENARIOS[scenario]})}
    events = stream_events(client, router, body)
    r = client.post(router + "/v1/tasks", json=body)
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


def test_reasoning_and_cost(client: httpx.Client, router: str) -> None:
    spec = {"*": {"reasoning": "think", "text": "ok", "input_tokens": 1_000_000, "output_tokens": 1_000_000}}
    glm = client.post(router + "/v1/tasks", json={"task": "glm_task", "messages": ask("q", spec)}).json()
    assert glm["reasoning"] == "think" and glm["reasoning_signature"] is None
    assert glm["usage"]["cost_usd"] == pytest.approx(0.60 + 2.20)  # USD per 1M in and out
    claude = client.post(router + "/v1/tasks", json={"task": "claude_task", "thinking": True,
                                                      "messages": ask("q", spec)}).json()
    assert claude["reasoning"] == "think" and claude["reasoning_signature"]
    assert claude["usage"]["cost_usd"] == pytest.approx(3.00 + 15.00)
    unpriced = client.post(router + "/v1/tasks", json={"task": "oai_task", "messages": ask("q", spec)}).json()
    assert unpriced["usage"]["cost_usd"] == 0


def test_wire_bodies_sent_upstream(client: httpx.Client, router: str, emulator: str) -> None:
    """What the router put on the wire: params merged, GLM thinking, Anthropic system and tools."""
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    history = [{"role": "system", "content": "Be brief."}, *ask("Weather?", {"*": {"text": "5C in Oslo."}}),
               {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "5C"}]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    for task, model in (("glm_task", "glm-4.6"), ("claude_task", "claude-sonnet-5-5")):
        r = client.post(router + "/v1/tasks", json={"task": task, "messages": history, "tools": tools,
                                                     "thinking": True, "stream": True})
        assert r.status_code == 200 and '"finish_reason":"stop"' in r.text
        seen = client.get(f"{emulator}/_emulator/last/{model}").json()
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


def test_unusable_target_is_skipped_with_a_reason(client: httpx.Client, router: str) -> None:
    events = stream_events(client, router, {"task": "quick_summary", "messages": ask("hi")})
    assert events[0] == {"type": "fallback", "seq": 0, "from": "nokey/claude-haiku-5-5",
                         "to": "glm/glm-4.5-air", "reason": "unusable"}
    assert events[1]["type"] == "start" and events[1]["model"] == "glm-4.5-air"
    assert events[-1]["type"] == "end"
    r = client.post(router + "/v1/tasks", json={"task": "nothing_usable", "messages": ask("hi")})
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["type"] == "all_targets_failed"
    assert err["attempts"][0]["outcome"] == "skipped"
    assert "TEST_UNSET_KEY_VARIABLE is not set" in err["attempts"][0]["message"]


def test_cut_stream_ends_with_error_never_end(client: httpx.Client, router: str) -> None:
    for task in ("glm_task", "claude_task"):
        spec = {"*": {"text": "one two three four five six seven", "cut_after": 4}}
        events = stream_events(client, router, {"task": task, "messages": ask("hi", spec)})
        assert events[-1]["type"] == "error" and events[-1]["code"] == "stream_truncated"
        assert not any(e["type"] == "end" for e in events)
        r = client.post(router + "/v1/tasks", json={"task": task, "messages": ask("hi", spec)})
        assert r.status_code == 502


@pytest.mark.parametrize("task", ["glm_task", "claude_task"])
def test_midstream_error_event_and_malformed_chunk(client: httpx.Client, router: str, task: str) -> None:
    code = "overloaded_error" if task == "claude_task" else "1305"
    for spec, expect in (({"text": "a b c d e f", "cut_after": 4, "error_code": code}, code),
                         ({"text": "a b c d e f", "malformed": 4}, "malformed_chunk")):
        events = stream_events(client, router, {"task": task, "messages": ask("hi", {"*": spec})})
        assert events[0]["type"] == "start"
        assert events[-1]["type"] == "error" and events[-1]["code"] == expect


def test_upstream_error_status_before_any_event(client: httpx.Client, router: str) -> None:
    spec = {"*": {"status": 429, "error_code": "1113"}}
    r = client.post(router + "/v1/tasks", json={"task": "glm_task", "messages": ask("hi", spec)})
    assert r.status_code == 502
    attempt = r.json()["error"]["attempts"][0]
    assert (attempt["outcome"], attempt["code"], attempt["status"]) == ("error", "1113", 429)
    events = stream_events(client, router, {"task": "glm_task", "messages": ask("hi", spec)})
    assert len(events) == 1 and events[0]["type"] == "error" and events[0]["code"] == "all_targets_failed"


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
def test_bad_input(client: httpx.Client, router: str, body: bytes, status: int, path: str | None) -> None:
    r = client.post(router + "/v1/tasks", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) >= {"type", "message"} and err.get("path") == path
    if status == 404:
        assert "glm_task" in err["message"] and "quick_summary" in err["message"]


def test_body_too_large(client: httpx.Client, router: str) -> None:
    big = json.dumps({"task": "glm_task", "messages": ask("x" * (5 * 1024 * 1024))}).encode()
    r = client.post(router + "/v1/tasks", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"


def test_health_ready_routes_and_no_secret(client: httpx.Client, router_proc) -> None:  # type: ignore[no-untyped-def]
    router, proc = router_proc
    assert client.get(router + "/healthz").json() == {"status": "ok"}
    ready = client.get(router + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["stores"]["kind"] == "memory"
    routes = client.get(router + "/v1/routes")
    view = routes.json()
    assert view["tasks"]["quick_summary"]["chain"][0] == "nokey/claude-haiku-5-5"
    assert view["providers"]["glm"]["api_key"] == "set"
    assert view["providers"]["nokey"]["usable"] is False
    for text in (routes.text, ready.text, proc.output()):
        assert SECRET_ZAI not in text and SECRET_ANTHROPIC not in text
    assert client.get(router + "/nope").json()["error"]["type"] == "not_found_error"
    assert client.get(router + "/v1/tasks").status_code == 405
