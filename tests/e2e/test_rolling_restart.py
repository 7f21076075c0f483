"""Zero-downtime restarts: a real load balancer (HAProxy, health-checking /readyz) in front of 3
replicas; each replica in turn gets SIGTERM (it drains: /readyz 503 first, in-flight work
finishes) and is started again, under steady load of answers and streams -> 0 failed requests
and 0 cut streams."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from router.emulator import free_port
from tests.e2e._client import directive
from tests.e2e.conftest import Proc

pytestmark = pytest.mark.e2e

CONFIG = """
version: 1
providers:
  glm:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: k
    models:
      glm-4.6: {{context_window: 200000}}
tasks:
  chat:
    chain: [glm/glm-4.6]
queue: {{workers: 0}}
"""


def haproxy_cfg(front: int, stats: int, ports: list[int]) -> str:
    servers = "\n".join(f"  server r{i} 127.0.0.1:{p} check" for i, p in enumerate(ports))
    return f"""
global
  maxconn 2000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch
  retry-on conn-failure empty-response
frontend fe
  bind 127.0.0.1:{front}
  default_backend routers
frontend stats
  bind 127.0.0.1:{stats}
  stats enable
  stats uri /stats
backend routers
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 100ms fall 1 rise 2
{servers}
"""


def servers_up(stats: int) -> dict[str, str]:
    rows = csv.DictReader(io.StringIO(httpx.get(f"http://127.0.0.1:{stats}/stats;csv", timeout=2).text.lstrip("# ")))
    return {r["svname"]: r["status"] for r in rows if r["pxname"] == "routers" and r["svname"].startswith("r")}


@pytest.mark.slow
def test_a_rolling_restart_behind_haproxy_fails_nothing_and_cuts_no_stream(tmp_path: Path, emulator: str) -> None:
    exe = shutil.which("haproxy")
    if exe is None:
        pytest.fail("haproxy is not installed (.ci/run installs Debian's haproxy)")
    (tmp_path / "routing.yaml").write_text(CONFIG.format(emu=emulator))
    env = {"LLM_ROUTER_DRAIN_GRACE": "0.6", "LLM_ROUTER_DRAIN_TIMEOUT": "10"}
    ports = [free_port() for _ in range(3)]

    def start(i: int) -> Proc:
        return Proc(["serve", "--config", str(tmp_path / "routing.yaml"), "--port", str(ports[i])],
                    tmp_path / f"r{i}-{time.monotonic_ns()}.log", env)

    replicas = [start(i) for i in range(3)]
    front, stats = free_port(), free_port()
    (tmp_path / "haproxy.cfg").write_text(haproxy_cfg(front, stats, ports))
    lb = subprocess.Popen([exe, "-db", "-f", str(tmp_path / "haproxy.cfg")], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    failures: list[str] = []
    counts = {"answers": 0, "streams": 0}
    stop = threading.Event()

    def load(streaming: bool) -> None:
        spec = directive({"*": {"text": "one two three four five six", "chunk_delay_ms": 60 if streaming else 0}})
        with httpx.Client(timeout=20) as c:
            while not stop.is_set():
                try:
                    if streaming:
                        with c.stream("POST", f"http://127.0.0.1:{front}/v1/tasks", json={
                                "task": "chat", "stream": True, "messages": [{"role": "user", "content": "s\n" + spec}]}) as r:
                            body = "".join(r.iter_text())
                        events = [json.loads(x[6:]) for x in body.splitlines() if x.startswith("data: ")]
                        if r.status_code != 200 or not events or events[-1]["type"] != "end":
                            failures.append(f"stream {r.status_code}: {body[-200:]}")
                        counts["streams"] += 1
                    else:
                        r = c.post(f"http://127.0.0.1:{front}/v1/tasks", json={
                            "task": "chat", "messages": [{"role": "user", "content": "a\n" + spec}]})
                        if r.status_code != 200:
                            failures.append(f"answer {r.status_code}: {r.text[:200]}")
                        counts["answers"] += 1
                except httpx.HTTPError as e:
                    failures.append(f"{'stream' if streaming else 'answer'}: {type(e).__name__}: {e}")

    try:
        for i, proc in enumerate(replicas):
            proc.wait_http(f"http://127.0.0.1:{ports[i]}/readyz")
        deadline = time.monotonic() + 15
        while set(servers_up(stats).values()) != {"UP"}:
            assert time.monotonic() < deadline, servers_up(stats)
            time.sleep(0.05)
        threads = [threading.Thread(target=load, args=(s,), daemon=True) for s in (False, False, True, True)]
        for t in threads:
            t.start()
        for i in range(3):  # the rolling restart
            before = dict(counts)
            replicas[i].p.terminate()  # SIGTERM: drain
            if i == 0:  # draining: not ready, and still answering
                deadline = time.monotonic() + 2
                while (ready := httpx.get(f"http://127.0.0.1:{ports[0]}/readyz", timeout=2)).status_code != 503:
                    assert time.monotonic() < deadline
                assert ready.json()["status"] == "draining"
                direct = httpx.post(f"http://127.0.0.1:{ports[0]}/v1/tasks", timeout=5, json={
                    "task": "chat", "messages": [{"role": "user", "content": "still there?"}]})
                assert direct.status_code == 200
            replicas[i].p.wait(20)
            replicas[i].stop()
            replicas[i] = start(i)
            replicas[i].wait_http(f"http://127.0.0.1:{ports[i]}/readyz")
            deadline = time.monotonic() + 15
            while servers_up(stats).get(f"r{i}") != "UP":
                assert time.monotonic() < deadline, servers_up(stats)
                time.sleep(0.05)
            assert counts["answers"] > before["answers"] and counts["streams"] > before["streams"]  # load went on
        stop.set()
        for t in threads:
            t.join(30)
        assert not failures, failures[:5]
        assert counts["answers"] >= 30 and counts["streams"] >= 10
        draining = "draining: /readyz is 503" in "".join(p.read_text() for p in tmp_path.glob("r0-*.log"))
        assert draining  # the replica said it drained
    finally:
        stop.set()
        lb.kill()
        lb.wait()
        for proc in replicas:
            proc.stop()
