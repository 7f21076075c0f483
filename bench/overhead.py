"""The router's added latency and its throughput, over calling the upstream emulator directly.

    .venv/bin/python bench/overhead.py [--duration 5] [--concurrency 1,64] [--workers 1] [--pin]
        [--words 20] [--no-stream-upstream] [--door tasks|openai] [--modes nonstream,stream]

Starts the emulator and the router (one GLM-style target) as processes on loopback, then for each
mode (non-stream, stream) and concurrency runs the same request directly against the emulator and
through the router's POST /v1/tasks. Reports p50/p99 latency, req/s, stream TTFT, and the router's
added p50/p99 (router minus direct). The load generator shares the machine's cores with both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import bench_config, running, twenty_words
from loadgen import run_load


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Move ``pid`` and every process under it (its workers) to ``cpus``."""
    todo = [pid]
    while todo:
        p = todo.pop()
        os.sched_setaffinity(p, cpus)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
        for t in os.listdir(f"/proc/{p}/task"):  # threads too
            os.sched_setaffinity(int(t), cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", default="1,64")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--modes", default="nonstream,stream")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    ap.add_argument("--door", choices=["tasks", "openai"], default="tasks",
                    help="load POST /v1/tasks, or the OpenAI door POST /v1/chat/completions (the peers' load)")
    ap.add_argument("--words", type=int, default=20, help="words (stream chunks) in each answer")
    ap.add_argument("--no-stream-upstream", action="store_true",
                    help="the provider's stream_upstream: false (a non-streamed caller's call is not streamed)")
    ap.add_argument("--pin", action="store_true",
                    help="the load generator and the emulator on CPU 0, the router on CPU 1 (steadier on a VM)")
    a = ap.parse_args()

    if a.pin:
        os.sched_setaffinity(0, {0})  # inherited by the emulator and the router started next
    with running(lambda emu: bench_config(emu, stream_upstream=not a.no_stream_upstream), a.workers) as run:
        if a.pin:
            pin_tree(run.router_pid, {1})
        emu = run.emulator
        msgs = twenty_words(a.words)
        rows = []
        for mode in a.modes.split(","):
            stream = mode == "stream"
            direct_body = json.dumps({"model": "glm-4.6", "messages": msgs, "stream": stream,
                                      **({"stream_options": {"include_usage": True}} if stream else {})}).encode()
            if a.door == "openai":
                router_body, router_path = direct_body.replace(b'"glm-4.6"', b'"bench"', 1), "/v1/chat/completions"
            else:
                router_body, router_path = json.dumps({"task": "bench", "messages": msgs, "stream": stream}).encode(), "/v1/tasks"
            for c in (int(x) for x in a.concurrency.split(",")):
                d = run_load(emu + "/api/paas/v4/chat/completions", direct_body, stream=stream,
                             concurrency=c, warmup=a.warmup, duration=a.duration).summary()
                r = run_load(run.router + router_path, router_body, stream=stream, concurrency=c,
                             warmup=a.warmup, duration=a.duration, watch=[run.router_pid]).summary()
                row = {"mode": mode, "door": a.door, "words": a.words, "stream_upstream": not a.no_stream_upstream, "concurrency": c, "workers": a.workers, "direct": d, "router": r,
                       "added_p50_ms": round(r["p50_ms"] - d["p50_ms"], 3),
                       "added_p99_ms": round(r["p99_ms"] - d["p99_ms"], 3)}
                if stream:
                    row["added_ttft_p50_ms"] = round(r["ttft_p50_ms"] - d["ttft_p50_ms"], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
        print()
        print("| mode | c | direct p50 / p99 ms | router p50 / p99 ms | added p50 / p99 ms | direct req/s | router req/s "
              "| added TTFT p50 ms | router CPU us/req |")
        print("|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            d, r = row["direct"], row["router"]
            print(f"| {row['mode']} | {row['concurrency']} | {d['p50_ms']} / {d['p99_ms']} | {r['p50_ms']} / {r['p99_ms']} "
                  f"| {row['added_p50_ms']} / {row['added_p99_ms']} | {d['rps']} | {r['rps']} "
                  f"| {row.get('added_ttft_p50_ms', '')} | {r['cpu_us_per_request']} |")


if __name__ == "__main__":
    main()
