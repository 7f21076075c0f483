"""Router memory: many open streams at once, and RSS over a long run of requests.

    .venv/bin/python bench/memory.py [--streams 2000] [--requests 200000]

1. ``--streams`` concurrent streaming requests held open (each upstream stream sends 20 chunks,
   500 ms apart, so every stream stays open about 10 s); the router's RSS (one worker) is sampled
   while all are open, and the load generator checks how many completed cleanly.
2. ``--requests`` non-streaming requests at concurrency 32; the router's RSS is read after the first
   10% and at the end (a flat RSS is within 5%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import bench_config, running, twenty_words  # noqa: E402
from loadgen import run_load  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def config(emu: str) -> str:
    """The bench task with timeouts long enough for 10-second streams."""
    return bench_config(emu, "{first_token: 60, idle: 60, total: 120}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=200000)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    with running(config) as run:
        baseline = rss_mb(run.router_pid)
        slow = json.dumps({"task": "bench", "stream": True, "messages": twenty_words(chunk_delay_ms=500)}).encode()
        peak = [0.0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(run.router_pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        streams = run_load(run.router + "/v1/tasks", slow, stream=True, concurrency=a.streams,
                           warmup=0.0, duration=12.0).summary()
        stop.set()
        sampler.join()
        print(json.dumps({"open_streams": a.streams, "router_rss_mb_idle": round(baseline, 1),
                          "router_rss_mb_peak": round(peak[0], 1), "streams_completed": streams["requests"],
                          "errors": streams["errors"], "ttft_p50_ms": streams["ttft_p50_ms"]}))

        quick = json.dumps({"task": "bench", "messages": twenty_words()}).encode()
        first = max(1000, a.requests // 10)
        r1 = run_load(run.router + "/v1/tasks", quick, stream=False, concurrency=32, warmup=0.5,
                      duration=first / 1500).summary()
        after_first = rss_mb(run.router_pid)
        done = r1["requests"]
        t0 = time.monotonic()
        while done < a.requests:
            r = run_load(run.router + "/v1/tasks", quick, stream=False, concurrency=32, warmup=0.0,
                         duration=min(30.0, (a.requests - done) / 1500 + 1)).summary()
            done += r["requests"]
        end = rss_mb(run.router_pid)
        print(json.dumps({"requests": done, "router_rss_mb_after_10pct": round(after_first, 1),
                          "router_rss_mb_end": round(end, 1),
                          "growth_pct": round((end - after_first) / after_first * 100, 2),
                          "seconds": round(time.monotonic() - t0, 1)}))
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    asyncio.get_event_loop_policy()
    main()
