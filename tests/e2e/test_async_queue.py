"""Async tasks over real processes and a real Redis: three replicas drain one queue within a
provider quota, a replica killed (SIGKILL) mid-run loses nothing, and no task completes twice
(each delivers exactly one callback)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from router.emulator import free_port
from tests.e2e._client import directive
from tests.e2e.conftest import Proc

pytestmark = pytest.mark.e2e

RPM = 600  # the provider's quota: 10 per second, paced (queue_share 1.0)
TASKS = 45


def config(emu: str) -> str:
    return f"""
version: 1
providers:
  glm:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: k
    limits: {{rpm: {RPM}}}
    queue_share: 1.0
    models:
      glm-q: {{context_window: 200000}}
tasks:
  nightly:
    chain: [glm/glm-q]
queue: {{workers: 3, visibility_timeout: 1.5, callback_secret: hush}}
"""


class _Hooks(BaseHTTPRequestHandler):
    got: list[tuple[str, bool]] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["content-length"]))
        parts = dict(p.split("=", 1) for p in self.headers["x-llm-router-signature"].split(","))
        ok = hmac.compare_digest(parts["v1"], hmac.new(b"hush", parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest())
        _Hooks.got.append((json.loads(body)["id"], ok))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.mark.slow
def test_three_replicas_drain_within_the_quota_and_a_killed_one_loses_nothing(
        tmp_path: Path, emulator: str, redis_url: str, redis_prefix: str) -> None:
    httpx.post(emulator + "/_emulator/reset")
    (tmp_path / "routing.yaml").write_text(config(emulator))
    hooks = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{hooks.server_address[1]}/done"
    env = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, "REDIS_TIMEOUT_MS": "500"}
    replicas = []
    for i in range(3):
        port = free_port()
        proc = Proc(["serve", "--config", str(tmp_path / "routing.yaml"), "--port", str(port)], tmp_path / f"r{i}.log", env)
        replicas.append((f"http://127.0.0.1:{port}", proc))
    try:
        for url, proc in replicas:
            proc.wait_http(url + "/healthz")
        spec = directive({"*": {"text": "done", "delay_ms": 250}})  # long enough to be mid-run when killed
        ids = []
        with httpx.Client(timeout=10) as c:
            for n in range(TASKS):
                url = replicas[n % 3][0]
                r = c.post(url + "/v1/tasks", json={"task": "nightly", "mode": "async", "callback_url": hook_url,
                                                    "messages": [{"role": "user", "content": f"job {n}\n{spec}"}]})
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(httpx.get(emulator + "/_emulator/arrivals/glm-q").json()) < 12:
                time.sleep(0.05)
            os.killpg(replicas[1][1].p.pid, signal.SIGKILL)  # mid-run: its claimed tasks stay pending
            replicas[1][1].p.wait()
            survivor = replicas[0][0]
            deadline = time.monotonic() + 40
            pending = set(ids)
            while pending and time.monotonic() < deadline:
                for tid in list(pending):
                    if c.get(f"{survivor}/v1/tasks/{tid}").json()["status"] in ("succeeded", "failed", "cancelled"):
                        pending.discard(tid)
                time.sleep(0.1)
            done = [c.get(f"{survivor}/v1/tasks/{tid}").json() for tid in ids]
        assert not pending, f"{len(pending)} tasks never finished"
        assert all(d["status"] == "succeeded" for d in done), [d for d in done if d["status"] != "succeeded"][:2]
        rerun = [d for d in done if d["runs"] > 1]
        assert rerun, "no task was running on the killed replica"  # else this test proved nothing
        arrivals = sorted(httpx.get(emulator + "/_emulator/arrivals/glm-q").json())
        in_any_second = max(sum(1 for t in arrivals if a <= t < a + 1.0) for a in arrivals)
        assert in_any_second <= RPM // 60 + 1  # paced: never over the quota's rate in any window
        deadline = time.monotonic() + 10
        while len(_Hooks.got) < TASKS and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered = [tid for tid, ok in _Hooks.got if ok]
        assert sorted(delivered) == sorted(ids)  # one signed callback per task: none completed twice
    finally:
        for _, proc in replicas:
            proc.stop()
        hooks.shutdown()
        hooks.server_close()
