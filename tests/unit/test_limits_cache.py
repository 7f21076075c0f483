"""Rate limits and the response cache, in process on a real Redis: the Litestar app over the
in-process transport to the emulator, on a fake clock (``tests.unit._app``), its store a
``RedisStore`` under a fresh key prefix. (Moved from the e2e suite; what needs several router
processes, or a Redis that goes away, stays there.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from router.stores import LimitSpec
from router.stores.redis import RedisStore
from tests.e2e._client import ask
from tests.e2e.test_limits_cache import yaml_for
from tests.unit._app import InProcess, app
from tests.unit.test_tasks import stream_events

YAML = yaml_for("http://emulator")


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(Redis URL, key prefix): one Redis, and a Redis Cluster (3 primaries with replicas)."""
    if request.param == "cluster":
        return request.getfixturevalue("redis_cluster").url, "llmr-c-" + uuid.uuid4().hex[:8]
    return request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")


def run(test: Callable[[InProcess], Awaitable[None]], redis_url: str, redis_prefix: str) -> None:
    """``test`` against the app on a Redis store (the e2e routers' ``REDIS_TIMEOUT_MS=200``)."""
    async def go() -> None:
        store = RedisStore(redis_url, prefix=redis_prefix, timeout=0.2)
        try:
            async with app(YAML, store=store) as a:
                await test(a)
        finally:
            await store.close()

    asyncio.run(go())


async def post(a: InProcess, task: str, text: str, spec: dict[str, Any] | None = None, caller: str = "alice",
               **kw: Any) -> httpx.Response:
    headers = {"x-caller": caller, **kw.pop("headers", {})}
    return await a.client.post("/v1/tasks", json={"task": task, "messages": ask(text, spec), **kw}, headers=headers)


def test_caller_rpm_429_headers_and_separate_callers(store_url: tuple[str, str]) -> None:
    async def t(a: InProcess) -> None:
        oks = [await post(a, "limited", f"q{i}") for i in range(5)]
        assert [r.status_code for r in oks] == [200] * 5
        assert [int(r.headers["x-ratelimit-remaining"]) for r in oks] == [4, 3, 2, 1, 0]
        assert oks[0].headers["x-ratelimit-limit"] == "5" and int(oks[0].headers["x-ratelimit-reset"]) <= 60
        over = await post(a, "limited", "q6")
        assert over.status_code == 429
        assert over.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= int(over.headers["retry-after"]) <= 12 and over.headers["x-ratelimit-remaining"] == "0"
        assert (await post(a, "limited", "q7", caller="bob")).status_code == 200
        bad = await post(a, "limited", "q8", caller="has space")
        assert bad.status_code == 400 and bad.json()["error"]["path"] == "headers.x-caller"

    run(t, *store_url)


def test_tpm_is_reconciled_and_failures_refunded(store_url: tuple[str, str]) -> None:
    async def t(a: InProcess) -> None:
        spec = {"*": {"text": "ok", "input_tokens": 100, "output_tokens": 50}}
        first = await post(a, "limited", "t1", spec, caller="carol")
        est_left = int(first.headers["x-ratelimit-remaining-tokens"])
        assert 5900 < est_left < 6000  # 10000 - (prompt estimate + max_tokens 4000)
        second = await post(a, "limited", "t2", spec, caller="carol")
        # the first request used 150 tokens, not ~4010: the difference came back before this charge
        assert int(second.headers["x-ratelimit-remaining-tokens"]) > est_left - 300
        failed = await post(a, "limited", "t3", {"*": {"status": 500}}, caller="carol")
        assert failed.status_code == 502
        after = await post(a, "limited", "t4", spec, caller="carol")
        assert int(after.headers["x-ratelimit-remaining"]) == 5 - 3  # the failed request's slot came back
        too_big = await post(a, "limited", "x" * 40000, caller="carol")
        assert too_big.status_code == 429 and "tokens" in too_big.json()["error"]["message"]

    run(t, *store_url)


def test_provider_quota_skips_to_the_next_target(store_url: tuple[str, str]) -> None:
    async def t(a: InProcess) -> None:
        models = [(await post(a, "quota", f"p{i}")).json()["model"] for i in range(3)]
        assert models == ["glm-q", "glm-q", "claude-l"]
        r = await post(a, "quota", "p4", stream=True)
        assert '"reason":"rate_limited"' in r.text
        only = await post(a, "quota_only", "p5")
        assert only.status_code == 429 and only.json()["error"]["attempts"][0]["code"] == "rate_limited"
        assert int(only.headers["retry-after"]) >= 1
        assert a.emulator.stats["glm-q"]["requests"] == 2

    run(t, *store_url)


