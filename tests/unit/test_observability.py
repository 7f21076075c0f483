"""Traces, metrics, usage and cost, in process: the app with its telemetry over the in-process
transport to the emulator, on the fake clock. (Moved from the e2e suite; log lines of a process and
metrics summed over workers stay there.)"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router.config import Price
from router.telemetry import Telemetry
from tests.e2e._client import ask
from tests.e2e.test_observability import obs_yaml
from tests.unit._app import InProcess, app, sse
from tests.unit._metrics import metric


def run(test: Callable[[InProcess], Awaitable[None]], telemetry: Telemetry) -> None:
    async def go() -> None:
        async with app(obs_yaml("http://emulator"), telemetry=telemetry) as a:
            await test(a)

    asyncio.run(go())


async def post(a: InProcess, task: str, spec: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
    return await a.client.post("/v1/tasks", json={"task": task, "messages": ask(uuid.uuid4().hex[:6], spec)},
                               headers=headers)


def test_spans_success_fallback_error_cache_and_traceparent() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    got: dict[str, httpx.Response] = {}
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    async def t(a: InProcess) -> None:
        got["ok"] = await post(a, "obs", {"*": {"text": "hi", "input_tokens": 10, "output_tokens": 4}},
                               headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        got["fb"] = await post(a, "obs", {"glm-o": {"status": 503}, "*": {"text": "from claude"}})
        got["bad"] = await post(a, "obs", {"*": {"status": 400}})
        text = "cache me " + uuid.uuid4().hex
        for _ in range(2):
            await a.client.post("/v1/tasks", json={"task": "cached", "messages": ask(text, {"*": {"text": "same"}})})
        for _ in range(10):  # telemetry is recorded on the loop's next turn
            await asyncio.sleep(0)

    run(t, Telemetry(tracer_provider=provider))
    ok, fb, bad = got["ok"], got["fb"], got["bad"]
    assert (ok.status_code, fb.status_code, bad.status_code) == (200, 200, 502)
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name.startswith("chat ") and s.attributes.get("llm_router.task")]
    by_id = {s.attributes["llm_router.request_id"]: s for s in roots}
    root = by_id[ok.json()["id"]]
    assert format(root.context.trace_id, "032x") == trace_id  # the incoming traceparent is continued
    assert root.attributes["gen_ai.usage.input_tokens"] == 10 and root.attributes["gen_ai.usage.output_tokens"] == 4
    assert root.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    children = [s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id]
    assert len(children) == 1
    c = children[0].attributes
    assert (c["gen_ai.provider.name"], c["gen_ai.request.model"], c["gen_ai.operation.name"]) == ("glm", "glm-o", "chat")
    assert c["llm_router.attempt"] == 1 and c["gen_ai.response.model"] == "glm-o"
    fb_root = by_id[fb.json()["id"]]
    fb_children = sorted((s for s in spans if s.parent is not None and s.parent.span_id == fb_root.context.span_id),
                         key=lambda s: s.attributes["llm_router.attempt"])
    assert [s.attributes["gen_ai.request.model"] for s in fb_children] == ["glm-o", "claude-o"]
    assert fb_children[0].attributes["error.type"] == "503" and fb_children[0].attributes["llm_router.fallback_reason"] == "503"
    bad_root = next(s for s in roots if s.attributes.get("error.type") == "all_targets_failed")
    assert bad_root.status.status_code.name == "ERROR"
    assert any(s.attributes.get("llm_router.cached") for s in roots if s.attributes["llm_router.task"] == "cached")


def test_metrics_are_exact() -> None:
    got: dict[str, str] = {}

    async def t(a: InProcess) -> None:
        for _ in range(3):
            await post(a, "obs", {"*": {"text": "a", "input_tokens": 7, "output_tokens": 3}})
        await post(a, "obs", {"glm-o": {"status": 503}, "*": {"text": "b", "input_tokens": 5, "output_tokens": 2}})
        text = "m " + uuid.uuid4().hex
        for _ in range(2):
            await a.client.post("/v1/tasks", json={"task": "cached", "messages": ask(text, {"*": {"text": "c"}})})
        await asyncio.sleep(0)  # the last request's telemetry, recorded on the loop's next turn
        got["scraped"] = (await a.client.get("/metrics")).text

    run(t, Telemetry())
    scraped = got["scraped"]
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


def test_usage_and_cost_are_exact() -> None:
    tel = Telemetry()
    report: dict[str, Any] = {}

    async def t(a: InProcess) -> None:
        caller = "ledger-" + uuid.uuid4().hex[:6]
        h = {"x-caller": caller}
        whole = await post(a, "obs", {"*": {"text": "x", "input_tokens": 1000, "output_tokens": 500}}, headers=h)
        assert whole.json()["usage"]["cost_usd"] == pytest.approx((1000 * 2 + 500 * 8) / 1e6)
        body = {"task": "obs", "stream": True, "messages": ask("s", {"*": {"text": "y", "input_tokens": 2000,
                                                                           "output_tokens": 100}})}
        streamed = sse((await a.client.post("/v1/tasks", json=body, headers=h)).text)
        body = {"task": "obs", "stream": True, "messages": ask("c", {"*": {"text": "abcd efgh ijkl mnop", "cut_after": 3}})}
        cut = sse((await a.client.post("/v1/tasks", json=body, headers=h)).text)
        assert next(e for e in streamed if e["type"] == "usage")["cost_usd"] == pytest.approx((2000 * 2 + 100 * 8) / 1e6)
        assert cut[-1]["type"] == "error"
        text = "cache " + uuid.uuid4().hex
        for _ in range(2):
            r = await a.client.post("/v1/tasks", json={"task": "cached", "messages": ask(text, {"*": {
                "text": "z", "input_tokens": 10, "output_tokens": 10}})}, headers=h)
        assert r.json()["cached"] is True and r.json()["usage"]["cost_usd"] == 0
        await asyncio.sleep(0)  # the last request's record, on the loop's next turn
        await tel.flush()  # the ledger's sums, written now instead of 0.5 s later
        report.update((await a.client.get("/v1/usage", params={"tenant": caller})).json())

    run(t, tel)
    rows = {r["task"]: r for r in report["rows"]}
    assert report["total"]["requests"] == 4  # 3 on obs, 1 cache miss on cached; the hit cost nothing
    assert rows["obs"]["input_tokens"] >= 3000 and rows["obs"]["estimated_requests"] == 1
    assert rows["cached"]["requests"] == 1 and rows["cached"]["cost_usd"] == pytest.approx((10 * 2 + 10 * 8) / 1e6)
    estimated_cost = rows["obs"]["cost_usd"] - (1000 * 2 + 500 * 8 + 2000 * 2 + 100 * 8) / 1e6
    assert estimated_cost > 0  # the cut stream was charged an estimate, marked as such


def test_cached_input_has_its_own_price() -> None:
    assert Price(input=2.0, output=8.0, cached_input=0.5).cost(1000, 100, cached_tokens=800) == pytest.approx(
        (200 * 2 + 800 * 0.5 + 100 * 8) / 1e6)
    assert Price(input=2.0, output=8.0).cost(1000, 0, cached_tokens=800) == pytest.approx(2000 / 1e6)


def test_otel_exporters_come_from_the_sdks_own_environment_variables(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    from router.telemetry import otel_exporters

    for var in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    assert otel_exporters("traces") == [] and Telemetry().tracer is None  # nothing asked: nothing exported
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    (exporter,) = otel_exporters("traces")
    assert isinstance(exporter, ConsoleSpanExporter) and Telemetry().tracer is not None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert otel_exporters("traces") == []
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp,nonesuch")
    with caplog.at_level(logging.WARNING):
        got = otel_exporters("traces")
    assert [type(e) for e in got] == [OTLPSpanExporter] and "no exporter 'nonesuch'" in caplog.text
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert [type(e) for e in otel_exporters("traces")] == [OTLPSpanExporter]  # an endpoint alone means otlp
