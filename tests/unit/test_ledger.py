"""The usage ledger is summed in memory and flushed to Redis: exact totals, nothing lost while
Redis is down, and what is pending is written at shutdown."""

from __future__ import annotations

import asyncio
import time

from router.ledger import usage_report
from router.run import RequestRecord
from router.stores.redis import RedisStore
from router.telemetry import Telemetry


def _rec(i: int, **kw: object) -> RequestRecord:
    return RequestRecord(request_id=f"r{i}", task="t", caller="acme", provider="glm", model="glm-4.6",
                         start_ns=time.time_ns(), input_tokens=100, output_tokens=10 + i, cost_usd=0.001, **kw)


def test_ledger_sums_in_memory_and_survives_a_store_outage(redis_url: str, redis_prefix: str) -> None:
    async def go() -> tuple[dict, dict, dict]:  # type: ignore[type-arg]
        good = RedisStore(redis_url, prefix=redis_prefix, timeout=1.0)
        down = RedisStore("redis://127.0.0.1:1/0", timeout=0.05)  # nothing listens there
        tel = Telemetry(store=down)
        try:
            for i in range(3):
                tel.ledger.add(_rec(i))
            await tel.flush()  # refused: the sums stay pending
            tel.ledger.add(_rec(3, usage_estimated=True, outcome="error"))
            before = await usage_report(good, tenant="acme", task=None, since=time.time() - 86400)
            tel.store = good
            await tel.flush()
            after = await usage_report(good, tenant="acme", task=None, since=time.time() - 86400)
            tel.ledger.add(_rec(4))
            await tel.close()  # shutdown writes the rest
            final = await usage_report(good, tenant="acme", task=None, since=time.time() - 86400)
            return before, after, final
        finally:
            await good.close()
            await down.close()

    before, after, final = asyncio.run(go())
    assert before["total"]["requests"] == 0
    t = after["total"]
    assert (t["requests"], t["input_tokens"], t["output_tokens"], t["estimated_requests"], t["errors"]) == (
        4, 400, 10 + 11 + 12 + 13, 1, 1)
    assert after["total"]["cost_usd"] == 0.004
    assert final["total"]["requests"] == 5 and final["rows"][0]["model"] == "glm/glm-4.6"


def test_ledger_flushes_by_itself(redis_url: str, redis_prefix: str) -> None:
    async def go() -> int:
        store = RedisStore(redis_url, prefix=redis_prefix, timeout=1.0)
        tel = Telemetry(store=store, ledger_flush_seconds=0)
        try:
            tel.ledger.add(_rec(0))
            assert tel.ledger._flusher is not None  # one timed flush is scheduled
            await tel.ledger._flusher
            report = await usage_report(store, tenant="acme", task=None, since=time.time() - 86400)
            return int(report["total"]["requests"])
        finally:
            await tel.close()
            await store.close()

    assert asyncio.run(go()) == 1
