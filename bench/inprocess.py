"""CPU per request through the whole app in this process: no socket, no emulator process, so the
router's own cost is read without the load generator's and the upstream's noise.

    .venv/bin/python bench/inprocess.py [--requests 10000] [--concurrency 1] [--stream] [--rounds 3]
        [--feature baseline|no-stream-upstream|hedge|schema|no-telemetry|no-console|otel] ...

``--feature`` (repeatable; each is run in turn, alternating, so their medians compare): ``baseline``
(the defaults: upstream streaming, telemetry on), ``no-stream-upstream`` (the provider's
``stream_upstream: false``), ``hedge`` (a hedge armed at 10 s that never fires), ``schema`` (a
structured-output request, its answer validated), ``no-telemetry`` (no reader of the run record:
``LLM_ROUTER_TELEMETRY=off``), ``no-console`` (telemetry without the console's feed) and ``otel``
(spans made and batched to an exporter that drops them).

Requests go to the Litestar app as raw ASGI calls (what uvicorn would hand it); the upstream is a
transport that answers at once (``--concurrency`` > 1: after 2 ms, so that many are in flight) with
a 20-word GLM answer. Reports the median CPU time (``time.process_time``) per request over the
rounds, telemetry on. Compare two trees by running each one's copy in one session, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router.app import create_app
from router.loading import parse_config
from router.settings import Settings
from router.stores import MemoryStore

YAML = """
version: 1
providers:
  glm:
    protocol: openai
    base_url: http://upstream/api/paas/v4
    api_key: k
    models:
      glm-4.6: {context_window: 200000, price: {input: 0.6, output: 2.2}}
tasks:
  bench:
    chain: [glm/glm-4.6]
"""
JSON_ANSWER = '{"total": 12.5, "currency": "EUR", "lines": ["one", "two", "three"]}'
SCHEMA = {"type": "json_schema", "json_schema": {"name": "invoice", "strict": True, "schema": {
    "type": "object", "required": ["total", "currency", "lines"], "additionalProperties": False,
    "properties": {"total": {"type": "number"}, "currency": {"type": "string"},
                   "lines": {"type": "array", "items": {"type": "string"}}}}}}
WORDS = "one two three four five six seven eight nine ten " * 2
BODY = json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "glm-4.6",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": WORDS}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}}).encode()


def _chunk(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _stream(pieces: list[str]) -> list[bytes]:
    return ([_chunk({"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
            + [_chunk({"id": "x", "choices": [{"index": 0, "delta": {"content": w}}]}) for w in pieces]
            + [_chunk({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}}),
               b"data: [DONE]\n\n"])


STREAM = _stream([w + " " for w in WORDS.split()])
JSON_STREAM = _stream([JSON_ANSWER[i * len(JSON_ANSWER) // 20:(i + 1) * len(JSON_ANSWER) // 20] for i in range(20)])
JSON_BODY = BODY.replace(json.dumps(WORDS).encode(), json.dumps(JSON_ANSWER).encode())


class _Response:
    status = 200
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, stream: bool, delay: float, typed: bool = False) -> None:
        self.content_type = "text/event-stream" if stream else "application/json"
        self.delay = delay
        self.typed = typed

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.delay:
            await asyncio.sleep(self.delay)
        for c in JSON_STREAM if self.typed else STREAM:
            yield c

    async def read(self) -> bytes:
        if self.delay:
            await asyncio.sleep(self.delay)
        return JSON_BODY if self.typed else BODY

    def close(self) -> None:
        return None


class _Upstream:
    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def send(self, request: Any, *, connect: float, name: str, provider: str) -> _Response:
        return _Response(b'"stream":true' in request.body, self.delay, b"response_format" in request.body)

    async def aclose(self) -> None:
        return None


class _Drop:
    """An OpenTelemetry span exporter that drops what it is given (spans made and batched, not sent)."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _app(feature: str, concurrency: int) -> Any:
    from router.telemetry import Telemetry

    yaml = YAML
    if feature == "no-stream-upstream":
        yaml = yaml.replace("    api_key: k\n", "    api_key: k\n    stream_upstream: false\n")
    if feature == "hedge":
        yaml = yaml.replace("    chain: [glm/glm-4.6]", "    chain: [glm/glm-4.6]\n    hedge: {after: 10}")
    telemetry = None
    if feature == "otel":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(_Drop()))  # type: ignore[arg-type]
        telemetry = Telemetry(tracer_provider=provider)
    elif feature != "no-telemetry":
        telemetry = Telemetry()
        if feature == "no-console":
            telemetry.console.add = lambda rec, trace_id=None: None  # type: ignore[method-assign]
    return create_app(parse_config(yaml, {}), Settings(telemetry=feature != "no-telemetry"), telemetry=telemetry,
                      transports={"glm": _Upstream(0.002 if concurrency > 1 else 0.0)}, store=MemoryStore())


async def _run(requests: int, concurrency: int, stream: bool, rounds: int, feature: str = "baseline") -> list[float]:
    app = _app(feature, concurrency)
    req: dict[str, Any] = {"task": "bench", "stream": stream, "messages": [{"role": "user", "content": "Say twenty words."}]}
    if feature == "schema":
        req["response_format"] = SCHEMA
    body = json.dumps(req).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/tasks", "raw_path": b"/v1/tasks", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "server": ("router", 80), "client": ("127.0.0.1", 1)}

    async def one() -> None:
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.get_running_loop().create_future()  # the caller stays
            return {}

        status: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        assert status == [200], status

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    out = []
    async with app.lifespan():
        await asyncio.gather(*(worker(max(1, 500 // concurrency)) for _ in range(concurrency)))  # warm up
        for _ in range(rounds):
            t0 = time.process_time()
            await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
            out.append((time.process_time() - t0) / (requests // concurrency * concurrency) * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--feature", action="append", choices=["baseline", "no-stream-upstream", "hedge", "schema",
                                                           "no-telemetry", "no-console", "otel"])
    a = ap.parse_args()
    import logging
    logging.disable(logging.WARNING)
    features = a.feature or ["baseline"]
    got: dict[str, list[float]] = {f: [] for f in features}
    for _ in range(a.rounds):  # alternate the features round by round
        for f in features:
            got[f] += asyncio.run(_run(a.requests, a.concurrency, a.stream, 1, f))
    for f in features:
        print(json.dumps({"feature": f, "mode": "stream" if a.stream else "nonstream", "concurrency": a.concurrency,
                          "cpu_us_per_request": round(statistics.median(got[f]), 1),
                          "rounds": [round(x, 1) for x in got[f]]}))


if __name__ == "__main__":
    main()
