"""Exact cost: cached reads and cache writes priced each at its own rate, for GLM and Claude, in
the usage event, the folded answer and the ledger (with its cache savings)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from router.config import Price
from router.telemetry import Telemetry
from tests.unit._app import InProcess, app

YAML = """
version: 1
providers:
  glm:
    protocol: openai
    base_url: http://emulator/api/paas/v4
    api_key: k
    models:
      glm-4.6: {context_window: 200000, price: {input: 0.60, cached_input: 0.11, output: 2.20}}
  claude:
    protocol: anthropic
    base_url: http://emulator
    api_key: k
    models:
      claude-sonnet-5-5: {context_window: 200000, price: {input: 3.00, cached_input: 0.30, cache_write: 3.75,
                                                          cache_write_1h: 6.00, output: 15.00}}
tasks:
  glm_task: {chain: [glm/glm-4.6]}
  claude_task: {chain: [claude/claude-sonnet-5-5]}
"""


def ask(spec: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": "bill me\nemulate: " + json.dumps({"*": spec})}]


def test_price_classes_by_hand() -> None:
    p = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75, cache_write_1h=6.0)
    # 20,000 prompt tokens: 10,000 read from the cache, 6,000 written (2,000 of them for 1 h); 1,000 out
    assert p.cost(20_000, 1_000, 10_000, 6_000, 2_000) == pytest.approx(
        (4_000 * 3.0 + 10_000 * 0.3 + 4_000 * 3.75 + 2_000 * 6.0 + 1_000 * 15.0) / 1e6)
    assert Price(input=1.0, output=2.0).cost(1_000, 0, 500, 200) == pytest.approx(1_000 / 1e6)  # unset: the input rate
    assert p.savings(10_000) == pytest.approx(10_000 * 2.7 / 1e6)


def test_cached_reads_and_writes_cost_what_the_hand_computation_says() -> None:
    tel = Telemetry(ledger_flush_seconds=60)
    glm_cost = (2_000 * 0.60 + 8_000 * 0.11 + 500 * 2.20) / 1e6
    claude_cost = (4_000 * 3.0 + 10_000 * 0.3 + 4_000 * 3.75 + 2_000 * 6.0 + 1_000 * 15.0) / 1e6
    report: dict[str, Any] = {}

    async def t(a: InProcess) -> None:
        g = await a.client.post("/v1/tasks", json={"task": "glm_task", "messages": ask(
            {"text": "ok", "input_tokens": 10_000, "cached_tokens": 8_000, "output_tokens": 500})})
        assert g.json()["usage"]["cost_usd"] == pytest.approx(glm_cost) and g.json()["usage"]["cached_tokens"] == 8_000
        assert float(g.headers["x-llm-router-cost-usd"]) == pytest.approx(glm_cost)
        body = {"task": "claude_task", "stream": True, "messages": ask(
            {"text": "ok", "input_tokens": 20_000, "cached_tokens": 10_000, "cache_write_tokens": 6_000,
             "cache_write_1h_tokens": 2_000, "output_tokens": 1_000})}
        events = [json.loads(line[6:]) for line in (await a.client.post("/v1/tasks", json=body)).text.splitlines()
                  if line.startswith("data: ")]
        usage = next(e for e in events if e["type"] == "usage")
        assert (usage["input_tokens"], usage["cached_tokens"], usage["cache_write_tokens"], usage["cache_write_1h_tokens"]) \
            == (20_000, 10_000, 6_000, 2_000)
        assert usage["cost_usd"] == pytest.approx(claude_cost)
        await asyncio.sleep(0)
        await tel.flush()
        report.update((await a.client.get("/v1/usage")).json())

    async def go() -> None:
        async with app(YAML, telemetry=tel) as a:
            await t(a)

    asyncio.run(go())
    rows = {r["task"]: r for r in report["rows"]}
    assert rows["glm_task"]["cost_usd"] == pytest.approx(glm_cost, abs=1e-8)
    assert rows["glm_task"]["cache_savings_usd"] == pytest.approx(8_000 * 0.49 / 1e6, abs=1e-8)
    assert rows["claude_task"]["cache_savings_usd"] == pytest.approx(10_000 * 2.7 / 1e6, abs=1e-8)
    assert rows["claude_task"]["cache_write_tokens"] == 6_000
    assert report["total"]["cache_savings_usd"] == pytest.approx((8_000 * 0.49 + 10_000 * 2.7) / 1e6, abs=1e-8)


# -- budgets -------------------------------------------------------------------------------

BUDGETS = """
version: 1
providers:
  glm:
    protocol: openai
    base_url: http://emulator/api/paas/v4
    api_key: k
    models:
      glm-4.6: {context_window: 200000, price: {input: 1.0, output: 1.0}}
  claude:
    protocol: anthropic
    base_url: http://emulator
    api_key: k
    budget: {daily_usd: 0.006}
    models:
      claude-sonnet-5-5: {context_window: 200000, price: {input: 1.0, output: 1.0}}
