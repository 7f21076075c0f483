"""What a failing first target costs.

    .venv/bin/python bench/fallback.py [--duration 4] [--concurrency 1,64]

Starts the emulator and the router, then loads three tasks through the router (non-streaming):

* ``healthy``:  chain [up/m2]                      the no-failure baseline
* ``fallback``: chain [up/m1, up/m2], m1 answers 503 at once (no retry, no cooldown): the cost of
  one failed call plus the switch
* ``cooled``:   chain [cool/m1, up/m2], cool/m1 tripped its circuit on the first failure and stays
  open: the cost of skipping a target in cooldown

and reports each one's p50/p99 and its added p50 over ``healthy``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import running  # noqa: E402
from loadgen import run_load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", default="1,64")
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()

    config = lambda emu: f"""
version: 1
providers:
  up:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: bench
    retry: {{attempts: 1}}
    cooldown: {{failures: 1000000000}}
    models:
      m1: {{context_window: 200000}}
      m2: {{context_window: 200000}}
  cool:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: bench
    retry: {{attempts: 1}}
    cooldown: {{failures: 1, duration: 86400, max_duration: 86400}}
    models:
      m1: {{context_window: 200000}}
tasks:
  healthy: {{chain: [up/m2]}}
  fallback: {{chain: [up/m1, up/m2]}}
  cooled: {{chain: [cool/m1, up/m2]}}
"""  # noqa: E731
    with running(config, a.workers) as run:
        url = run.router + "/v1/tasks"
        directive = 'emulate: {"m1": {"status": 503}, "*": {"text": "%s"}}' % " ".join(f"w{i}" for i in range(20))
        msgs = [{"role": "user", "content": "bench\n" + directive}]
        body = {t: json.dumps({"task": t, "messages": msgs}).encode() for t in ("healthy", "fallback", "cooled")}
        for _ in range(a.workers * 4):  # trip cool/m1 in every worker
            httpx.post(url, content=body["cooled"], timeout=10)
        print("| c | task | p50 ms | p99 ms | req/s | router CPU us/request | added p50 over healthy ms | added CPU us |")
        print("|---|---|---|---|---|---|---|---|")
        for c in (int(x) for x in a.concurrency.split(",")):
            res = {t: run_load(url, body[t], stream=False, concurrency=c, warmup=a.warmup, duration=a.duration,
                               watch=[run.router_pid]).summary() for t in ("healthy", "fallback", "cooled")}
            h = res["healthy"]
            for t, r in res.items():
                print(f"| {c} | {t} | {r['p50_ms']} | {r['p99_ms']} | {r['rps']} | {r['cpu_us_per_request']} | "
                      f"{round(r['p50_ms'] - h['p50_ms'], 3)} | "
                      f"{round(r['cpu_us_per_request'] - h['cpu_us_per_request'], 1)} |", flush=True)


if __name__ == "__main__":
    main()
