"""Rate limits and the response cache, with router processes on a real Redis."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.emulator import free_port
from tests.e2e._client import ask, stream_events
from tests.e2e.conftest import Proc

pytestmark = pytest.mark.e2e


def yaml_for(emu: str, on_store_error: str = "allow") -> str:
    return f"""
version: 1
on_store_error: {on_store_error}
limits:
  per_caller: {{rpm: 1000, tpm: 10000000}}
providers:
  glm:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: k
    retry: {{attempts: 1}}
    cooldown: {{failures: 1000}}
    models:
      glm-l: {{context_window: 200000, price: {{input: 1, output: 1}}}}
      glm-q: {{context_window: 200000, limits: {{rpm: 2}}}}
      glm-c: {{context_window: 200000, price: {{input: 1, output: 1}}}}
  glm2:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: k
    retry: {{attempts: 1}}
    cooldown: {{failures: 3, duration: 600}}
    models:
      glm-q: {{context_window: 200000}}
  claude:
    protocol: anthropic
    base_url: {emu}
    api_key: k
    retry: {{attempts: 1}}
    limits: {{rpm: 1000}}
    models:
      claude-l: {{context_window: 200000}}
tasks:
  limited:
    chain: [glm/glm-l]
    limits: {{rpm: 5, tpm: 10000}}
    params: {{max_tokens: 4000}}
  quota:
    chain: [glm/glm-q, claude/claude-l]
  quota_only:
    chain: [glm/glm-q]
  quota_shared:
    chain: [glm2/glm-q, claude/claude-l]
  cached:
    chain: [glm/glm-c]
    cache: {{ttl: 60, coalesce_wait: 5}}
