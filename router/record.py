"""One request's summary, made once when it ends: what telemetry, logs and the usage ledger need."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec

from router.events import (AttemptRecord, End, Event, Fallback, ReasoningDelta, Start, TextDelta, ToolCallDelta,
                           ToolCallStart, Usage)

__all__ = ["RequestRecord", "observe"]


class RequestRecord(msgspec.Struct, kw_only=True):
    """Times in seconds (``start_ns``: epoch nanoseconds); tokens; USD.

    ``outcome``: ``ok``, ``error`` (failed after output began or every target failed) or
    ``cached``. ``usage_estimated``: the stream was cut before the provider reported usage, so the
    tokens are an estimate (prompt estimate; output characters / 4). ``overhead``: time spent
    outside upstream calls (before the first send and after the last upstream event).
    """

    request_id: str
    task: str
    caller: str
    variant: str | None = None
    provider: str = ""
    model: str = ""
    stream: bool = False
    outcome: str = "ok"
    error_code: str | None = None
    status: int = 200
    start_ns: int = 0
    duration: float = 0.0
    ttft: float | None = None
    overhead: float = 0.0
    attempts: list[AttemptRecord] = []
    retries: int = 0
    fallbacks: list[tuple[str, str, str]] = []  # (from, to, reason)
    cooldown_trips: list[str] = []
    cache: str | None = None  # hit | miss | None (no cache for this task, or bypassed)
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    usage_estimated: bool = False
    max_tokens: int | None = None
    finish_reason: str | None = None
    prompt: str | None = None  # only when content logging is on
    output: str | None = None
    trace: dict[str, str] | None = None  # the caller's traceparent/tracestate, continued by the spans


async def observe(events: AsyncIterator[Event], rec: RequestRecord, outcome: Any,
                  observer: Callable[[RequestRecord], None], *, clock: Callable[[], float], prompt_tokens: int,
                  targets: Mapping[str, Any], prompt: Callable[[], str] | None = None) -> AsyncIterator[Event]:
    """Pass ``events`` through; when they end (however), complete ``rec`` and hand it to
    ``observer``. ``outcome`` is the engine's per-request record (attempts, error, trips, upstream
    time). ``prompt``: set when content logging is on."""
    t0 = clock()
    chars = 0
    usage: Usage | None = None
    text: list[str] | None = [] if prompt is not None else None
    try:
        async for ev in events:
            kind = type(ev)  # type checks, not `match`: this runs for every event of every stream
            if kind is TextDelta:
                if rec.ttft is None:
                    rec.ttft = clock() - t0
                chars += len(ev.text)  # type: ignore[union-attr]
                if text is not None:
                    text.append(ev.text)  # type: ignore[union-attr]
            elif kind is ReasoningDelta or kind is ToolCallDelta or kind is ToolCallStart:
                if rec.ttft is None:
                    rec.ttft = clock() - t0
                chars += len(getattr(ev, "text", None) or getattr(ev, "arguments", ""))
            elif kind is Usage:
                usage = ev  # type: ignore[assignment]
            elif kind is Start:
                rec.provider, rec.model = ev.provider, ev.model  # type: ignore[union-attr]
                if ev.cached:  # type: ignore[union-attr]
                    rec.outcome, rec.cache = "cached", "hit"
            elif kind is Fallback:
                rec.fallbacks.append((ev.from_, ev.to, ev.reason))  # type: ignore[union-attr]
            elif kind is End:
                rec.finish_reason = ev.finish_reason  # type: ignore[union-attr]
            yield ev
    finally:
        rec.duration = clock() - t0
        err = outcome.error
        if err is not None or (rec.finish_reason is None and rec.outcome != "cached"):
            rec.outcome = "error"
            rec.error_code = getattr(err, "code", None) or getattr(err, "type", None) or "incomplete"
            rec.status = getattr(err, "status", 502) if err is not None else 499  # 499: the caller left
        if usage is not None:
            rec.input_tokens, rec.output_tokens = usage.input_tokens, usage.output_tokens
            rec.reasoning_tokens, rec.cached_tokens, rec.cost_usd = usage.reasoning_tokens, usage.cached_tokens, usage.cost_usd
        elif outcome.committed and rec.provider:  # cut before the provider reported usage: estimate, and say so
            rec.input_tokens, rec.output_tokens = prompt_tokens, chars // 4
            price = getattr(getattr(targets.get(f"{rec.provider}/{rec.model}"), "spec", None), "price", None)
            rec.cost_usd = price.cost(rec.input_tokens, rec.output_tokens) if price else 0.0
            rec.usage_estimated = True
        rec.retries = sum(a.retries for a in outcome.attempts)
        rec.cooldown_trips = outcome.trips
        rec.overhead = max(0.0, rec.duration - outcome.upstream_time)
        if prompt is not None and text is not None:
            rec.prompt, rec.output = prompt(), "".join(text)
        observer(rec)
