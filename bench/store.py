"""What limits and the cache cost, with Redis on loopback.

    .venv/bin/python bench/store.py [--redis redis://127.0.0.1:6379/0] [--n 5000] [--duration 4]

1. The store calls one request makes, measured alone: the caller's limit check (RPM + TPM, one
   script) and the cache lookup (one GET), sequentially, p50/p99 over ``--n`` requests.
2. End to end through a router on that Redis, concurrency 1, non-streaming: the same task without
   limits or cache, with limits (caller RPM/TPM and a provider quota), and a cache hit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import running, twenty_words  # noqa: E402
from loadgen import run_load  # noqa: E402

from router.stores import LimitSpec  # noqa: E402
from router.stores.redis import RedisStore  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(len(s) * p / 100))] * 1e3, 3)


async def micro(url: str, n: int, prefix: str) -> dict[str, float]:
    store = RedisStore(url, prefix=prefix, timeout=1.0)
    lat, lim, get = [], [], []
    try:
        for i in range(n + 200):
            t0 = time.perf_counter()
            await store.limit_acquire([LimitSpec("{c:bench}:rpm", 10**9, 1), LimitSpec("{c:bench}:tpm", 10**12, 500)])
            t1 = time.perf_counter()
            await store.cache_get("0" * 64)
            t2 = time.perf_counter()
            if i >= 200:
                lat.append(t2 - t0)
                lim.append(t1 - t0)
                get.append(t2 - t1)
    finally:
        await store.close()
    return {"limit+cache p50_ms": pct(lat, 50), "limit+cache p99_ms": pct(lat, 99),
            "limit p50_ms": pct(lim, 50), "cache GET p50_ms": pct(get, 50)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--duration", type=float, default=4.0)
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
    models: {{m: {{context_window: 200000}}}}
tasks:
  plain: {{chain: [free/m]}}
  limited: {{chain: [quota/m], limits: {{rpm: 1000000000, tpm: 1000000000000}}}}
  cached: {{chain: [free/m], cache: {{ttl: 3600}}}}
"""

    msgs = twenty_words()
    with running(config, env={"REDIS_URL": a.redis, "REDIS_PREFIX": prefix}) as run:
        url = run.router + "/v1/tasks"
        rows = {}
        for task in ("plain", "limited", "cached"):
            body = json.dumps({"task": task, "messages": msgs}).encode()
            rows[task] = run_load(url, body, stream=False, concurrency=1, warmup=1, duration=a.duration,
                                  watch=[run.router_pid]).summary()
    print()
    print("| c=1, non-stream | p50 ms | p99 ms | req/s | router CPU us/req | added p50 over plain ms |")
    print("|---|---|---|---|---|---|")
    for task, label in (("plain", "no limits, no cache"), ("limited", "caller + provider limits (Redis)"),
                        ("cached", "cache hit (Redis)")):
        r = rows[task]
        print(f"| {label} | {r['p50_ms']} | {r['p99_ms']} | {r['rps']} | {r['cpu_us_per_request']} | "
              f"{round(r['p50_ms'] - rows['plain']['p50_ms'], 3)} |")


if __name__ == "__main__":
    main()
