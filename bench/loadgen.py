"""A small closed-loop HTTP/1.1 load generator (asyncio + httptools, uvloop when present).

C connections, each with one request in flight, keep-alive; a warmup, then a fixed window.
Per request: latency (send -> last byte) and, for SSE, time to the first content event.
Loopback targets only. Kept lean so that, sharing two cores with the router, it costs less than
the thing it measures.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

__all__ = ["Result", "cpu_seconds", "run_load"]

_FIRST = re.compile(rb'"text\.delta"|"content":"[^"]|"text_delta"')
_DONE = re.compile(rb'"type":"end"|\[DONE\]|message_stop')  # a stream counts only when its terminator came
perf = time.perf_counter


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` and their children (Linux /proc)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = list(pids)
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids = f.read().split()
                todo += [int(k) for k in kids]
        except (OSError, IndexError, ValueError):
            continue
    return total


class Result:
    """Latencies in seconds; ``ttft`` only for streams; ``errors`` counts failed requests;
    ``cpu_us`` the watched processes' CPU per request in the window (microseconds)."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.ttft: list[float] = []
        self.errors = 0
        self.window = 0.0
        self.cpu_us: float | None = None

    def summary(self) -> dict[str, Any]:
        def pct(xs: list[float], p: float) -> float | None:
            if not xs:
                return None
            s = sorted(xs)
            return round(s[min(len(s) - 1, int(len(s) * p / 100))] * 1e3, 3)

        return {"requests": len(self.lat), "errors": self.errors,
                "rps": round(len(self.lat) / self.window, 1) if self.window else 0,
                "p50_ms": pct(self.lat, 50), "p99_ms": pct(self.lat, 99),
                "ttft_p50_ms": pct(self.ttft, 50), "ttft_p99_ms": pct(self.ttft, 99),
                "cpu_us_per_request": self.cpu_us}


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done_future: asyncio.Future[int] | None = None
        self.t_first = 0.0
        self.done = False
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done_future is not None and not self.done_future.done():
            self.done_future.set_exception(ConnectionError("closed"))

    def on_body(self, body: bytes) -> None:
        buf = self.tail + body
        if not self.t_first and _FIRST.search(buf):
            self.t_first = perf()
        if not self.done and _DONE.search(buf):
            self.done = True
        self.tail = buf[-32:]

    def on_message_complete(self) -> None:
        if self.done_future is not None and not self.done_future.done():
            self.done_future.set_result(self.parser.get_status_code())


async def _worker(host: str, port: int, request: Callable[[], bytes], stream: bool, start: float, stop: float,
                  res: Result) -> None:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Conn, host, port)
    while True:
        conn.done_future, conn.t_first, conn.tail, conn.done = loop.create_future(), 0.0, b"", False
        data = request()
        t0 = perf()
        assert conn.transport is not None
        conn.transport.write(data)
        try:
            status = await asyncio.wait_for(conn.done_future, 60)
        except (ConnectionError, TimeoutError):
            res.errors += 1
            return
        t1 = perf()
        if t0 >= stop:
            break
        if t0 >= start:
            if status != 200 or (stream and not conn.done):
                res.errors += 1
            else:
                res.lat.append(t1 - t0)
                if stream and conn.t_first:
                    res.ttft.append(conn.t_first - t0)
    if conn.transport is not None:
        conn.transport.close()


async def _run(url: str, body: bytes, stream: bool, concurrency: int, warmup: float, duration: float,
               watch: list[int], unique: bool = False) -> Result:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    if not (host == "localhost" or host.startswith("127.")):
        raise SystemExit(f"refusing non-loopback target {host}")

    def framed(b: bytes) -> bytes:
        return (f"POST {u.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(b)}\r\nAuthorization: Bearer bench\r\nx-api-key: bench\r\n"
                f"anthropic-version: 2023-06-01\r\n\r\n").encode() + b

    fixed = framed(body)
    counter = itertools.count()
    run_id = uuid.uuid4().hex[:8].encode()

    def request() -> bytes:  # unique: "@N@" in the body becomes a number never sent before (cache misses)
        return framed(body.replace(b"@N@", b"%s-%d" % (run_id, next(counter)))) if unique else fixed

    res = Result()
    start = perf() + warmup
    stop = start + duration

    async def sample() -> None:
        await asyncio.sleep(max(0.0, start - perf()))
        before = cpu_seconds(watch)
        await asyncio.sleep(max(0.0, stop - perf()))
        res.cpu_us = cpu_seconds(watch) - before

    sampler = asyncio.ensure_future(sample()) if watch else None
    await asyncio.gather(*(_worker(host, port, request, stream, start, stop, res) for _ in range(concurrency)))
    if sampler is not None:
        await sampler
        res.cpu_us = round(res.cpu_us * 1e6 / max(1, len(res.lat)), 1) if res.cpu_us is not None else None
    res.window = duration
    return res


def run_load(url: str, body: bytes, *, stream: bool, concurrency: int, warmup: float = 1.0,
             duration: float = 5.0, watch: list[int] | None = None, unique: bool = False) -> Result:
    """Run one closed-loop load against ``url`` (POST ``body``) and return the latencies, and the
    CPU per request of the ``watch`` processes (and their children) during the window.
    ``unique``: every request's body has ``@N@`` replaced by a new number (so a cache always misses)."""
    try:
        import uvloop

        return uvloop.run(_run(url, body, stream, concurrency, warmup, duration, watch or [], unique))
    except ImportError:  # pragma: no cover
        return asyncio.run(_run(url, body, stream, concurrency, warmup, duration, watch or [], unique))
