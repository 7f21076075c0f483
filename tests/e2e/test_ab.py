"""A/B end to end: variants with fallback, shadow traffic, outcomes across replicas, feedback."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._client import ask, stream_events
from tests.e2e.test_limits_cache import Routers

pytestmark = pytest.mark.e2e


def ab_yaml(emu: str) -> str:
    return f"""
version: 1
providers:
  glm:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: k
    retry: {{attempts: 1}}
    cooldown: {{failures: 1000}}
    timeouts: {{first_token: 5, total: 10}}
    models:
      glm-ab: {{context_window: 200000, price: {{input: 1, output: 2}}}}
      glm-shadow: {{context_window: 200000, price: {{input: 1, output: 1}}}}
  claude:
    protocol: anthropic
    base_url: {emu}
    api_key: k
    retry: {{attempts: 1}}
    models:
      claude-ab: {{context_window: 200000, price: {{input: 3, output: 3}}}}
tasks:
  ab:
    chain: [glm/glm-ab]
    experiment:
      variants:
        glm_first: {{chain: [glm/glm-ab, claude/claude-ab], weight: 50}}
        claude_first: {{chain: [claude/claude-ab, glm/glm-ab], weight: 50}}
  shadowed:
    chain: [glm/glm-ab]
    shadow: {{target: glm/glm-shadow, sample: 1.0, max_in_flight: 2}}
"""


@pytest.fixture
def two(tmp_path: Path, emulator: str, redis_url: str, redis_prefix: str):  # type: ignore[no-untyped-def]
    httpx.post(emulator + "/_emulator/reset")
    routers = Routers(tmp_path, emulator, redis_url, 2, text=ab_yaml(emulator), prefix=redis_prefix)
    try:
        yield routers.urls
    finally:
        routers.stop()


def until(read: Any, done: Any, timeout: float = 5.0) -> Any:
    """``read()`` again until ``done(value)`` (another process writes it), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    return value


def post(url: str, task: str, user: str | None, spec: dict | None = None) -> httpx.Response:  # type: ignore[type-arg]
    body = {"task": task, "messages": ask(uuid.uuid4().hex[:6], spec)}
    if user is not None:
        body["metadata"] = {"user": user}
    return httpx.post(url + "/v1/tasks", json=body, timeout=30)


def test_variants_sticky_fallback_and_outcomes_across_replicas(two) -> None:  # type: ignore[no-untyped-def]
    a, b = two
    first = {u: post(a, "ab", u).json()["variant"] for u in ("u1", "u2", "u3", "u4", "u5", "u6")}
    assert set(first.values()) == {"glm_first", "claude_first"}
    for u, v in first.items():  # sticky, whichever replica answers
        assert post(b, "ab", u).json()["variant"] == v
    user = next(u for u, v in first.items() if v == "glm_first")
    r = post(a, "ab", user, {"glm-ab": {"status": 503}})  # the variant's chain falls back
    assert r.json()["variant"] == "glm_first" and r.json()["model"] == "claude-ab"
    with httpx.Client(timeout=10) as c:
        events = stream_events(c, b, {"task": "ab", "metadata": {"user": user}, "messages": ask("s")})
    assert events[0]["variant"] == "glm_first"
    report = until(lambda: httpx.get(a + "/v1/experiments/ab").json(),  # outcomes are written after the answers
                   lambda rep: sum(v["requests"] for v in rep["variants"].values()) >= 14)
    total = sum(v["requests"] for v in report["variants"].values())
    assert total == 6 + 6 + 1 + 1  # both replicas add to the same counters
    assert report["variants"]["glm_first"]["fallbacks"] >= 1
    assert report["variants"]["glm_first"]["weight"] == 50
    assert report["variants"]["claude_first"]["ttft_ms"]["samples"] <= report["variants"]["claude_first"]["requests"]
    # feedback, attributed to the variant by the response id
    rid = post(b, "ab", user).json()["id"]
    ok = httpx.post(a + "/v1/feedback", json={"id": rid, "score": 0.8, "label": "helpful"})
    assert ok.status_code == 200 and ok.json()["variant"] == "glm_first"
    fb = until(lambda: httpx.get(b + "/v1/experiments/ab").json()["variants"]["glm_first"]["feedback"],
               lambda got: got["count"] >= 1)
    assert fb == {"count": 1, "mean_score": 0.8, "labels": {"helpful": 1}}
    assert httpx.post(a + "/v1/feedback", json={"id": "req_nope", "score": 1}).status_code == 404
    bad = httpx.post(a + "/v1/feedback", json={"id": rid, "score": "great"})
    assert bad.status_code == 400 and bad.json()["error"]["path"] == "score"
    assert httpx.get(a + "/v1/experiments/nope").status_code == 404


def test_shadow_records_both_outputs(two) -> None:  # type: ignore[no-untyped-def]
    a, _ = two
    spec = {"glm-shadow": {"text": "shadow says hi", "input_tokens": 10, "output_tokens": 5},
            "glm-ab": {"text": "primary says hi"}}
    assert post(a, "shadowed", None, spec).json()["text"] == "primary says hi"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        recent = httpx.get(a + "/v1/experiments/shadowed").json()["shadow"]["recent"]
        if recent:
            break
        time.sleep(0.05)
    entry = recent[0]
    assert (entry["output"], entry["primary_output"], entry["finish_reason"]) == ("shadow says hi", "primary says hi", "stop")
    assert entry["usage"]["output_tokens"] == 5 and entry["usage"]["cost_usd"] == pytest.approx(15e-6)
    assert entry["ttft_ms"] is not None and entry["latency_ms"] >= entry["ttft_ms"]
