"""Medians over the rounds of ``bench/peer_rounds.sh``: one row per variant, TensorZero beside.

    .venv/bin/python bench/peer_rounds.py /tmp/peer-bench/rounds

Reads ``<dir>/r<N>/<variant>/results.jsonl`` (``peers`` holds ``direct`` and ``tensorzero``).
Per variant: non-streamed req/s at c=64 and its ratio to TensorZero's in the same round; added p50
at c=1 (the variant's p50 minus ``direct``'s in the same round, ms); stream TTFT added at c=1 and
c=64; stream total added at c=64; stream req/s at c=64; the target's CPU at c=64 non-streamed (% of
one core). Each cell: the median over the rounds, the rounds in brackets.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def _load(path: Path) -> dict[tuple[str, str, int], Row]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["label"], r["mode"], r["concurrency"]): r for r in rows}


def _cell(values: list[float], digits: int) -> str:
    if not values:
        return ""
    fmt = (lambda v: f"{v:,.0f}") if digits == 0 else (lambda v: f"{v:.{digits}f}")
    med = statistics.median(values)
    return f"{fmt(med)} ({', '.join(fmt(v) for v in values)})" if len(values) > 1 else fmt(med)


def main() -> None:
    root = Path(sys.argv[1])
    rounds = sorted(p for p in root.glob("r*") if p.is_dir())
    variants: list[str] = []
    per: dict[str, dict[str, list[float]]] = {}
    for rnd in rounds:
        peers = _load(rnd / "peers" / "results.jsonl") if (rnd / "peers" / "results.jsonl").exists() else {}
        direct = {k[1:]: v for k, v in peers.items() if k[0] == "direct"}
        tz = {k[1:]: v for k, v in peers.items() if k[0] == "tensorzero"}
        runs: dict[str, dict[tuple[str, int], Row]] = {"tensorzero": tz}
        for d in sorted(rnd.iterdir()):
            if d.name != "peers" and (d / "results.jsonl").exists():
                runs[d.name] = {k[1:]: v for k, v in _load(d / "results.jsonl").items()}
        for name, rows in runs.items():
            if name not in variants:
                variants.append(name)
            m = per.setdefault(name, {})

            def add(key: str, value: float | None, m: dict[str, list[float]] = m) -> None:
                if value is not None:
                    m.setdefault(key, []).append(value)

            ns64, ns1 = rows.get(("nonstream", 64)), rows.get(("nonstream", 1))
            s1, s64 = rows.get(("stream", 1)), rows.get(("stream", 64))
            d_ns1, d_s1, d_s64 = direct.get(("nonstream", 1)), direct.get(("stream", 1)), direct.get(("stream", 64))
            tz64 = tz.get(("nonstream", 64))
            if ns64:
                add("rps", ns64["rps"])
                add("cpu", ns64["cpu_pct"]["target"])
                if tz64:
                    add("x_tz", ns64["rps"] / tz64["rps"])
            if ns1 and d_ns1:
                add("added", ns1["lat_ms"]["p50"] - d_ns1["lat_ms"]["p50"])
            if s1 and d_s1 and "ttft_ms" in s1:
                add("ttft1", s1["ttft_ms"]["p50"] - d_s1["ttft_ms"]["p50"])
            if s64 and d_s64 and "ttft_ms" in s64:
                add("ttft64", s64["ttft_ms"]["p50"] - d_s64["ttft_ms"]["p50"])
                add("total64", s64["lat_ms"]["p50"] - d_s64["lat_ms"]["p50"])
                add("srps", s64["rps"])
    cols = [("rps", "non-stream req/s c=64", 0), ("x_tz", "x TensorZero", 2), ("added", "added p50 c=1 ms", 2),
            ("ttft1", "stream TTFT added c=1 ms", 2), ("ttft64", "TTFT added c=64 ms", 2),
            ("total64", "stream total added c=64 ms", 1), ("srps", "stream req/s c=64", 0),
            ("cpu", "CPU % non-stream c=64", 0)]
    print("| variant | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in variants:
        print(f"| {name} | " + " | ".join(_cell(per[name].get(k, []), dg) for k, _, dg in cols) + " |")


if __name__ == "__main__":
    main()
