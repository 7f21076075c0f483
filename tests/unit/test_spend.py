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
