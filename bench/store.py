"""What limits, the cache and metrics cost, with Redis on loopback.

    .venv/bin/python bench/store.py [--redis redis://127.0.0.1:6379/0] [--n 5000] [--duration 4] [--rounds 3]

1. The store calls one request makes, measured alone: its admission (one script) and its
   settlement (one pipeline), p50/p99 over ``--n`` requests, and this client's CPU for both.
2. End to end, concurrency 1, non-streaming, two routers side by side on one emulator:
   *off*: no Redis, telemetry off (``LLM_ROUTER_TELEMETRY=off``), a task without limits or cache;
   *on*: Redis on loopback, metrics, request log and usage ledger on, a task with caller RPM/TPM
   limits, a daily and a monthly budget, a provider quota and budget, and a cache that misses every time (each prompt is new), so the
   lookup, the coalescing lock and the write all happen. Also a cache hit. ``--rounds`` alternates
   the two and reports each round and the median of the added p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import running, twenty_words  # noqa: E402
from loadgen import run_load  # noqa: E402

from router.stores import BudgetSpec, LimitSpec  # noqa: E402
from router.stores.base import AdmitAsk, Write  # noqa: E402
from router.stores.redis import RedisStore  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(len(s) * p / 100))] * 1e3, 3)


async def micro(url: str, n: int, prefix: str) -> dict[str, float]:
    """A request's two store calls alone: the admission script (caller RPM + TPM, two budgets, a
    cache lookup-or-lock that misses, the first target's quota and budget) and the settlement
    pipeline (a TPM and a spend adjustment, the cache entry and its unlock)."""
    store = RedisStore(url, prefix=prefix, timeout=1.0)
    lat, adm, cpu = [], [], 0.0
    try:
        for i in range(n + 200):
            ask = AdmitAsk([LimitSpec("{c:bench}:rpm", 10**9, 1), LimitSpec("{c:bench}:tpm", 10**12, 500)],
                           [BudgetSpec("task:b:d:x", 10**12, 10, 86400), BudgetSpec("task:b:m:x", 10**12, 10, 86400)],
                           f"{i:064d}", 30.0, [LimitSpec("{p:bench}:rpm", 10**9, 1)],
                           [BudgetSpec("provider:b:d:x", 10**12, 10, 86400)])
            c0, t0 = time.process_time(), time.perf_counter()
            await store.admit(ask)
            t1 = time.perf_counter()
            await store.write_many([Write("limit_adjust", ("{c:bench}:tpm", 10**12, -100)),
                                    Write("budget_adjust", ("task:b:d:x", -5, 86400)),
                                    Write("cache_set_unlock", (f"{i:064d}", b"x" * 500, 60))])
            t2 = time.perf_counter()
            if i >= 200:
                lat.append(t2 - t0)
                adm.append(t1 - t0)
                cpu += time.process_time() - c0
    finally:
        await store.close()
    return {"admit+settle p50_ms": pct(lat, 50), "admit+settle p99_ms": pct(lat, 99),
            "admit p50_ms": pct(adm, 50), "client CPU us": round(cpu / n * 1e6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    prefix = "llmr-bench-" + uuid.uuid4().hex[:8]
    print("store calls of one request:", json.dumps(asyncio.run(micro(a.redis, a.n, prefix))))

    def config(emu: str) -> str:
        return f"""
version: 1
providers:
  free:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: bench
    models: {{m: {{context_window: 200000}}}}
  quota:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: bench
    limits: {{rpm: 1000000000}}
    budget: {{daily_usd: 1000000}}
    models: {{m: {{context_window: 200000, price: {{input: 1.0, output: 2.0}}}}}}
tasks:
  plain: {{chain: [free/m]}}
  full: {{chain: [quota/m], limits: {{rpm: 1000000000, tpm: 1000000000000}}, cache: {{ttl: 3600}},
         budget: {{daily_usd: 1000000, monthly_usd: 10000000}}}}
"""

    def body(task: str) -> bytes:
        msgs = twenty_words()
        msgs[0]["content"] = "@N@ " + msgs[0]["content"]
        return json.dumps({"task": task, "messages": msgs}).encode()

    env_on = {"REDIS_URL": a.redis, "REDIS_PREFIX": prefix}
    with running(config, env={"LLM_ROUTER_TELEMETRY": "off"}) as off, running(config, env=env_on) as on:
        rows = []
        for _ in range(a.rounds):
            r_off = run_load(off.router + "/v1/tasks", body("plain"), stream=False, concurrency=1, warmup=1,
                             duration=a.duration, watch=[off.router_pid], unique=True).summary()
            r_on = run_load(on.router + "/v1/tasks", body("full"), stream=False, concurrency=1, warmup=1,
                            duration=a.duration, watch=[on.router_pid], unique=True).summary()
            rows.append((r_off, r_on))
        hit = run_load(on.router + "/v1/tasks", body("full").replace(b"@N@", b"same"), stream=False, concurrency=1,
                       warmup=1, duration=a.duration, watch=[on.router_pid]).summary()
    print()
    print("| round | off: p50 / p99 ms | on (Redis limits + cache miss + metrics): p50 / p99 ms | added p50 ms "
          "| CPU us/req off / on |")
    print("|---|---|---|---|---|")
    added = []
    for i, (r_off, r_on) in enumerate(rows, 1):
        added.append(r_on["p50_ms"] - r_off["p50_ms"])
        print(f"| {i} | {r_off['p50_ms']} / {r_off['p99_ms']} | {r_on['p50_ms']} / {r_on['p99_ms']} "
              f"| {round(added[-1], 3)} | {r_off['cpu_us_per_request']} / {r_on['cpu_us_per_request']} |")
    print(f"\nmedian added p50: {round(statistics.median(added), 3)} ms; "
          f"cache hit (Redis): p50 {hit['p50_ms']} ms, p99 {hit['p99_ms']} ms, CPU {hit['cpu_us_per_request']} us/req")


if __name__ == "__main__":
    main()
