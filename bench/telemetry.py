"""What telemetry costs on the request path: metrics, spans and request logs on versus off.

    .venv/bin/python bench/telemetry.py [--duration 4]

Runs the same router three times against the emulator (c=1, non-streaming and streaming):
``off`` (LLM_ROUTER_TELEMETRY=off: no metrics, spans, request log or ledger), ``metrics`` (the
default: metrics, the request log line, the ledger) and ``metrics+traces`` (also spans exported over
OTLP/HTTP to the emulator's OTLP sink, as in production). Reports p50/p99, router CPU per request,
and the added p50 over ``off``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import bench_config, running, twenty_words  # noqa: E402
from loadgen import run_load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=4.0)
    a = ap.parse_args()

    msgs = twenty_words()
    modes = {
        "off": lambda emu: {"LLM_ROUTER_TELEMETRY": "off"},
        "metrics": lambda emu: {},
        "metrics+traces": lambda emu: {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": emu + "/v1/traces"},
    }
    rows: dict[tuple[str, str], dict] = {}  # type: ignore[type-arg]
    for name, env in modes.items():
        with running(bench_config, env=env) as run:
            for mode in ("nonstream", "stream"):
                body = json.dumps({"task": "bench", "messages": msgs, "stream": mode == "stream"}).encode()
                rows[(name, mode)] = run_load(run.router + "/v1/tasks", body, stream=mode == "stream", concurrency=1,
                                              warmup=1, duration=a.duration, watch=[run.router_pid]).summary()
    print("| telemetry | mode | p50 ms | p99 ms | router CPU us/req | added p50 over off ms |")
    print("|---|---|---|---|---|---|")
    for (name, mode), r in rows.items():
        base = rows[("off", mode)]
        print(f"| {name} | {mode} | {r['p50_ms']} | {r['p99_ms']} | {r['cpu_us_per_request']} | "
              f"{round(r['p50_ms'] - base['p50_ms'], 3)} |")


if __name__ == "__main__":
    main()