def test_cache_replays_streams_and_answers(store_url: tuple[str, str]) -> None:
    async def t(a: InProcess) -> None:
        spec = {"*": {"reasoning": "think", "text": "cached words here",
                      "tool_calls": [{"id": "call_z", "name": "f", "arguments": {"x": 1}}],
                      "input_tokens": 10, "output_tokens": 20}}
        body = {"task": "cached", "messages": ask("same question", spec)}
        first = await stream_events(a, body)
        second = await stream_events(a, body)
        answer = (await a.client.post("/v1/tasks", json=body)).json()
        assert first[0]["cached"] is False and second[0]["cached"] is True
        strip = lambda evs: [{k: v for k, v in e.items() if k not in ("seq", "id", "cost_usd", "cached", "attempt")}
                             for e in evs]
        assert strip(second) == strip(first)  # the same events, replayed
        assert next(e for e in second if e["type"] == "usage")["cost_usd"] == 0
        assert next(e for e in first if e["type"] == "usage")["cost_usd"] > 0
        assert answer["cached"] is True and answer["text"] == "cached words here" and answer["reasoning"] == "think"
        assert answer["tool_calls"][0]["id"] == "call_z" and answer["usage"]["cost_usd"] == 0
        assert a.emulator.stats["glm-c"]["requests"] == 1

    run(t, *store_url)


def test_cache_control_and_partial_answers(store_url: tuple[str, str]) -> None:
    async def t(a: InProcess) -> None:
        text = "cc " + uuid.uuid4().hex
        assert (await post(a, "cached", text, headers={"cache-control": "no-store"})).json()["cached"] is False
        assert (await post(a, "cached", text)).json()["cached"] is False  # no-store: nothing was written
        assert (await post(a, "cached", text)).json()["cached"] is True
        assert (await post(a, "cached", text, headers={"cache-control": "no-cache"})).json()["cached"] is False
        cut = {"*": {"text": "a b c d e f", "cut_after": 3}}
        for _ in range(2):  # a cut stream is never stored
            r = await post(a, "cached", "cut " + text, cut, stream=True)
            assert '"type":"error"' in r.text and '"cached":true' not in r.text
        assert a.emulator.stats["glm-c"]["requests"] == 5

    run(t, *store_url)


def test_identical_concurrent_requests_are_coalesced(store_url: tuple[str, str]) -> None:
    async def t(a: InProcess) -> None:
        spec = {"*": {"text": "slow answer " * 5, "chunk_delay_ms": 20}}
        body = {"task": "cached", "stream": True, "messages": ask("coalesce " + uuid.uuid4().hex, spec)}
        texts = [r.text for r in await asyncio.gather(*(a.client.post("/v1/tasks", json=body) for _ in range(8)))]
        assert all('"type":"end"' in t for t in texts)
        assert a.emulator.stats["glm-c"]["requests"] == 1
        assert sum('"cached":true' in t for t in texts) == 7

    run(t, *store_url)


def test_routes_show_limits(store_url: tuple[str, str]) -> None:
    async def t(a: InProcess) -> None:
        view = (await a.client.get("/v1/routes")).json()
        assert view["limits"]["tasks"]["limited"] == {"rpm": 5, "tpm": 10000}
        assert view["limits"]["models"]["glm/glm-q"] == {"rpm": 2, "tpm": None}
        assert view["tasks"]["cached"]["cache"]["ttl"] == 60
        assert json.dumps(view).count("llmr") == 0

    run(t, *store_url)


def test_a_request_costs_one_store_round_trip_before_and_one_after(redis_url: str, redis_prefix: str) -> None:
    """Caller RPM and TPM limits, a task budget, a cache miss and a provider quota: one Redis
    call before the upstream call (``Store.admit``: one script) and one when the request ends
    (``Store.write_many``: one pipeline with the TPM and spend settlements and the cache entry).
    A hit costs the same two. Counted on the request's own path (background writes aside)."""
    from router.stores.base import STORE_BUDGET

    calls: list[str] = []

    class Counting(RedisStore):
        async def _call(self, coro: Any) -> Any:
            if STORE_BUDGET.get() is not None:  # a request's own call, not a background write
                calls.append(coro.__qualname__)
            return await super()._call(coro)

    text = YAML.replace("""  cached:
    chain: [glm/glm-c]""", """  counted:
    chain: [claude/claude-l]
    limits: {rpm: 100, tpm: 1000000}
    budget: {daily_usd: 100}
    cache: {ttl: 60}
  cached:
    chain: [glm/glm-c]""")

    async def go() -> None:
        store = Counting(redis_url, prefix=redis_prefix, timeout=0.2)
        try:
            async with app(text, store=store) as a:
                assert (await post(a, "counted", "warm up")).status_code == 200  # the circuit's verdict, once
                calls.clear()
                miss = await post(a, "counted", "a new question")
                assert miss.status_code == 200, miss.text
                assert calls == ["AsyncScript.__call__", "RedisStore.write_many.<locals>.run"], calls
                calls.clear()
                hit = await post(a, "counted", "a new question")
                assert hit.status_code == 200 and hit.json()["cached"] is True
                assert calls == ["AsyncScript.__call__", "RedisStore.write_many.<locals>.run"], calls
                rpm = await store.limit_acquire([LimitSpec("{c:alice}:t:counted:rpm", 100, 0)])
                assert rpm.remaining == [97]  # three requests counted, each once
                quota = await store.limit_acquire([LimitSpec("{p:claude}:rpm", 1000, 0)])
                assert quota.remaining == [998]  # two upstream calls: the hit charged no quota
        finally:
            await store.close()

    asyncio.run(go())
