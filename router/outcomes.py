"""A/B outcomes and shadow traffic for tasks with an ``experiment`` or a ``shadow``.

``Tracker.finish(run, ...)`` reads one finished request's record (``router.run.Run``) and adds its outcome to its
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

from router.config import Shadow
from router.events import Event, Usage
from router.experiments import bucket_field
from router.output import output_problem
from router.request import TaskRequest
from router.run import Run
from router.stores import Store, StoreError
from router.stores.base import background

__all__ = ["RESPONSE_TTL", "SHADOW_LOG_KEEP", "Tracker"]

RESPONSE_TTL = 7 * 86400  # seconds a response id stays attributable to its variant
SHADOW_LOG_KEEP = 200


def _fields(latency_ms: float, ttft_ms: float | None, usage: Usage | None, *, error: bool,
            fallbacks: int, cached: bool, version: str | None = None, invalid: bool = False) -> dict[str, float]:
    f: dict[str, float] = {"requests": 1, "latency_ms_sum": latency_ms, "latency_sq_n": 1,
                           "latency_ms_sq": latency_ms * latency_ms, bucket_field("latency", latency_ms): 1}
    if version is not None:  # which definition of the task answered (its task_version)
        f[f"version:{version}"] = 1
    if invalid:  # a target's answer failed the output schema (whether or not the chain recovered)
        f["invalid_output"] = 1
    if error:
        f["errors"] = 1
    if fallbacks:
        f["fallbacks"] = fallbacks
    if cached:
        f["cached"] = 1
    if ttft_ms is not None:
        f.update({"ttft_n": 1, "ttft_ms_sum": ttft_ms, "ttft_sq_n": 1, "ttft_ms_sq": ttft_ms * ttft_ms,
                  bucket_field("ttft", ttft_ms): 1})
    if usage is not None:
        f.update({"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens, "cost_usd": usage.cost_usd,
                  "cost_n": 1, "cost_answer_usd": usage.cost_usd, "cost_usd_sq": usage.cost_usd * usage.cost_usd})
    return f


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
        task = background(coro)
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

    def shadow(self, task: str, shadow: Shadow | None, req: TaskRequest,
               request_id: str) -> asyncio.Future[str] | None:
        """Start a shadow call of this request when the task has one and the request is
        sampled; returns the future its comparison waits on for the primary's text."""
        if shadow is None or self.rng.random() >= shadow.sample:
            return None
        primary: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._start_shadow(task, shadow, req, request_id, primary)
        return primary

    def finish(self, run: Run, *, task: str, variant: str, request_id: str,
               primary: asyncio.Future[str] | None, task_version: str | None = None) -> None:
        """Record the outcome of a finished request (read from its ``run``), in the background."""
        duration = run.stop()
        if primary is not None and not primary.done():
            primary.set_result(run.text() if run.ended else "")
        fields = _fields(duration * 1e3, run.ttft * 1e3 if run.ttft is not None else None, run.usage,
                         error=not run.ended, fallbacks=len(run.fallbacks), cached=run.cache == "hit",
                         version=task_version, invalid=any(a.code == "invalid_output" for a in run.attempts))
        self._spawn(self._write(f"exp:{task}:{variant}", fields, lambda: self.store.kv_set(
            f"resp:{request_id}", f"{task}\t{variant}".encode(), RESPONSE_TTL)))

    def _start_shadow(self, task: str, shadow: Shadow, req: TaskRequest, request_id: str,
                      primary: asyncio.Future[str]) -> None:
        key = f"exp:{task}:shadow:{shadow.target}"
        if self._in_flight.get(key, 0) >= shadow.max_in_flight:
            self._spawn(self._write(key, {"dropped": 1}))
            return
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        self._spawn(self._shadow(key, task, shadow.target, req, request_id, primary))

    async def _shadow(self, key: str, task: str, target: str, req: TaskRequest, request_id: str,
                      primary: asyncio.Future[str]) -> None:
        run = Run(self.clock, 0, keep_text=True)
        error: str | None = None
        try:
            async for ev in self.call_one(target, req):
                run.see(ev)
        except Exception as e:  # noqa: BLE001 - a shadow's failure is data, never the caller's problem
            error = getattr(e, "code", type(e).__name__)
        finally:
            self._in_flight[key] -= 1
        latency = run.stop() * 1e3
        finish = run.finish_reason
        if error == "rate_limited":
            await self._write(key, {"dropped": 1})
            return
        try:
            primary_text = await asyncio.wait_for(asyncio.shield(primary), 120)
        except TimeoutError:
            primary_text = ""
        ttft = run.ttft * 1e3 if run.ttft is not None else None
        entry = {"id": request_id, "target": target, "latency_ms": round(latency, 3),
                 "ttft_ms": round(ttft, 3) if ttft is not None else None,
                 "usage": msgspec.to_builtins(run.usage) if run.usage else None, "finish_reason": finish,
                 "error": error, "output": run.text()[:4000], "primary_output": primary_text[:4000]}
        fmt = req.response_format
        invalid = (error is None and finish is not None and fmt is not None and fmt.type != "text"
                   and output_problem(run.text(), fmt) is not None)  # a typed task's shadow: does it give valid output?
        entry["valid_output"] = None if fmt is None or fmt.type == "text" or error is not None else not invalid
        fields = _fields(latency, ttft, run.usage, error=error is not None or finish is None, fallbacks=0, cached=False,
                         invalid=invalid)
        await self._write(key, fields, lambda: self.store.log_push(
            f"exp:{task}:shadow_log", [msgspec.json.encode(entry)], SHADOW_LOG_KEEP))