"""


class Routers:
    """N router processes on one Redis (keys under a fresh prefix)."""

    def __init__(self, tmp: Path, emu: str, redis_url: str, n: int, on_store_error: str = "allow",
                 text: str | None = None, prefix: str | None = None) -> None:
        (tmp / "routing.yaml").write_text(text or yaml_for(emu, on_store_error))
        self.prefix = prefix or "llmr-e2e-" + uuid.uuid4().hex[:10]
        env = {"REDIS_URL": redis_url, "REDIS_PREFIX": self.prefix, "REDIS_TIMEOUT_MS": "200"}
        self.procs, self.urls = [], []
        for i in range(n):
            port = free_port()
            self.procs.append(Proc(["serve", "--config", str(tmp / "routing.yaml"), "--port", str(port)],
                                   tmp / f"router{i}.log", env))
            self.urls.append(f"http://127.0.0.1:{port}")
        for p, u in zip(self.procs, self.urls, strict=True):
            p.wait_http(u + "/healthz")

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


@pytest.fixture
def emu(emulator: str) -> str:
    httpx.post(emulator + "/_emulator/reset")
    return emulator


@pytest.fixture
def one(tmp_path: Path, emu: str, redis_url: str, redis_prefix: str) -> Iterator[str]:
    r = Routers(tmp_path, emu, redis_url, 1)
    try:
        yield r.urls[0]
    finally:
        r.stop()


def post(url: str, task: str, text: str, spec: dict | None = None, caller: str = "alice",  # type: ignore[type-arg]
         **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers = {"x-caller": caller, **kw.pop("headers", {})}
    return httpx.post(url + "/v1/tasks", json={"task": task, "messages": ask(text, spec), **kw},
                      headers=headers, timeout=30)


def test_caller_rpm_429_headers_and_separate_callers(one: str) -> None:
    oks = [post(one, "limited", f"q{i}") for i in range(5)]
    assert [r.status_code for r in oks] == [200] * 5
    assert [int(r.headers["x-ratelimit-remaining"]) for r in oks] == [4, 3, 2, 1, 0]
    assert oks[0].headers["x-ratelimit-limit"] == "5" and int(oks[0].headers["x-ratelimit-reset"]) <= 60
    over = post(one, "limited", "q6")
    assert over.status_code == 429
    assert over.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(over.headers["retry-after"]) <= 12 and over.headers["x-ratelimit-remaining"] == "0"
    assert post(one, "limited", "q7", caller="bob").status_code == 200
    bad = post(one, "limited", "q8", caller="has space")
    assert bad.status_code == 400 and bad.json()["error"]["path"] == "headers.x-caller"


def test_tpm_is_reconciled_and_failures_refunded(one: str) -> None:
    spec = {"*": {"text": "ok", "input_tokens": 100, "output_tokens": 50}}
    first = post(one, "limited", "t1", spec, caller="carol")
    est_left = int(first.headers["x-ratelimit-remaining-tokens"])
    assert 5900 < est_left < 6000  # 10000 - (prompt estimate + max_tokens 4000)
    second = post(one, "limited", "t2", spec, caller="carol")
    # the first request used 150 tokens, not ~4010: the difference came back before this charge
    assert int(second.headers["x-ratelimit-remaining-tokens"]) > est_left - 300
    failed = post(one, "limited", "t3", {"*": {"status": 500}}, caller="carol")
    assert failed.status_code == 502
    after = post(one, "limited", "t4", spec, caller="carol")
    assert int(after.headers["x-ratelimit-remaining"]) == 5 - 3  # the failed request's slot came back
    too_big = post(one, "limited", "x" * 40000, caller="carol")
    assert too_big.status_code == 429 and "tokens" in too_big.json()["error"]["message"]


def test_provider_quota_skips_to_the_next_target(one: str, emu: str) -> None:
    models = [post(one, "quota", f"p{i}").json()["model"] for i in range(3)]
    assert models == ["glm-q", "glm-q", "claude-l"]
    r = post(one, "quota", "p4", stream=True)
    assert '"reason":"rate_limited"' in r.text
    only = post(one, "quota_only", "p5")
    assert only.status_code == 429 and only.json()["error"]["attempts"][0]["code"] == "rate_limited"
    assert int(only.headers["retry-after"]) >= 1
    assert httpx.get(emu + "/_emulator/stats").json()["glm-q"]["requests"] == 2


def test_cache_replays_streams_and_answers(one: str, emu: str) -> None:
    spec = {"*": {"reasoning": "think", "text": "cached words here",
                  "tool_calls": [{"id": "call_z", "name": "f", "arguments": {"x": 1}}],
                  "input_tokens": 10, "output_tokens": 20}}
    body = {"task": "cached", "messages": ask("same question", spec)}
    with httpx.Client(timeout=10) as c:
        first = stream_events(c, one, body)
        second = stream_events(c, one, body)
        answer = c.post(one + "/v1/tasks", json=body).json()
    assert first[0]["cached"] is False and second[0]["cached"] is True
    strip = lambda evs: [{k: v for k, v in e.items() if k not in ("seq", "id", "cost_usd", "cached", "attempt")}
                         for e in evs]  # noqa: E731
    assert strip(second) == strip(first)  # the same events, replayed
    assert next(e for e in second if e["type"] == "usage")["cost_usd"] == 0
    assert next(e for e in first if e["type"] == "usage")["cost_usd"] > 0
    assert answer["cached"] is True and answer["text"] == "cached words here" and answer["reasoning"] == "think"
    assert answer["tool_calls"][0]["id"] == "call_z" and answer["usage"]["cost_usd"] == 0
    assert httpx.get(emu + "/_emulator/stats").json()["glm-c"]["requests"] == 1


def test_cache_control_and_partial_answers(one: str, emu: str) -> None:
    text = "cc " + uuid.uuid4().hex
    assert post(one, "cached", text, headers={"cache-control": "no-store"}).json()["cached"] is False
    assert post(one, "cached", text).json()["cached"] is False  # no-store: nothing was written
    assert post(one, "cached", text).json()["cached"] is True
    assert post(one, "cached", text, headers={"cache-control": "no-cache"}).json()["cached"] is False
    cut = {"*": {"text": "a b c d e f", "cut_after": 3}}
    for _ in range(2):  # a cut stream is never stored
        r = post(one, "cached", "cut " + text, cut, stream=True)
        assert '"type":"error"' in r.text and '"cached":true' not in r.text
    assert httpx.get(emu + "/_emulator/stats").json()["glm-c"]["requests"] == 5


def test_identical_concurrent_requests_are_coalesced(one: str, emu: str) -> None:
    spec = {"*": {"text": "slow answer " * 5, "chunk_delay_ms": 20}}
    body = {"task": "cached", "stream": True, "messages": ask("coalesce " + uuid.uuid4().hex, spec)}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda _: httpx.post(one + "/v1/tasks", json=body, timeout=30).text, range(8)))
    assert all('"type":"end"' in t for t in texts)
    assert httpx.get(emu + "/_emulator/stats").json()["glm-c"]["requests"] == 1
    assert sum('"cached":true' in t for t in texts) == 7


def test_four_processes_admit_exactly_the_limit(tmp_path: Path, emu: str, redis_url: str, redis_prefix: str) -> None:
    routers = Routers(tmp_path, emu, redis_url, 4)
    try:
        def hit(i: int) -> int:
            return post(routers.urls[i % 4], "limited", f"burst {i}", caller="burst").status_code

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            codes = list(pool.map(hit, range(24)))
    finally:
        routers.stop()
    assert codes.count(200) == 5 and codes.count(429) == 19


def test_redis_down_then_back(tmp_path: Path, emu: str, redis_proc) -> None:  # type: ignore[no-untyped-def]
    routers = Routers(tmp_path, emu, redis_proc.url, 1)
    url = routers.urls[0]
    try:
        text = "down " + uuid.uuid4().hex
        assert post(url, "cached", text).json()["cached"] is False
        assert post(url, "cached", text).json()["cached"] is True
        redis_proc.stop()
        t0 = time.monotonic()
        down = [post(url, "limited", f"d{i}", caller="dora") for i in range(7)]
        assert [r.status_code for r in down] == [200] * 7  # on_store_error: allow
        assert post(url, "cached", text).json()["cached"] is False  # cache bypassed, answer still served
        assert time.monotonic() - t0 < 5
        ready = httpx.get(url + "/readyz").json()
        assert ready["status"] == "degraded" and ready["stores"]["status"] == "unreachable"
        redis_proc.start()
        deadline = time.monotonic() + 10
        while httpx.get(url + "/readyz").json()["status"] != "ready" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(url + "/readyz").json()["status"] == "ready"
        back = [post(url, "limited", f"b{i}", caller="erin").status_code for i in range(6)]
        assert back == [200] * 5 + [429]  # limits enforced again
    finally:
        routers.stop()


def test_store_down_with_deny(tmp_path: Path, emu: str, redis_proc) -> None:  # type: ignore[no-untyped-def]
    routers = Routers(tmp_path, emu, redis_proc.url, 1, on_store_error="deny")
    try:
        assert post(routers.urls[0], "limited", "a").status_code == 200
        redis_proc.stop()
        r = post(routers.urls[0], "limited", "b")
        assert r.status_code == 429 and "unavailable" in r.json()["error"]["message"]
    finally:
        routers.stop()


def test_cooldown_is_shared_by_replicas(tmp_path: Path, emu: str, redis_url: str, redis_prefix: str) -> None:
    routers = Routers(tmp_path, emu, redis_url, 2)
    try:
        for i in range(3):  # trip glm-q's circuit through the first replica (cooldown failures: 3)
            post(routers.urls[0], "quota_shared", f"f{i}", {"glm-q": {"status": 503}})
        r = post(routers.urls[1], "quota_shared", "through the second replica")
        assert r.json()["attempts"][0]["code"] == "cooldown" and r.json()["model"] == "claude-l"
        assert httpx.get(routers.urls[1] + "/v1/routes").json()["targets"]["glm2/glm-q"]["state"] == "open"
    finally:
        routers.stop()


def test_routes_show_limits(one: str) -> None:
    view = httpx.get(one + "/v1/routes").json()
    assert view["limits"]["tasks"]["limited"] == {"rpm": 5, "tpm": 10000}
    assert view["limits"]["models"]["glm/glm-q"] == {"rpm": 2, "tpm": None}
    assert view["tasks"]["cached"]["cache"]["ttl"] == 60
    assert json.dumps(view).count("llmr") == 0
