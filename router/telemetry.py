"""Traces, metrics, the request log line and the usage ledger, from one ``RequestRecord`` per request.

Nothing here runs per event: the engine hands over one record when a request ends, and this module
turns it into

* **metrics** (prometheus_client; ``GET /metrics`` in Prometheus text): requests, duration, time
  to first token, output tokens per second, tokens, cost, fallbacks, retries, cache hits and
  misses, rate-limit rejections, cooldown trips and the router's own overhead, labelled by task,
  provider, model, variant and outcome only (never a tenant, key or anything unbounded). With
  ``PROMETHEUS_MULTIPROC_DIR`` set (``serve --workers N`` sets it) every worker writes its values
  there and ``/metrics`` sums them;
* **spans** (opentelemetry-sdk): one per request and one per attempt, with the GenAI semantic
  convention attributes (https://opentelemetry.io/docs/specs/semconv/gen-ai/) and the router's own,
  continuing an incoming ``traceparent``. Exported with OTLP when the standard ``OTEL_*`` variables
  ask for it (``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` or ``OTEL_TRACES_EXPORTER=otlp``), off
  otherwise; metrics go to OTLP too when ``OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT`` is set;
* **one JSON log line** per request (``llm_router.request``), no prompt or output text unless the
  config's ``log_content`` is on, never a secret;
* **the console's feed** (``router.console.feed``): per-minute rollups and the recent requests;
* **the usage ledger** (``router.ledger``): tokens and cost per caller (tenant), task and model per UTC day, in the
  store, for ``GET /v1/usage``; summed in memory and written every ``LEDGER_FLUSH_SECONDS``
  (and at shutdown), so a request costs no store round trip for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from router.console.feed import ConsoleFeed
from router.ledger import LEDGER_FLUSH_SECONDS, UsageLedger
from router.run import RequestRecord
from router.stores import Store

__all__ = ["Telemetry"]

log = logging.getLogger("llm_router.request")
_LAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TPS_BUCKETS = (1, 5, 10, 25, 50, 100, 200, 400, 800, 1600)
_OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


def _env_on(*names: str) -> bool:
    return any(os.environ.get(n) for n in names)


def otel_exporters(signal: str) -> list[Any]:
    """The exporters ``OTEL_TRACES_EXPORTER`` (or ``OTEL_<SIGNAL>_EXPORTER``) names (comma-separated:
    ``otlp``, ``console``, ``none``; any installed exporter), made from the SDK's own entry points
    (groups ``opentelemetry_traces_exporter`` / ``opentelemetry_metrics_exporter``, as the SDK's
    auto-configuration resolves them; ``otlp`` is the OTLP/HTTP exporter installed here, which
    reads ``OTEL_EXPORTER_OTLP_*`` itself). Unset, ``otlp`` when an OTLP endpoint is configured,
    else none (the SDK's default would export to localhost:4318 from every process).
    https://opentelemetry.io/docs/languages/sdk-configuration/general/#otel_traces_exporter"""
    from importlib.metadata import entry_points

    names = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER")
    if names is None:
        names = "otlp" if _env_on("OTEL_EXPORTER_OTLP_ENDPOINT", f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") else "none"
    out = []
    for name in (n.strip() for n in names.split(",")):
        if name in ("", "none"):
            continue
        found = entry_points(group=f"opentelemetry_{signal}_exporter", name="otlp_proto_http" if name == "otlp" else name)
        if not found:
            logging.getLogger("llm_router").warning("OTEL_%s_EXPORTER: no exporter %r is installed; ignored",
                                                    signal.upper(), name)
            continue
        out.append(next(iter(found)).load()())
    return out


class _Prometheus:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        reg = None if self.multiprocess else self.registry
        base = ("task", "provider", "model", "variant")
        self.requests = Counter("llm_router_requests", "Requests answered, by outcome (ok, cached, error)",
                                [*base, "outcome"], registry=reg)
        self.duration = Histogram("llm_router_request_duration_seconds", "Request duration", [*base, "outcome"],
                                  buckets=_LAT_BUCKETS, registry=reg)
        self.ttft = Histogram("llm_router_time_to_first_token_seconds", "Time to the first content event", base,
                              buckets=_LAT_BUCKETS, registry=reg)
        self.tps = Histogram("llm_router_output_tokens_per_second", "Output tokens per second after the first token",
                             base, buckets=_TPS_BUCKETS, registry=reg)
        self.tokens = Counter("llm_router_tokens", "Tokens (kind: input, output, reasoning, cached)",
                              [*base, "kind"], registry=reg)
        self.cost = Counter("llm_router_cost_usd", "Cost in USD from routing.yaml prices", base, registry=reg)
        self.fallbacks = Counter("llm_router_fallbacks", "Moves to the next target", ["task", "from_target", "to_target", "reason"],
                                 registry=reg)
        self.retries = Counter("llm_router_retries", "Retries of a target", ["task"], registry=reg)
        self.cache = Counter("llm_router_cache_requests", "Cache lookups (result: hit, miss)", ["task", "result"], registry=reg)
        self.limited = Counter("llm_router_rate_limited", "Rate-limit rejections (scope: caller, target)", ["task", "scope"],
                               registry=reg)
        self.trips = Counter("llm_router_cooldown_trips", "Circuits opened", ["target"], registry=reg)
        self.hedges = Counter("llm_router_hedges", "Hedged first tokens (outcome: won, lost, failed)",
                              ["task", "outcome"], registry=reg)
        self.overhead = Histogram("llm_router_overhead_seconds", "Time spent outside upstream calls", ["task"],
                                  buckets=_OVERHEAD_BUCKETS, registry=reg)
        # async tasks (router.worker): depth and age are the shared queue's (every replica sees the same: max)
        self.queue_depth = Gauge("llm_router_queue_depth", "Async tasks waiting, by priority", ["priority"],
                                 registry=reg, multiprocess_mode="max")
        self.queue_running = Gauge("llm_router_queue_running", "Async tasks claimed by a worker", registry=reg,
                                   multiprocess_mode="max")
        self.queue_age = Gauge("llm_router_queue_oldest_age_seconds", "Age of the oldest queued or running task",
                               registry=reg, multiprocess_mode="max")
        self.queue_workers = Gauge("llm_router_queue_workers", "Workers (state: total, busy) of this replica",
                                   ["state"], registry=reg, multiprocess_mode="livesum")
        self.queue_done = Counter("llm_router_queue_tasks", "Async tasks finished, by status", ["status"], registry=reg)
        self.callback_failures = Counter("llm_router_callback_failures", "Callback deliveries that failed",
                                         registry=reg)
        self.budget_alerts = Counter("llm_router_budget_alerts", "Budgets that crossed their alert_at (period: daily, monthly)",
                                     ["scope", "period"], registry=reg)

    def text(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


_TRACE_ID = re.compile(r"[0-9a-f]{32}")  # W3C trace-context: lowercase hex only


def _caller_trace(trace: Mapping[str, str] | None) -> str | None:
    """The trace id of the caller's W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<flags>``), if any."""
    parent = (trace or {}).get("traceparent", "")
    parts = parent.split("-")
    if len(parts) == 4 and _TRACE_ID.fullmatch(parts[1]) and parts[1] != "0" * 32:
        return parts[1]
    return None


class Telemetry:
    """One per process. ``tracer_provider``: spans go there (tests pass one with an in-memory
    exporter); ``None`` builds one from the ``OTEL_*`` variables, or disables tracing when they ask
    for no exporter. ``store``: where the usage ledger goes (set by the app);
    ``ledger_flush_seconds``: how long the ledger's sums wait in memory before they are written."""

    def __init__(self, tracer_provider: Any = None, store: Store | None = None,
                 ledger_flush_seconds: float = LEDGER_FLUSH_SECONDS) -> None:
        self.prom = _Prometheus()
        self._cache: dict[tuple[str, ...], tuple[Any, ...]] = {}  # bounded: labels come from the config
        self.ledger = UsageLedger(store, ledger_flush_seconds)
        self.console = ConsoleFeed(self.ledger)  # the console's rollups and recent list, on the same buffer
        self.tracer = None
        if tracer_provider is None:
            span_exporters = otel_exporters("traces")
            if span_exporters:
                tracer_provider = self._tracer_provider(span_exporters)
        if tracer_provider is not None:
            self.tracer = tracer_provider.get_tracer("llm-router")
        if os.environ.get("OTEL_METRICS_EXPORTER", "none") != "none":
            logging.getLogger("llm_router").warning("OTEL_METRICS_EXPORTER: metrics have one system here, Prometheus at /metrics (summed over "
                        "workers); to send them over OTLP, scrape it (the OTel Collector's prometheus receiver)")

    @staticmethod
    def _tracer_provider(exporters: list[Any]) -> Any:
        """The SDK's ``TracerProvider`` (its sampler from ``OTEL_TRACES_SAMPLER``, its resource
        from ``OTEL_RESOURCE_ATTRIBUTES``/``OTEL_SERVICE_NAME``, else ``service.name`` llm-router)
        with a batch processor per exporter."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "llm-router"}))
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return provider

    @property
    def store(self) -> Store | None:
        """Where the usage ledger goes (the app sets it in its lifespan)."""
        return self.ledger.store

    @store.setter
    def store(self, store: Store | None) -> None:
        self.ledger.store = store

    # -- what the app calls ------------------------------------------------------------------
    def metrics_text(self) -> bytes:
        """``/metrics`` in Prometheus text format (summed over workers in multiprocess mode)."""
        return self.prom.text()

    def rate_limited(self, task: str, scope: str) -> None:
        self.prom.limited.labels(task, scope).inc()

    def queue_workers(self, total: int, busy: int) -> None:
        """This replica's worker pool: its size and how many are running a task."""
        self.prom.queue_workers.labels("total").set(total)
        self.prom.queue_workers.labels("busy").set(busy)

    def queue_task_done(self, status: str) -> None:
        """An async task ended (succeeded, failed, cancelled)."""
        self.prom.queue_done.labels(status).inc()

    def budget_alert(self, name: str) -> None:
        """A budget (``"<scope> daily|monthly"``, ``scope`` like ``tenant:billing``) crossed its ``alert_at``."""
        scope, _, period = name.rpartition(" ")
        self.prom.budget_alerts.labels(scope, period).inc()

    def queue_callback_failed(self) -> None:
        self.prom.callback_failures.inc()

    def queue_depth(self, depth: dict[str, Any]) -> None:
        """The queue's depth by priority, running count and oldest age (``Queue.depth``)."""
        for p, n in depth["queued"].items():
            self.prom.queue_depth.labels(p).set(n)
        self.prom.queue_running.set(depth["running"])
        self.prom.queue_age.set(depth["oldest_age"] or 0)

    def _children(self, labels: tuple[str, ...], outcome: str) -> tuple[Any, ...]:
        """The labelled metric children of one (task, provider, model, variant, outcome), made once."""
        key = (*labels, outcome)
        got = self._cache.get(key)
        if got is None:
            p = self.prom
            got = self._cache[key] = (
                p.requests.labels(*labels, outcome), p.duration.labels(*labels, outcome), p.ttft.labels(*labels),
                p.tps.labels(*labels), p.cost.labels(*labels),
                tuple(p.tokens.labels(*labels, k) for k in ("input", "output", "reasoning", "cached")))
        return got

    def record_soon(self, rec: RequestRecord) -> None:
        """``record`` on the event loop's next turn: the request's last bytes go out first, so its
        telemetry (tens of microseconds) is not part of the latency the caller sees."""
        try:
            asyncio.get_running_loop().call_soon(self.record, rec)
        except RuntimeError:  # no running loop
            self.record(rec)

    def record(self, rec: RequestRecord) -> None:
        """Metrics, spans, the log line and the ledger for one finished request."""
        p = self.prom
        labels = (rec.task, rec.provider or "none", rec.model or "none", rec.variant or "")
        requests, duration, ttft, tps, cost, tokens = self._children(labels, rec.outcome)
        requests.inc()
        duration.observe(rec.duration)
        if rec.ttft is not None:
            ttft.observe(rec.ttft)
            if rec.output_tokens and rec.duration > rec.ttft:
                tps.observe(rec.output_tokens / (rec.duration - rec.ttft))
        for child, n in zip(tokens, (rec.input_tokens, rec.output_tokens, rec.reasoning_tokens, rec.cached_tokens),
                            strict=True):
            if n:
                child.inc(n)
        if rec.cost_usd:
            cost.inc(rec.cost_usd)
        for a, b, why in rec.fallbacks:
            p.fallbacks.labels(rec.task, a, b, why).inc()
            if why == "rate_limited":
                p.limited.labels(rec.task, "target").inc()
        if rec.retries:
            p.retries.labels(rec.task).inc(rec.retries)
        if rec.cache:
            p.cache.labels(rec.task, rec.cache).inc()
        for t in rec.cooldown_trips:
            p.trips.labels(t).inc()
        if rec.hedge:
            p.hedges.labels(rec.task, rec.hedge).inc()
        p.overhead.labels(rec.task).observe(rec.overhead)
        trace_id = self._spans(rec, rec.trace or {}) if self.tracer is not None else _caller_trace(rec.trace)
        if log.isEnabledFor(logging.INFO):
            log.info(self.log_fields(rec))
        if self.ledger.store is not None:
            self.console.add(rec, trace_id)
            if rec.provider and rec.outcome != "cached":
                self.ledger.add(rec)

    @staticmethod
    def log_fields(rec: RequestRecord) -> dict[str, Any]:
        """The request's log line: outcome summary; prompt/output only when content logging is on."""
        out: dict[str, Any] = {
            "event": "request", "request_id": rec.request_id, "task": rec.task, "variant": rec.variant,
            "task_version": rec.task_version,
            "caller": rec.caller, "target": f"{rec.provider}/{rec.model}" if rec.provider else None,
            "stream": rec.stream, "status": rec.status, "outcome": rec.outcome, "error": rec.error_code,
            "attempts": [f"{a.target}:{a.outcome}{':' + a.code if a.code else ''}" for a in rec.attempts],
            "latency_ms": round(rec.duration * 1e3, 3), "ttft_ms": round(rec.ttft * 1e3, 3) if rec.ttft is not None else None,
            "overhead_ms": round(rec.overhead * 1e3, 3), "input_tokens": rec.input_tokens,
            "output_tokens": rec.output_tokens, "reasoning_tokens": rec.reasoning_tokens,
            "cached_tokens": rec.cached_tokens, "cache_write_tokens": rec.cache_write_tokens, "cost_usd": rec.cost_usd,
            "usage_estimated": rec.usage_estimated,
            "cached": rec.outcome == "cached",
        }
        if rec.prompt is not None:
            out["prompt"], out["output"] = rec.prompt, rec.output
        return out

    def _spans(self, rec: RequestRecord, headers: Mapping[str, str]) -> str:
        """The request's spans; returns their trace id (32 hex digits)."""
        from opentelemetry import trace
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind, Status, StatusCode

        assert self.tracer is not None
        end_ns = rec.start_ns + int(rec.duration * 1e9)
        root = self.tracer.start_span(f"chat {rec.task}", context=extract(dict(headers)), kind=SpanKind.SERVER,
                                      start_time=rec.start_ns, attributes={
                                          "gen_ai.operation.name": "chat", "llm_router.task": rec.task,
                                          "llm_router.request_id": rec.request_id, "gen_ai.response.id": rec.request_id,
                                          "llm_router.cached": rec.outcome == "cached",
                                          "llm_router.attempts": len(rec.attempts), "llm_router.stream": rec.stream,
                                          **({"llm_router.variant": rec.variant} if rec.variant else {}),
                                          **({"llm_router.task_version": rec.task_version} if rec.task_version else {}),
                                          **({"gen_ai.provider.name": rec.provider, "gen_ai.response.model": rec.model}
                                             if rec.provider else {}),
                                          **self._usage_attrs(rec)})
        ctx = trace.set_span_in_context(root)
        offset = rec.start_ns
        fallback_reasons = {a: why for a, _b, why in rec.fallbacks}
        for i, a in enumerate(rec.attempts):
            provider, _, model = a.target.partition("/")
            took = int((a.latency_ms or 0) * 1e6)
            committed = a.outcome == "ok" or (a.outcome == "error" and i == len(rec.attempts) - 1 and rec.provider == provider
                                               and rec.model == model)
            span = self.tracer.start_span(f"chat {model}", context=ctx, kind=SpanKind.CLIENT, start_time=offset, attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": model,
                "llm_router.attempt": i + 1, "llm_router.target": a.target, "llm_router.outcome": a.outcome,
                "llm_router.retries": a.retries,
                **({"gen_ai.request.max_tokens": rec.max_tokens} if rec.max_tokens else {}),
                **({"error.type": a.code} if a.outcome == "error" and a.code else {}),
                **({"llm_router.cooldown_skip": True} if a.code == "cooldown" else {}),
                **({"llm_router.fallback_reason": fallback_reasons[a.target]} if a.target in fallback_reasons else {}),
                **(self._usage_attrs(rec) | {"gen_ai.response.model": model} if committed else {})})
            if a.outcome == "error":
                span.set_status(Status(StatusCode.ERROR, a.code or "error"))
            span.end(end_time=end_ns if committed else offset + took)
            offset += took
        if rec.outcome == "error":
            root.set_status(Status(StatusCode.ERROR, rec.error_code or "error"))
            root.set_attribute("error.type", rec.error_code or "error")
        root.end(end_time=end_ns)
        return f"{root.get_span_context().trace_id:032x}"

    @staticmethod
    def _usage_attrs(rec: RequestRecord) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if rec.provider:
            out.update({"gen_ai.usage.input_tokens": rec.input_tokens, "gen_ai.usage.output_tokens": rec.output_tokens,
                        "llm_router.cost_usd": rec.cost_usd})
        if rec.finish_reason:
            out["gen_ai.response.finish_reasons"] = [rec.finish_reason]
        return out

    async def flush(self) -> None:
        """Write the usage ledger's pending sums (see ``UsageLedger.flush``)."""
        await self.ledger.flush()

    async def close(self) -> None:
        """Stop the ledger's timed flush and write what is pending (the app's shutdown)."""
        await self.ledger.close()
