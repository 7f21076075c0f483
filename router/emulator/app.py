"""The emulator as a bare ASGI app: both wire protocols on one port.

Routes: ``POST .../chat/completions`` (OpenAI flavour under ``/v1``, GLM flavour elsewhere, e.g.
``/api/paas/v4``), ``POST .../messages`` (Anthropic), ``GET /_emulator/stats``,
``GET /_emulator/last/{model}`` (the last request to a model; its credential only as a SHA-256),
``POST /_emulator/reset``, ``GET /health``, and an OTLP/HTTP sink (``POST /v1/traces``,
``/v1/metrics``, ``/v1/logs``: 200, counted under ``_otlp``) for telemetry benchmarks. A bare ASGI app (no framework) so the bytes on the
wire are exactly the ones ``router.emulator.wire`` builds, chunk by chunk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import msgspec

from router.clock import Clock, LoopClock
from router.emulator import wire
from router.emulator.directive import Behaviour, DirectiveError, find_directive, select

__all__ = ["Emulator", "create_emulator"]

Scope = dict[str, Any]


_PLAIN_HEADERS = frozenset({"host", "content-type", "content-length", "accept", "accept-encoding", "user-agent",
                            "connection", "anthropic-version", "anthropic-beta", "x-request-id", "traceparent"})


class _Cut(Exception):
    """Raised after a partial body to make the server drop the connection (``cut_after``)."""


class Emulator:
    """ASGI callable. ``fixtures``: the only directory ``replay`` may read from."""

    def __init__(self, fixtures: str | Path | None = None, clock: Clock | None = None) -> None:
        self.fixtures = Path(fixtures).resolve() if fixtures else None
        self.clock: Clock = clock or LoopClock()
        self.stats: dict[str, dict[str, int]] = defaultdict(
            lambda: {"requests": 0, "completed": 0, "aborted": 0, "cut": 0, "failed": 0})
        self._seen: dict[str, int] = defaultdict(int)
        self.last: dict[str, Any] = {}  # model -> {"path", "headers" (no credentials), "body"}
        self.arrivals: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=100_000))  # model -> wall times

    async def _count(self, path: str, receive: Any, send: Any) -> None:
        """Anthropic's ``count_tokens`` (``{"input_tokens": N}``) or Z.ai's tokenizer
        (``{"usage": {"prompt_tokens": N}}``), N the prompt's characters / 4 here; a directive's
        ``status`` answers that error instead. Kept in ``last["_count_tokens"]`` / ``["_tokenizer"]``."""
        counted = json.loads(await _read_body(receive) or b"{}")
        kind = "_tokenizer" if path.endswith("/tokenizer") else "_count_tokens"
        self.stats[kind]["requests"] += 1
        self.last[kind] = {"path": path, "body": counted}
        status = select(find_directive(counted), str(counted.get("model", ""))).status
        if status is not None and status >= 400:
            return await _send_json(send, status, {"error": {"message": "emulated count failure"}})
        n = max(1, len(json.dumps([counted.get("system"), counted.get("messages"), counted.get("tools")])) // 4)
        if kind == "_count_tokens":
            return await _send_json(send, 200, {"input_tokens": n})
        return await _send_json(send, 200, {"id": "emulated", "created": int(time.time()), "request_id": "emulated",
                                            "usage": {"prompt_tokens": n}})

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/_emulator/stats":
            return await _send_json(send, 200, dict(self.stats))
        if method == "GET" and path.startswith("/_emulator/arrivals/"):  # when each request of a model arrived
            return await _send_json(send, 200, list(self.arrivals.get(path.removeprefix("/_emulator/arrivals/"), ())))
        if method == "GET" and path.startswith("/_emulator/last/"):
            last = self.last.get(path.removeprefix("/_emulator/last/"))
            return await _send_json(send, 200 if last else 404, last or {"error": "no request seen"})
        if method == "POST" and path == "/_emulator/reset":
            self.stats.clear()
            self._seen.clear()
            self.last.clear()
            self.arrivals.clear()
            return await _send_json(send, 200, {"reset": True})
        if method == "GET" and path in ("/health", "/healthz"):
            return await _send_json(send, 200, {"status": "ok"})
        if method == "POST" and path in ("/v1/traces", "/v1/metrics", "/v1/logs"):  # an OTLP/HTTP sink
            size = len(await _read_body(receive))
            self.stats["_otlp"]["requests"] += 1
            self.stats["_otlp"]["completed"] += size > 0
            return await _send(send, 200, [(b"content-type", b"application/x-protobuf")], b"")
        if method == "POST" and path.endswith(("/v1/messages/count_tokens", "/paas/v4/tokenizer")):
            return await self._count(path, receive, send)
        if method != "POST" or not path.endswith(("/chat/completions", "/messages")):
            return await _send_json(send, 404, {"error": {"message": f"no route {method} {path}"}})
        raw = await _read_body(receive)
        try:
            body = json.loads(raw)
            directive = find_directive(body)
        except (ValueError, DirectiveError) as e:
            return await _send_json(send, 400, {"error": {"code": "1214", "message": str(e)[:200]}})
        model = str(body.get("model", ""))
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        credential = headers.pop("x-api-key", None) or headers.pop("authorization", "").removeprefix("Bearer ")
        headers.pop("authorization", None)
        # only protocol headers keep their values: a provider's extra headers may carry secrets
        headers = {k: v if k in _PLAIN_HEADERS else "<redacted>" for k, v in headers.items()}
        self.last[model] = {"path": path, "body": body, "headers": headers,
                            "credential_sha256": hashlib.sha256(credential.encode()).hexdigest() if credential else None}
        stats = self.stats[model]
        stats["requests"] += 1
        self.arrivals[model].append(self.clock.wall())
        disconnected = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, disconnected))
        try:
            outcome = await self._answer(path, body, raw, select(directive, model), model, send,
                                         disconnected)
            stats[outcome] += 1
        except _Cut:
            stats["cut"] += 1
            raise
        finally:
            watcher.cancel()

    async def _answer(self, path: str, body: dict[str, Any], raw: bytes, b: Behaviour, model: str,
                      send: Any, disconnected: asyncio.Event) -> str:
        anthropic = path.endswith("/messages")
        glm = not anthropic and not path.startswith("/v1/")
        stream = bool(body.get("stream"))
        if b.hang:
            await disconnected.wait()
            return "aborted"
        if b.delay_ms and await _wait(self.clock, disconnected, b.delay_ms):
            return "aborted"
        failing = b.status is not None and (b.status >= 400 or (b.status == 200 and b.error_code is not None))
        if failing and b.times is not None:
            key = hashlib.sha256(path.encode() + raw).hexdigest()
            self._seen[key] += 1
            failing = self._seen[key] <= b.times
        if failing:
            return await _fail(b, anthropic, glm, send)
        if b.replay:
            return await self._replay(b, send, disconnected)
        s = wire.script(b, body, model, "toolu_" if anthropic else "call_")
        if not stream:
            data = wire.anthropic_json(s, model) if anthropic else wire.openai_json(s, model, glm)
            if b.cut_after is not None:  # a declared length, half the bytes, then the drop
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
                await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
                raise _Cut()
            await _send(send, 200, [(b"content-type", b"application/json")], data)
            return "completed"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = wire.anthropic_stream(s, model) if anthropic else wire.openai_stream(s, model, glm, include_usage)
        if b.no_terminator:
            chunks.pop()  # data: [DONE] / message_stop
        if b.malformed is not False:
            at = 1 if b.malformed is True else int(b.malformed)
            chunks.insert(min(at, len(chunks)), b'data: {"choices":[{"delta":{"content":"brok\n\n')
        ctype = b"text/event-stream; charset=utf-8" if anthropic else b"text/event-stream;charset=UTF-8"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", ctype), (b"cache-control", b"no-cache")]})
        for i, chunk in enumerate(chunks):
            if b.cut_after is not None and i >= b.cut_after:
                if b.error_code and b.status is None:
                    err = wire.anthropic_stream_error(b.error_code) if anthropic else \
                        wire.openai_stream_error(b.error_code)
                    await send({"type": "http.response.body", "body": err, "more_body": False})
                    return "completed"
                raise _Cut()
            if disconnected.is_set():
                return "aborted"
            if i and b.chunk_delay_ms and await _wait(self.clock, disconnected, b.chunk_delay_ms):
                return "aborted"
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return "aborted" if disconnected.is_set() else "completed"

    async def _replay(self, b: Behaviour, send: Any, disconnected: asyncio.Event) -> str:
        assert b.replay is not None
        path = (self.fixtures / b.replay).resolve() if self.fixtures else None
        if path is None or not path.is_file() or not path.is_relative_to(self.fixtures):  # type: ignore[arg-type]
            await _send_json(send, 404, {"error": {"code": "replay_not_found",
                                                   "message": "replay file not found in --fixtures"}})
            return "failed"
        data = path.read_bytes()
        if path.suffix != ".sse":
            await _send(send, b.status or 200, [(b"content-type", b"application/json")], data)
            return "completed"
        await send({"type": "http.response.start", "status": b.status or 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        for i, part in enumerate(data.split(b"\n\n")):
            if not part.strip():
                continue
            if b.cut_after is not None and i >= b.cut_after:
                raise _Cut()
            if (b.chunk_delay_ms and await _wait(self.clock, disconnected, b.chunk_delay_ms)) or disconnected.is_set():
                return "aborted"
            await send({"type": "http.response.body", "body": part + b"\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return "completed"


async def _fail(b: Behaviour, anthropic: bool, glm: bool, send: Any) -> str:
    """The scripted error status, in the protocol's own error body (Anthropic also says
    ``x-should-retry``), with ``retry-after`` when scripted."""
    assert b.status is not None
    headers = [(b"content-type", b"application/json")]
    if b.retry_after is not None:
        headers.append((b"retry-after", _num(b.retry_after)))
    if anthropic:
        retry = b.status in (408, 409, 429, 500, 502, 503, 504, 529)
        headers.append((b"x-should-retry", b"true" if retry else b"false"))
        err = wire.anthropic_error(b.status, b.error_code, b.error_message)
    else:
        err = wire.openai_error(b.status, b.error_code, glm, b.error_message)
    await _send(send, b.status, headers, err)
    return "failed"


def _num(x: float) -> bytes:
    return (str(int(x)) if float(x).is_integer() else str(x)).encode()


async def _wait(clock: Clock, disconnected: asyncio.Event, ms: float) -> bool:
    """Sleep ``ms`` milliseconds on ``clock``; True if the client went away meanwhile."""
    if disconnected.is_set():
        return True
    left = asyncio.ensure_future(disconnected.wait())
    slept = asyncio.ensure_future(clock.sleep(ms / 1000))
    try:
        await asyncio.wait((left, slept), return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        slept.cancel()
    return disconnected.is_set()


async def _read_body(receive: Any) -> bytes:
    parts = []
    while True:
        msg = await receive()
        parts.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(parts)


async def _watch_disconnect(receive: Any, flag: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    flag.set()


async def _send(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Any, status: int, obj: Any) -> None:
    await _send(send, status, [(b"content-type", b"application/json")], msgspec.json.encode(obj))


def create_emulator(fixtures: str | Path | None = None, clock: Clock | None = None) -> Emulator:
    """A new emulator app with its own stats; ``fixtures`` bounds ``replay``; ``clock`` times its
    delays (real time unless a test injects a ``FakeClock``)."""
    return Emulator(fixtures, clock)