tasks:
  spend: {chain: [glm/glm-4.6], params: {max_tokens: 4000}}
  claude_first: {chain: [claude/claude-sonnet-5-5, glm/glm-4.6], params: {max_tokens: 4000}}
tenants:
  acme:
    keys: ["%s"]
    budget: {daily_usd: 0.01, monthly_usd: 1.0}
""" % ("sha256:" + __import__("hashlib").sha256(b"acme-key").hexdigest())
ACME = {"authorization": "Bearer acme-key"}


def spend_ask(output_tokens: int) -> list[dict[str, str]]:
    return ask({"text": "ok", "input_tokens": 100, "output_tokens": output_tokens})


def test_a_tenant_over_its_budget_gets_429_budget_exceeded_until_the_day_ends() -> None:
    async def t(a: InProcess) -> None:
        first = await a.client.post("/v1/tasks", json={"task": "spend", "messages": spend_ask(3900)}, headers=ACME)
        assert first.status_code == 200 and float(first.headers["x-llm-router-budget-remaining-usd"]) < 0.01
        second = await a.client.post("/v1/tasks", json={"task": "spend", "messages": spend_ask(3900)}, headers=ACME)
        assert second.status_code == 200  # 0.004 spent, ~0.0041 reserved: fits 0.01
        third = await a.client.post("/v1/tasks", json={"task": "spend", "messages": spend_ask(10)}, headers=ACME)
        assert third.status_code == 429 and third.json()["error"]["type"] == "budget_exceeded"
        import time as _t
        to_midnight = 86400 - _t.time() % 86400
        assert abs(int(third.headers["retry-after"]) - to_midnight) <= 2
        metrics = (await a.client.get("/metrics")).text
        assert 'llm_router_budget_alerts_total{period="daily",scope="tenant:acme"} 1.0' in metrics  # 80% crossed once
        spent = (await a.app.state.live.router.limiter.spend())["tenant:acme"]
        assert spent["daily"]["spent_usd"] == pytest.approx(2 * (100 + 3900) / 1e6)  # settled with the real cost
        assert spent["monthly"]["limit_usd"] == 1.0

    async def go() -> None:
        async with app(BUDGETS) as a:
            await t(a)

    asyncio.run(go())


def test_a_provider_over_its_budget_is_skipped_and_the_chain_moves_on() -> None:
    async def t(a: InProcess) -> None:
        first = await a.client.post("/v1/messages", json={"model": "claude_first", "max_tokens": 4000,
                                                           "messages": spend_ask(3900)}, headers=ACME)
        assert first.json()["model"] == "claude-sonnet-5-5" and first.json()["usage"]["cost_usd"] == pytest.approx(4000 / 1e6)
        s = await a.client.post("/v1/tasks", json={"task": "claude_first", "stream": True, "messages": spend_ask(1)},
                                headers=ACME)
        events = [json.loads(x[6:]) for x in s.text.splitlines() if x.startswith("data: ")]
        assert events[0]["type"] == "fallback" and events[0]["reason"] == "budget"  # 0.004 + 0.0041 > 0.006
        assert next(e for e in events if e["type"] == "start")["provider"] == "glm"
        spend = await a.app.state.live.router.limiter.spend()
        assert spend["provider:claude"]["daily"]["spent_usd"] == pytest.approx(4000 / 1e6)
        streamed = next(e for e in events if e["type"] == "usage")["cost_usd"]
        assert spend["tenant:acme"]["daily"]["spent_usd"] == pytest.approx(4000 / 1e6 + streamed)  # the stream settled, not its estimate

    async def go() -> None:
        async with app(BUDGETS) as a:
            await t(a)

    asyncio.run(go())


def test_four_replicas_on_one_redis_never_spend_past_a_budget_by_more_than_one_estimate(
        redis_url: str, redis_prefix: str) -> None:
    from router.stores.redis import RedisStore

    budget = 0.05
    yaml_text = BUDGETS.replace("budget: {daily_usd: 0.01, monthly_usd: 1.0}", f"budget: {{daily_usd: {budget}}}")

    async def go() -> None:
        stores = [RedisStore(redis_url, prefix=redis_prefix, timeout=2.0) for _ in range(4)]
        try:
            async with app(yaml_text, store=stores[0]) as a, app(yaml_text, store=stores[1]) as b, \
                    app(yaml_text, store=stores[2]) as c, app(yaml_text, store=stores[3]) as d:
                replicas = [a, b, c, d]
                answers = await asyncio.gather(*(replicas[i % 4].client.post(
                    "/v1/tasks", json={"task": "spend", "messages": spend_ask(3000 + i)}, headers=ACME) for i in range(200)))
                ok = [r for r in answers if r.status_code == 200]
                refused = [r for r in answers if r.status_code == 429]
                assert len(ok) + len(refused) == 200 and refused and all(
                    r.json()["error"]["type"] == "budget_exceeded" for r in refused)
                spent = (await a.app.state.live.router.limiter.spend())["tenant:acme"]["daily"]["spent_usd"]
                real = sum(r.json()["usage"]["cost_usd"] for r in ok)
                assert spent == pytest.approx(real, abs=1e-6)  # every reservation settled to the real cost
                estimate = (100 + 4000) / 1e6
                assert real <= budget + estimate
        finally:
            for st in stores:
                await st.close()

    asyncio.run(go())


CACHING = YAML.replace("tasks:\n", """tasks:
  cached_prompt: {chain: [claude/claude-sonnet-5-5, glm/glm-4.6], cache_prompt: true}
