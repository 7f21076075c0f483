"""Traces, metrics, request logs, usage and cost."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from router.emulator import free_port
from router.telemetry import Telemetry
from tests.e2e._client import ask, stream_events
from tests.e2e._inproc import FakeTime, serve
from tests.e2e.conftest import Proc

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


@pytest.fixture
def spans():  # type: ignore[no-untyped-def]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, Telemetry(tracer_provider=provider)


def post(url: str, task: str, spec: dict | None = None, headers: dict | None = None) -> httpx.Response:  # type: ignore[type-arg]
    return httpx.post(url + "/v1/tasks", json={"task": task, "messages": ask(uuid.uuid4().hex[:6], spec)},
                      headers=headers, timeout=10)


def settle(pred, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_spans_success_fallback_error_cache_and_traceparent(emulator: str, spans) -> None:  # type: ignore[no-untyped-def]
    exporter, tel = spans
    with serve(obs_yaml(emulator), telemetry=tel, sleep=FakeTime().sleep) as url:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        ok = post(url, "obs", {"*": {"text": "hi", "input_tokens": 10, "output_tokens": 4}},
                  headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        fb = post(url, "obs", {"glm-o": {"status": 503}, "*": {"text": "from claude"}})
        bad = post(url, "obs", {"*": {"status": 400}})
        cached_body = {"*": {"text": "same"}}
        text = "cache me " + uuid.uuid4().hex
        for _ in range(2):
            httpx.post(url + "/v1/tasks", json={"task": "cached", "messages": ask(text, cached_body)}, timeout=10)
    assert (ok.status_code, fb.status_code, bad.status_code) == (200, 200, 502)
    got = exporter.get_finished_spans()
    roots = [s for s in got if s.name.startswith("chat ") and s.attributes.get("llm_router.task")]
    by_id = {s.attributes["llm_router.request_id"]: s for s in roots}
    root = by_id[ok.json()["id"]]
    assert format(root.context.trace_id, "032x") == trace_id  # the incoming traceparent is continued
    assert root.attributes["gen_ai.usage.input_tokens"] == 10 and root.attributes["gen_ai.usage.output_tokens"] == 4
    assert root.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    children = [s for s in got if s.parent is not None and s.parent.span_id == root.context.span_id]
    assert len(children) == 1
    c = children[0].attributes
    assert (c["gen_ai.provider.name"], c["gen_ai.request.model"], c["gen_ai.operation.name"]) == ("glm", "glm-o", "chat")
    assert c["llm_router.attempt"] == 1 and c["gen_ai.response.model"] == "glm-o"
    fb_root = by_id[fb.json()["id"]]
    fb_children = sorted((s for s in got if s.parent is not None and s.parent.span_id == fb_root.context.span_id),
                         key=lambda s: s.attributes["llm_router.attempt"])
    assert [s.attributes["gen_ai.request.model"] for s in fb_children] == ["glm-o", "claude-o"]
    assert fb_children[0].attributes["error.type"] == "503" and fb_children[0].attributes["llm_router.fallback_reason"] == "503"
    bad_root = next(s for s in roots if s.attributes.get("error.type") == "all_targets_failed")
    assert bad_root.status.status_code.name == "ERROR"
    assert any(s.attributes.get("llm_router.cached") for s in roots if s.attributes["llm_router.task"] == "cached")


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_metrics_are_exact(emulator: str) -> None:
    with serve(obs_yaml(emulator), telemetry=Telemetry(), sleep=FakeTime().sleep) as url:
        for _ in range(3):
            post(url, "obs", {"*": {"text": "a", "input_tokens": 7, "output_tokens": 3}})
        post(url, "obs", {"glm-o": {"status": 503}, "*": {"text": "b", "input_tokens": 5, "output_tokens": 2}})
        text = "m " + uuid.uuid4().hex
        for _ in range(2):
            httpx.post(url + "/v1/tasks", json={"task": "cached", "messages": ask(text, {"*": {"text": "c"}})}, timeout=10)
        scraped = httpx.get(url + "/metrics").text
    assert metric(scraped, "llm_router_requests_total", task="obs", model="glm-o", outcome="ok") == 3
    assert metric(scraped, "llm_router_requests_total", task="obs", model="claude-o", outcome="ok") == 1
    assert metric(scraped, "llm_router_tokens_total", task="obs", model="glm-o", kind="output") == 9
    assert metric(scraped, "llm_router_tokens_total", task="obs", model="claude-o", kind="input") == 5
    assert metric(scraped, "llm_router_cost_usd_total", task="obs", model="glm-o") == pytest.approx(3 * (7 * 2 + 3 * 8) / 1e6)
    assert metric(scraped, "llm_router_fallbacks_total", task="obs", reason="503") == 1
    assert metric(scraped, "llm_router_cache_requests_total", task="cached", result="hit") == 1
    assert metric(scraped, "llm_router_cache_requests_total", task="cached", result="miss") == 1
    assert metric(scraped, "llm_router_request_duration_seconds_count", task="obs") == 4
    assert metric(scraped, "llm_router_overhead_seconds_count", task="obs") == 4
    assert metric(scraped, "llm_router_time_to_first_token_seconds_count", task="obs") == 4
    assert "tenant" not in scraped and "zk-obs-SECRET" not in scraped


def test_usage_and_cost_are_exact(emulator: str) -> None:
    with serve(obs_yaml(emulator), telemetry=Telemetry(), sleep=FakeTime().sleep) as url:
        caller = "ledger-" + uuid.uuid4().hex[:6]
        h = {"x-caller": caller}
        whole = post(url, "obs", {"*": {"text": "x", "input_tokens": 1000, "output_tokens": 500}}, headers=h)
        assert whole.json()["usage"]["cost_usd"] == pytest.approx((1000 * 2 + 500 * 8) / 1e6)
        with httpx.Client(timeout=10) as c:
            streamed = stream_events(c, url, {"task": "obs", "messages": ask("s", {"*": {
                "text": "y", "input_tokens": 2000, "output_tokens": 100}})}, headers=h)
            cut = stream_events(c, url, {"task": "obs", "messages": ask("c", {"*": {
                "text": "abcd efgh ijkl mnop", "cut_after": 3}})}, headers=h)
        assert [e for e in streamed if e["type"] == "usage"][0]["cost_usd"] == pytest.approx((2000 * 2 + 100 * 8) / 1e6)
        assert cut[-1]["type"] == "error"
        text = "cache " + uuid.uuid4().hex
        for _ in range(2):
            r = httpx.post(url + "/v1/tasks", json={"task": "cached", "messages": ask(text, {"*": {
                "text": "z", "input_tokens": 10, "output_tokens": 10}})}, headers=h, timeout=10)
        assert r.json()["cached"] is True and r.json()["usage"]["cost_usd"] == 0
        report: dict = {}  # type: ignore[type-arg]

        def ledger_has_all() -> bool:
            report.update(httpx.get(url + "/v1/usage", params={"tenant": caller}).json())
            return report.get("total", {}).get("requests") == 4
        settle(ledger_has_all)
    rows = {r["task"]: r for r in report["rows"]}
    assert report["total"]["requests"] == 4  # 3 on obs, 1 cache miss on cached; the hit cost nothing
    assert rows["obs"]["input_tokens"] >= 3000 and rows["obs"]["estimated_requests"] == 1
    assert rows["cached"]["requests"] == 1 and rows["cached"]["cost_usd"] == pytest.approx((10 * 2 + 10 * 8) / 1e6)
    estimated_cost = rows["obs"]["cost_usd"] - (1000 * 2 + 500 * 8 + 2000 * 2 + 100 * 8) / 1e6
    assert estimated_cost > 0  # the cut stream was charged an estimate, marked as such


def test_cached_input_has_its_own_price() -> None:
    from router.config import Price

    assert Price(input=2.0, output=8.0, cached_input=0.5).cost(1000, 100, cached_tokens=800) == pytest.approx(
        (200 * 2 + 800 * 0.5 + 100 * 8) / 1e6)
    assert Price(input=2.0, output=8.0).cost(1000, 0, cached_tokens=800) == pytest.approx(2000 / 1e6)


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
