"""Rate limits and the response cache, with router processes on a real Redis: what needs several
processes or a Redis that goes away. (One router on a live Redis runs in process in
tests/unit/test_limits_cache.py.)"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from pathlib import Path

import httpx
import pytest

from router.emulator import free_port
from tests.e2e._client import ask
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


def post(url: str, task: str, text: str, spec: dict | None = None, caller: str = "alice",  # type: ignore[type-arg]
         **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers = {"x-caller": caller, **kw.pop("headers", {})}
    return httpx.post(url + "/v1/tasks", json={"task": task, "messages": ask(text, spec), **kw},
                      headers=headers, timeout=30)


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