""")
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def test_prompt_caching_breakpoints_pass_through_every_door_and_cache_prompt_marks_the_prompt() -> None:
    async def t(a: InProcess) -> None:
        ant = await a.client.post("/v1/messages", json={
            "model": "claude_task", "max_tokens": 50,
            "system": [{"type": "text", "text": "A long policy.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Doc.", "cache_control": {"type": "ephemeral"}},
                                                       {"type": "text", "text": "Question?"}]}]})
        assert ant.status_code == 200, ant.text
        sent = a.emulator.last["claude-sonnet-5-5"]["body"]
        assert sent["system"] == [{"type": "text", "text": "A long policy.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
        assert sent["tools"][0]["cache_control"] == {"type": "ephemeral"}
        assert sent["messages"][0]["content"] == [{"type": "text", "text": "Doc.", "cache_control": {"type": "ephemeral"}},
                                                  {"type": "text", "text": "Question?"}]
        oai = await a.client.post("/v1/chat/completions", json={"model": "claude_task", "messages": [
            {"role": "system", "content": "Rules.", "cache_control": {"type": "ephemeral"}},
            {"role": "user", "content": [{"type": "text", "text": "Big context.", "cache_control": {"type": "ephemeral"}}]}]})
        assert oai.status_code == 200, oai.text
        sent = a.emulator.last["claude-sonnet-5-5"]["body"]
        assert sent["system"] == [{"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}]
        assert sent["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
        glm = await a.client.post("/v1/chat/completions", json={"model": "glm_task", "tools": [TOOL], "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Big.", "cache_control": {"type": "ephemeral"}}]}]})
        assert glm.status_code == 200
        assert "cache_control" not in json.dumps(a.emulator.last["glm-4.6"]["body"])  # GLM caches by itself
        assert a.emulator.last["glm-4.6"]["body"]["tools"] == [TOOL]
        task = await a.client.post("/v1/tasks", json={"task": "cached_prompt", "tools": [TOOL], "messages": [
            {"role": "system", "content": "System prompt."}, {"role": "user", "content": "Hi."}]})
        assert task.status_code == 200
        sent = a.emulator.last["claude-sonnet-5-5"]["body"]
        assert sent["system"] == [{"type": "text", "text": "System prompt.", "cache_control": {"type": "ephemeral"}}]
        assert sent["tools"][-1]["cache_control"] == {"type": "ephemeral"}

    async def go() -> None:
        async with app(CACHING) as a:
            await t(a)

    asyncio.run(go())
