"""The performance issue's table, as medians over several runs of ../shared/peer-bench.

    bash ../shared/peer-bench/setup_peers.sh        # once
    ROUTER_BIN=.venv/bin/llm-router TARGETS="direct nginx router router_openai tensorzero portkey litellm" \\
      CONCS="1 64" bash ../shared/peer-bench/run_peers.sh          # twice (or more)
    .venv/bin/python bench/peer_table.py /tmp/peer-bench/results/<run1> /tmp/peer-bench/results/<run2>

Per target: non-streaming req/s at c=64; added p50 at c=1 (target p50 minus ``direct`` p50 in the
same run); stream TTFT added p50 at c=1 and c=64; stream total time added p50 at c=64; the
target's CPU at c=64 non-streaming (% of one core, its whole process tree). Each cell is the median
over the runs, the single runs in brackets.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def load(run_dir: str) -> dict[tuple[str, str, int], Row]:
    """One run's results.jsonl keyed by (label, mode, concurrency)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "results.jsonl").read_text().splitlines() if line.strip()]
    return {(r["label"], r["mode"], r["concurrency"]): r for r in rows}


def cell(values: list[float], fmt: Callable[[float], str]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({', '.join(fmt(v) for v in values)})"


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    runs = [load(d) for d in sys.argv[1:]]
    labels = list(dict.fromkeys(k[0] for run in runs for k in run))

    def values(label: str, mode: str, c: int, get: Callable[[Row], float]) -> list[float]:
        return [get(run[(label, mode, c)]) for run in runs if (label, mode, c) in run]

    def added(label: str, mode: str, c: int, key: str) -> list[float]:
        out = []
        for run in runs:
            a, d = run.get((label, mode, c)), run.get(("direct", mode, c))
            if a is not None and d is not None and a.get(key) and d.get(key) and a[key]["p50"] is not None:
                out.append(a[key]["p50"] - d[key]["p50"])
        return out

    ms = lambda v: f"{v:.2f}"  # noqa: E731
    print("| target | non-stream req/s c=64 | added p50 c=1 ms | stream TTFT added p50 c=1 ms | c=64 ms "
          "| stream total added p50 c=64 ms | CPU % c=64 |")
    print("|---|---|---|---|---|---|---|")
    for label in labels:
        if label == "direct":
            continue
        print(f"| {label} | {cell(values(label, 'nonstream', 64, lambda r: r['rps']), lambda v: f'{v:,.0f}')} "
              f"| {cell(added(label, 'nonstream', 1, 'lat_ms'), ms)} "
              f"| {cell(added(label, 'stream', 1, 'ttft_ms'), ms)} | {cell(added(label, 'stream', 64, 'ttft_ms'), ms)} "
              f"| {cell(added(label, 'stream', 64, 'lat_ms'), ms)} "
              f"| {cell(values(label, 'nonstream', 64, lambda r: r['cpu_pct'].get('target', 0.0)), lambda v: f'{v:.0f}')} |")


if __name__ == "__main__":
    main()
