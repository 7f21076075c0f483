"""A/B outcomes and shadow traffic for tasks with an ``experiment`` or a ``shadow``.

``Tracker.track(...)`` follows one request's events and, when it ends, adds its outcome to its
variant's counters in the store (``exp:<task>:<variant>``; a task with only a shadow counts its
primary answers under ``primary``) and remembers which variant answered (``resp:<id>``, 7 days) so
feedback can be attributed. Writing happens in the background, after the answer.

Shadow calls mirror a sampled fraction of a task's requests to another target, in the background:
the caller's answer is never delayed or changed. They respect the target's provider limits, and are
dropped (counted as ``dropped``), not queued, when ``max_in_flight`` are already running in this
process. Each records latency, TTFT, tokens, cost, finish reason and errors under
``exp:<task>:shadow:<target>``, and the two outputs side by side in a capped log.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from router.events import End, Event, Fallback, ReasoningDelta, Start, TextDelta, ToolCallStart, Usage
from router.experiments import bucket_field
from router.stores import Store, StoreError

__all__ = ["RESPONSE_TTL", "SHADOW_LOG_KEEP", "Tracker"]

RESPONSE_TTL = 7 * 86400  # seconds a response id stays attributable to its variant
SHADOW_LOG_KEEP = 200
_FIRST = (TextDelta, ReasoningDelta, ToolCallStart)


def _fields(latency_ms: float, ttft_ms: float | None, usage: Usage | None, *, error: bool,
            fallbacks: int, cached: bool) -> dict[str, float]:
    f: dict[str, float] = {"requests": 1, "latency_ms_sum": latency_ms, bucket_field("latency", latency_ms): 1}
    if error:
        f["errors"] = 1
    if fallbacks:
        f["fallbacks"] = fallbacks
    if cached:
        f["cached"] = 1
    if ttft_ms is not None:
        f.update({"ttft_n": 1, "ttft_ms_sum": ttft_ms, bucket_field("ttft", ttft_ms): 1})
    if usage is not None:
        f.update({"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens, "cost_usd": usage.cost_usd})
    return f


class _Track:
    """One request's outcome as its events pass."""

    __slots__ = ("t0", "ttft", "usage", "fallbacks", "ended", "cached", "text")

    def __init__(self, t0: float) -> None:
        self.t0, self.ttft, self.usage = t0, None, None
        self.fallbacks, self.ended, self.cached = 0, False, False
        self.text: list[str] = []

    def see(self, ev: Event, now: float) -> None:
        if self.ttft is None and isinstance(ev, _FIRST):
            self.ttft = (now - self.t0) * 1e3
        match ev:
            case TextDelta(text=t):
                self.text.append(t)
            case Usage():
                self.usage = ev
            case Fallback():
                self.fallbacks += 1
            case End():
                self.ended = True
            case Start(cached=cached):
                self.cached = cached


class Tracker:
    """Outcome recording and shadow calls for one router. ``call_one(target, req)`` yields the
    events of one call to one target (quota included); ``clock`` is monotonic seconds."""

    def __init__(self, store: Store, call_one: Callable[..., AsyncIterator[Event]],
                 clock: Callable[[], float] = time.perf_counter, rng: random.Random | None = None) -> None:
        self.store, self.call_one, self.clock = store, call_one, clock
        self.rng = rng or random.Random()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._in_flight: dict[str, int] = {}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, key: str, fields: dict[str, float],
                     then: Callable[[], Awaitable[None]] | None = None) -> None:
        try:
            await self.store.stats_add(key, fields)
            if then is not None:
                await then()
        except StoreError:
            pass  # outcomes are best effort; a failing store never fails a request

    async def track(self, events: AsyncIterator[Event], *, task: str, variant: str, request_id: str,
                    shadow: Any, req: Any) -> AsyncIterator[Event]:
        """Pass ``events`` through, recording the outcome at the end, and start a shadow call
        when the task has one and this request is sampled."""
        t = _Track(self.clock())
        primary: asyncio.Future[str] | None = None
        if shadow is not None and self.rng.random() < shadow.sample:
            primary = asyncio.get_running_loop().create_future()
            self._start_shadow(task, shadow, req, request_id, primary)
        try:
            async for ev in events:
                t.see(ev, self.clock())
                yield ev
        finally:
            latency = (self.clock() - t.t0) * 1e3
            if primary is not None and not primary.done():
                primary.set_result("".join(t.text) if t.ended else "")
            fields = _fields(latency, t.ttft, t.usage, error=not t.ended, fallbacks=t.fallbacks, cached=t.cached)
            self._spawn(self._write(f"exp:{task}:{variant}", fields, lambda: self.store.kv_set(
                f"resp:{request_id}", f"{task}\t{variant}".encode(), RESPONSE_TTL)))

    def _start_shadow(self, task: str, shadow: Any, req: Any, request_id: str, primary: asyncio.Future[str]) -> None:
        key = f"exp:{task}:shadow:{shadow.target}"
        if self._in_flight.get(key, 0) >= shadow.max_in_flight:
            self._spawn(self._write(key, {"dropped": 1}))
            return
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        self._spawn(self._shadow(key, task, shadow.target, req, request_id, primary))

    async def _shadow(self, key: str, task: str, target: str, req: Any, request_id: str,
                      primary: asyncio.Future[str]) -> None:
        t = _Track(self.clock())
        error: str | None = None
        finish: str | None = None
        try:
            async for ev in self.call_one(target, req):
                t.see(ev, self.clock())
                if isinstance(ev, End):
                    finish = ev.finish_reason
        except Exception as e:  # noqa: BLE001 - a shadow's failure is data, never the caller's problem
            error = getattr(e, "code", type(e).__name__)
        finally:
            self._in_flight[key] -= 1
        latency = (self.clock() - t.t0) * 1e3
        if error == "rate_limited":
            await self._write(key, {"dropped": 1})
            return
        try:
            primary_text = await asyncio.wait_for(asyncio.shield(primary), 120)
        except TimeoutError:
            primary_text = ""
        entry = {"id": request_id, "target": target, "latency_ms": round(latency, 3),
                 "ttft_ms": round(t.ttft, 3) if t.ttft is not None else None,
                 "usage": msgspec.to_builtins(t.usage) if t.usage else None, "finish_reason": finish,
                 "error": error, "output": "".join(t.text)[:4000], "primary_output": primary_text[:4000]}
        fields = _fields(latency, t.ttft, t.usage, error=error is not None or finish is None, fallbacks=0, cached=False)
        await self._write(key, fields, lambda: self.store.log_push(
            f"exp:{task}:shadow_log", msgspec.json.encode(entry), SHADOW_LOG_KEEP))
