"""The one per-request record: ``Run`` sees every event of a request once, as it leaves.

The pipeline calls ``run.see(event)`` at the single point where events leave the router (after
numbering). Everything else reads the run and nothing re-sniffs the stream: TTFT, usage, the
answering provider and model, fallbacks and the finish reason are computed here; the chain walk
adds its facts (attempts, cooldown trips, time spent upstream, the final error) by calling the
``attempt``/``trip``/``fail`` methods; the cache writer takes ``answer_events``; the caller's
ticket settles from ``used_tokens``/``served``; A/B outcomes, the request log, metrics, spans and
the usage ledger take ``record()``.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from router.config import Price
from router.events import (
    AttemptRecord,
    End,
    Event,
    Fallback,
    ReasoningDelta,
    Start,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)

__all__ = ["RequestRecord", "Run"]


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
    task_version: str | None = None
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
    hedge: str | None = None  # a hedge was started: won (it served), lost (the primary did), failed (neither)
    cache: str | None = None  # hit | miss | None (no cache for this task, or bypassed)
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    cache_savings_usd: float = 0.0  # the cached tokens at the input price, minus what they cost
    usage_estimated: bool = False
    max_tokens: int | None = None
    finish_reason: str | None = None
    prompt: str | None = None  # only when content logging is on
    output: str | None = None
    trace: dict[str, str] | None = None  # the caller's traceparent/tracestate, continued by the spans


_FIRST = (TextDelta, ReasoningDelta, ToolCallDelta, ToolCallStart)


class Run:
    """One request as it happens. ``clock``: monotonic seconds. ``keep_text``: collect the
    answer's text (content logging, shadow comparisons); ``keep_events``: collect the answer's
    events for the cache. ``price(provider/model)`` prices an estimated usage."""

    __slots__ = ("_chars", "_clock", "_events", "_text", "attempts", "cache", "committed", "count", "error", "fallbacks",
                 "finish_reason", "hedge", "model", "provider", "start", "start_ns", "stopped", "trips", "ttft",
                 "upstream_time", "usage")

    def __init__(self, clock: Callable[[], float], start_ns: int, *, keep_text: bool = False,
                 keep_events: bool = False, cache: str | None = None) -> None:
        self._clock = clock
        self.start, self.start_ns = clock(), start_ns
        self.ttft: float | None = None
        self.usage: Usage | None = None
        self.provider = self.model = ""
        self.finish_reason: str | None = None
        self.fallbacks: list[tuple[str, str, str]] = []
        self.attempts: list[AttemptRecord] = []
        self.trips: list[str] = []
        self.hedge: str | None = None  # set by the chain walk when it hedged
        self.upstream_time = 0.0
        self.error: Exception | None = None
        self.committed = False  # a target did upstream work: its token charge stands
        self.cache = cache  # hit | miss | None
        self.stopped: float | None = None
        self._chars = 0
        self._text: list[str] | None = [] if keep_text else None
        self._events: list[Event] | None = [] if keep_events else None
        self.count = 0  # events seen

    # -- the one observer -------------------------------------------------------------------
    def see(self, ev: Event) -> None:
        """Note one event as it leaves (type checks, not ``match``: this runs for every event)."""
        self.count += 1
        kind = type(ev)
        if kind is TextDelta:
            if self.ttft is None:
                self.ttft = self._clock() - self.start
            text: str = ev.text  # type: ignore[union-attr]
            self._chars += len(text)
            if self._text is not None:
                self._text.append(text)
        elif kind in _FIRST:
            if self.ttft is None:
                self.ttft = self._clock() - self.start
            piece = str(getattr(ev, "text", None) or getattr(ev, "arguments", ""))
            self._chars += len(piece)
        elif kind is Usage:
            self.usage = ev  # type: ignore[assignment]
        elif kind is Start:
            self.provider, self.model = ev.provider, ev.model  # type: ignore[union-attr]
            if ev.cached:  # type: ignore[union-attr]
                self.cache = "hit"
            if self._events is not None:
                self._events.clear()  # a midstream restart: keep only the answer that ends
            if self._text is not None:
                self._text.clear()
            return
        elif kind is Fallback:
            self.fallbacks.append((ev.from_, ev.to, ev.reason))  # type: ignore[union-attr]
            return
        elif kind is End:
            self.finish_reason = ev.finish_reason  # type: ignore[union-attr]
        if self._events is not None:
            self._events.append(ev)

    # -- facts of the chain walk ------------------------------------------------------------
    def attempt(self, record: AttemptRecord) -> None:
        """One target of the chain was tried or skipped."""
        self.attempts.append(record)

    def trip(self, target: str) -> None:
        """A failure of ``target`` opened its circuit."""
        self.trips.append(target)

    def fail(self, error: Exception) -> None:
        """The request failed with ``error`` (every target failed, or the answering one broke)."""
        self.error = error

    # -- what readers take ------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        """The answer completed (an ``end`` event left)."""
        return self.finish_reason is not None

    @property
    def over(self) -> bool:
        """A terminal event (``end`` or ``error``) has left: what remains is bookkeeping."""
        return self.finish_reason is not None or self.error is not None

    @property
    def served(self) -> bool:
        """Something was answered that counts against the caller's limits."""
        return self.ended or self.committed or self.cache == "hit"

    @property
    def used_tokens(self) -> int | None:
        """Tokens the providers reported (0 for a cached answer; None: unknown, keep the estimate)."""
        if self.cache == "hit":
            return 0
        return self.usage.input_tokens + self.usage.output_tokens if self.usage is not None else None

    def answer_events(self) -> list[Event]:
        """The events of the answer after its ``start`` (for the cache), when kept."""
        return list(self._events or ())

    def text(self) -> str:
        """The answer's text, when kept (``keep_text``)."""
        return "".join(self._text or ())

    def stop(self) -> float:
        """The request is over: its duration in seconds (the first call fixes it)."""
        if self.stopped is None:
            self.stopped = self._clock() - self.start
        return self.stopped

    def record(self, *, request_id: str, task: str, caller: str, variant: str | None, stream: bool,
               prompt_tokens: int, max_tokens: int | None, price: Callable[[str], Price | None],
               trace: dict[str, str] | None = None, prompt: str | None = None,
               task_version: str | None = None) -> RequestRecord:
        """The summary telemetry, logs and the ledger take (call after ``stop``)."""
        rec = RequestRecord(request_id=request_id, task=task, caller=caller, variant=variant, stream=stream,
                            task_version=task_version,
                            provider=self.provider, model=self.model, start_ns=self.start_ns,
                            duration=self.stop(), ttft=self.ttft, attempts=self.attempts,
                            fallbacks=self.fallbacks, cooldown_trips=self.trips, hedge=self.hedge, cache=self.cache,
                            max_tokens=max_tokens, finish_reason=self.finish_reason, trace=trace)
        if self.cache == "hit":
            rec.outcome = "cached"
        err = self.error
        if err is not None or (rec.finish_reason is None and rec.outcome != "cached"):
            rec.outcome = "error"
            rec.error_code = getattr(err, "code", None) or getattr(err, "type", None) or "incomplete"
            rec.status = getattr(err, "status", 502) if err is not None else 499  # 499: the caller left
        u = self.usage
        if u is not None:
            rec.input_tokens, rec.output_tokens = u.input_tokens, u.output_tokens
            rec.reasoning_tokens, rec.cached_tokens, rec.cost_usd = u.reasoning_tokens, u.cached_tokens, u.cost_usd
            rec.cache_write_tokens = u.cache_write_tokens
            if u.cached_tokens and rec.provider and (p := price(f"{rec.provider}/{rec.model}")) is not None:
                rec.cache_savings_usd = p.savings(u.cached_tokens)
        elif self.committed and rec.provider:  # cut before the provider reported usage: estimate, and say so
            rec.input_tokens, rec.output_tokens = prompt_tokens, self._chars // 4
            p = price(f"{rec.provider}/{rec.model}")
            rec.cost_usd = p.cost(rec.input_tokens, rec.output_tokens) if p else 0.0
            rec.usage_estimated = True
        rec.retries = sum(a.retries for a in self.attempts)
        rec.overhead = max(0.0, rec.duration - self.upstream_time)
        if prompt is not None:
            rec.prompt, rec.output = prompt, self.text()
        return rec
