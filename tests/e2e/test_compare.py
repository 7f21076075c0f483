"""`llm-router compare` against the emulator: known latencies and token counts per target."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e._client import directive

pytestmark = pytest.mark.e2e


def config(emu: str) -> str:
    return f"""
version: 1
providers:
  glm:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: k
    models:
      glm-cmp: {{context_window: 200000, price: {{input: 1.0, output: 2.0}}}}
  claude:
    protocol: anthropic
    base_url: {emu}
    api_key: k
    models:
      claude-cmp: {{context_window: 200000, price: {{input: 3.0, output: 15.0}}}}
tasks:
  t: {{chain: [glm/glm-cmp]}}
"""


SPEC = {"glm-cmp": {"text": "Paris", "delay_ms": 30, "input_tokens": 100, "output_tokens": 10},
        "claude-cmp": {"text": "paris ", "delay_ms": 150, "input_tokens": 100, "output_tokens": 20}}


def task_lines() -> str:
    lines = [json.dumps({"id": "capital", "messages": [{"role": "user", "content": "Capital of France?\n" + directive(SPEC)}]}),
             "{not json",
             json.dumps({"id": "colour", "max_tokens": 50, "messages": [{"role": "user", "content": "Sky colour?\n" + directive(
                 {"glm-cmp": {"text": "blue", "output_tokens": 3}, "claude-cmp": {"text": "Blue, mostly.", "output_tokens": 5}})}]}),
             json.dumps({"id": "broken", "messages": [{"role": "robot", "content": "x"}]})]
    return "\n".join(lines) + "\n"


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run([sys.executable, "-m", "router", "compare", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_compare_in_process_writes_all_three_files(tmp_path: Path, emulator: str) -> None:
    (tmp_path / "routing.yaml").write_text(config(emulator))
    (tmp_path / "tasks.jsonl").write_text(task_lines())
    r = run(["--tasks", "tasks.jsonl", "--targets", "glm/glm-cmp,claude/claude-cmp", "--repeat", "2",
             "--concurrency", "4", "--out", "out", "--config", "routing.yaml"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "line 2: not JSON" in r.stderr and "line 4: messages[0].role" in r.stderr
    rows = [json.loads(x) for x in (tmp_path / "out/results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 2 and not any(r.get("error") for r in rows)
    glm = [r for r in rows if r["target"] == "glm/glm-cmp" and r["task_id"] == "capital"]
    claude = [r for r in rows if r["target"] == "claude/claude-cmp" and r["task_id"] == "capital"]
    assert all(r["output"] == "Paris" and r["output_tokens"] == 10 and r["cost_usd"] == pytest.approx(120e-6) for r in glm)
    assert all(r["output_tokens"] == 20 and r["cost_usd"] == pytest.approx(600e-6) for r in claude)
    assert min(r["latency_ms"] for r in claude) >= 150 > max(r["latency_ms"] for r in glm) - 100
    assert all(r["ttft_ms"] is not None and r["ttft_ms"] <= r["latency_ms"] for r in rows)
    report = (tmp_path / "out/report.md").read_text()
    assert "| glm/glm-cmp | 4 | 1.0 |" in report and "| claude/claude-cmp | 4 | 1.0 |" in report
    assert "| capital | agree |" in report and "| colour | differ |" in report  # whitespace and case are not a difference
    glm_row = next(line for line in report.splitlines() if line.startswith("| glm/glm-cmp |"))
    claude_row = next(line for line in report.splitlines() if line.startswith("| claude/claude-cmp |"))
    assert " / 6.5 |" in glm_row and " / 12.5 |" in claude_row  # mean output tokens: (10+3)/2, (20+5)/2
    assert "line 2: not JSON" in report
    chart = (tmp_path / "out/chart.html").read_text()
    assert chart.count("<svg") == 2 and "glm/glm-cmp" in chart and "<script" not in chart


def test_compare_against_a_running_router(tmp_path: Path, router: str) -> None:
    (tmp_path / "tasks.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi\n" + directive(
        {"*": {"text": "ok", "output_tokens": 2}})}]}) + "\n")
    r = run(["--tasks", "tasks.jsonl", "--targets", "glm/glm-4.6,claude/claude-sonnet-5-5", "--url", router,
             "--out", "o"], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "o/results.jsonl").read_text().splitlines()]
    assert sorted(r["target"] for r in rows) == ["claude/claude-sonnet-5-5", "glm/glm-4.6"]
    assert all(r["output"] == "ok" and r["output_tokens"] == 2 and not r["error"] for r in rows)


def test_interrupting_keeps_what_is_done(tmp_path: Path, emulator: str) -> None:
    (tmp_path / "routing.yaml").write_text(config(emulator))
    fast = {"glm-cmp": {"text": "a"}, "claude-cmp": {"text": "b", "delay_ms": 60000}}
    (tmp_path / "tasks.jsonl").write_text(json.dumps({"id": "slow", "messages": [{"role": "user", "content": "q\n" + directive(fast)}]}) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    p = subprocess.Popen([sys.executable, "-m", "router", "compare", "--tasks", "tasks.jsonl", "--targets",
                          "glm/glm-cmp,claude/claude-cmp", "--out", "o", "--config", "routing.yaml"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = tmp_path / "o/results.jsonl"
    deadline = time.monotonic() + 20
    while not (results.exists() and results.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert "interrupted" in err
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    assert [r["target"] for r in rows] == ["glm/glm-cmp"]
    assert "Interrupted" in (tmp_path / "o/report.md").read_text()
