"""Drain rate of async tasks against a provider quota, with a replica killed mid-run.

Starts the upstream emulator and N router replicas on one Redis (REDIS_URL, else 127.0.0.1:6379;
a fresh key prefix), submits ``--tasks`` async tasks (round robin over the replicas, each with a
signed callback to a receiver here), SIGKILLs one replica after ``--kill-after`` seconds, sends
one interactive request every ``--interactive-every`` seconds meanwhile, and reports: the drain
time and rate against the quota's share, the most upstream calls in any 60-second window, the
interactive requests refused, tasks lost, run twice, and callbacks delivered more than once.

    .venv/bin/python bench/queue_drain.py --tasks 1000 --rpm 120 --share 0.5 --replicas 3 --kill-after 120

Run by hand (it takes tasks / (rpm * share) minutes); not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from router.emulator import free_port

ROOT = Path(__file__).resolve().parents[1]


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "router", *args], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, **env}, start_new_session=True, cwd=ROOT)


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


class Hooks(BaseHTTPRequestHandler):
    got: Counter[str] = Counter()

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        Hooks.got[json.loads(body)["id"]] += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--rpm", type=int, default=120)
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--kill-after", type=float, default=60.0)
    ap.add_argument("--interactive-every", type=float, default=5.0)
    ap.add_argument("--out", default=None, help="write the report as JSON here too")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="queue-drain-"))
    emu_port = free_port()
    emu = f"http://127.0.0.1:{emu_port}"
    procs = [start(["emulate", "--port", str(emu_port)], tmp / "emu.log", {})]
    (tmp / "routing.yaml").write_text(f"""
version: 1
providers:
  glm:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: k
    limits: {{rpm: {a.rpm}}}
    queue_share: {a.share}
    models:
      glm-4.6: {{context_window: 200000}}
tasks:
  nightly: {{chain: [glm/glm-4.6]}}
queue: {{workers: {a.workers}, visibility_timeout: 10, callback_secret: bench}}
""")
    env = {"REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
           "REDIS_PREFIX": "qbench-" + uuid.uuid4().hex[:8]}
    urls = []
    for i in range(a.replicas):
        port = free_port()
        procs.append(start(["serve", "--config", str(tmp / "routing.yaml"), "--port", str(port)], tmp / f"r{i}.log", env))
        urls.append(f"http://127.0.0.1:{port}")
    hooks = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{hooks.server_address[1]}/done"
    try:
        wait_http(emu + "/health")
        for u in urls:
            wait_http(u + "/healthz")
        t0 = time.time()
        with httpx.Client(timeout=30) as c:
            ids = [c.post(urls[n % len(urls)] + "/v1/tasks", json={
                "task": "nightly", "mode": "async", "callback_url": hook,
                "messages": [{"role": "user", "content": f"job {n}"}]}).json()["id"] for n in range(a.tasks)]
        submitted = time.time() - t0
        interactive: list[int] = []
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(timeout=60) as c:
                while not stop.wait(a.interactive_every):
                    r = c.post(urls[0] + "/v1/tasks", json={"task": "nightly", "messages": [{"role": "user", "content": "now"}]})
                    interactive.append(r.status_code)

        threading.Thread(target=probe, daemon=True).start()
        killed = False
        pending = set(ids)
        with httpx.Client(timeout=30) as c:
            while pending:
                if not killed and time.time() - t0 >= a.kill_after and len(procs) > 2:
                    os.killpg(procs[2].pid, signal.SIGKILL)  # the second replica
                    killed = True
                for tid in list(pending)[:200]:
                    if c.get(urls[0] + f"/v1/tasks/{tid}").json()["status"] in ("succeeded", "failed", "cancelled"):
                        pending.discard(tid)
                time.sleep(1.0)
            drained = time.time() - t0
            done = [c.get(urls[0] + f"/v1/tasks/{tid}").json() for tid in ids]
        stop.set()
        time.sleep(2)
        arrivals = sorted(httpx.get(emu + "/_emulator/arrivals/glm-4.6").json())
        window = max(sum(1 for t in arrivals if s <= t < s + 60) for s in arrivals)
        report = {
            "tasks": a.tasks, "rpm": a.rpm, "queue_share": a.share, "replicas": a.replicas, "workers": a.workers,
            "killed_replica_at_s": a.kill_after if killed else None, "submit_s": round(submitted, 2),
            "drain_s": round(drained, 1), "drain_per_min": round(a.tasks / drained * 60, 1),
            "queue_quota_per_min": a.rpm * a.share,
            "succeeded": sum(d["status"] == "succeeded" for d in done), "failed": sum(d["status"] == "failed" for d in done),
            "run_twice": sum(d["runs"] > 1 for d in done), "upstream_calls": len(arrivals),
            "max_upstream_calls_in_any_60s": window, "interactive": dict(Counter(interactive)),
            "callbacks_delivered": len(Hooks.got), "callbacks_duplicated": sum(1 for n in Hooks.got.values() if n > 1),
        }
        print(json.dumps(report, indent=1))
        if a.out:
            Path(a.out).write_text(json.dumps(report, indent=1))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        hooks.shutdown()
        hooks.server_close()


if __name__ == "__main__":
    main()
