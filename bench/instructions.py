"""CPU instructions per request of each feature, counted by valgrind's callgrind (the same count on
every run, whatever else the machine is doing: timings on this VM drift 15-30% between runs).

    .venv/bin/python bench/instructions.py [--feature baseline --feature hedge ...] [--stream] [--jobs 2]

For each feature, runs ``bench/inprocess.py`` (the whole app in process, an upstream that answers at
once) under callgrind at 100 and at 600 requests; the difference over 500 is one request's count,
start-up and imports cancelled out. Takes about a minute per feature (two at a time with --jobs 2).
Needs valgrind (Debian's ``valgrind``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
FEATURES = ["baseline", "no-stream-upstream", "hedge", "schema", "no-telemetry", "no-console", "otel"]


def collected(requests: int, feature: str, stream: bool) -> int:
    """callgrind's total instruction count of one ``inprocess.py`` run."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.%p", sys.executable,
               str(HERE / "inprocess.py"), "--requests", str(requests), "--rounds", "1", "--feature", feature,
               *(["--stream"] if stream else [])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    counts = [int(n) for n in re.findall(r"Collected : (\d+)", out)]
    return sum(counts)


def per_request(feature: str, stream: bool) -> int:
    return (collected(600, feature, stream) - collected(100, feature, stream)) // 500


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feature", action="append", choices=FEATURES)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    features = a.feature or FEATURES
    with ThreadPoolExecutor(a.jobs) as pool:
        counts = dict(zip(features, pool.map(lambda f: per_request(f, a.stream), features), strict=True))
    base = counts.get("baseline")
    for f, n in counts.items():
        print(json.dumps({"feature": f, "mode": "stream" if a.stream else "nonstream", "instructions_per_request": n,
                          **({"vs_baseline": n - base} if base is not None and f != "baseline" else {})}))


if __name__ == "__main__":
    main()
