"""What of observability crosses processes: the JSON log lines of a router process, and metrics
summed over workers. (Spans, exact metrics, usage and cost run in process:
tests/unit/test_observability.py.)"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from router.emulator import free_port
from tests.e2e._client import ask
from tests.e2e.conftest import Proc
from tests.unit._metrics import metric

pytestmark = pytest.mark.e2e


def obs_yaml(emu: str, log_content: bool = False) -> str:
    return f"""
version: 1
log_content: {str(log_content).lower()}
providers:
  glm:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: ${{ZAI_API_KEY:-zk-obs-SECRET-4411}}
    retry: {{attempts: 1}}
    cooldown: {{failures: 1000}}
    models:
      glm-o: {{context_window: 200000, price: {{input: 2.0, output: 8.0, cached_input: 0.5}}}}
  claude:
    protocol: anthropic
    base_url: {emu}
    api_key: k
    retry: {{attempts: 1}}
    models:
      claude-o: {{context_window: 200000, price: {{input: 3.0, output: 15.0}}}}
tasks:
  obs:
    chain: [glm/glm-o, claude/claude-o]
  cached:
    chain: [glm/glm-o]
    cache: {{ttl: 60}}
"""


def settle(pred, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``pred`` (another process writes what it reads) for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_logs_are_json_without_secrets_or_content(tmp_path: Path, emulator: str) -> None:
    prompt = "PROMPT-TEXT-" + uuid.uuid4().hex[:8]
    for log_content in (False, True):
        (tmp_path / "routing.yaml").write_text(obs_yaml(emulator, log_content))
        port = free_port()
        proc = Proc(["serve", "--config", str(tmp_path / "routing.yaml"), "--port", str(port)],
                    tmp_path / f"log{log_content}.log", {"ZAI_API_KEY": "zk-obs-SECRET-4411"})
        url = f"http://127.0.0.1:{port}"
        try:
            proc.wait_http(url + "/healthz")
            r = httpx.post(url + "/v1/tasks", json={"task": "obs", "messages": [{"role": "user", "content": prompt}]},
                           headers={"x-request-id": "trace-me-1"})
            assert r.headers["x-request-id"] == "trace-me-1" and r.json()["id"] == "trace-me-1"
            time.sleep(0.2)
        finally:
            proc.stop()
        lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
        assert lines and all("level" in x for x in lines)
        req = [x for x in lines if x.get("event") == "request"]
        assert len(req) == 1 and req[0]["request_id"] == "trace-me-1" and req[0]["target"] == "glm/glm-o"
        assert req[0]["latency_ms"] > 0 and req[0]["cost_usd"] > 0 and req[0]["status"] == 200
        assert "zk-obs-SECRET-4411" not in proc.output()
        assert (prompt in proc.output()) is log_content


def test_metrics_sum_over_workers(tmp_path: Path, emulator: str) -> None:
    (tmp_path / "routing.yaml").write_text(obs_yaml(emulator))
    port = free_port()
    proc = Proc(["serve", "--config", str(tmp_path / "routing.yaml"), "--port", str(port), "--workers", "2"],
                tmp_path / "w.log")
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url + "/healthz")
        settle(lambda: len({httpx.get(url + "/readyz").json().get("pid") for _ in range(10)}) == 2, 10)
        pids = set()
        for i in range(20):
            r = httpx.post(url + "/v1/tasks", json={"task": "obs", "messages": ask(f"w{i}")}, timeout=10)
            assert r.status_code == 200
            pids.add(httpx.get(url + "/readyz").json()["pid"])
        totals = {metric(httpx.get(url + "/metrics").text, "llm_router_requests_total", task="obs") for _ in range(6)}
    finally:
        proc.stop()
    assert len(pids) == 2 and totals == {20.0}  # whichever worker is scraped, the sum is the same
