"""The chain walk: try the plan's targets in order until one answers, and stream its events.

Each target is skipped when it is unusable (no key), too small for the prompt
(``context_window``), cooling down (its circuit is open) or over its upstream quota; otherwise it
is tried, with retries (``router.retry``), until its first event arrives. The walk *commits* to
the target that yields the first event; before that a failure moves on to the next target (a
``Fallback`` event); after it, a failure ends the stream with ``Error``, never ``End`` (or, with
the task's ``midstream: restart``, falls back and starts over on the next target with a new
``Start``). When every target failed, one ``Error`` with code ``all_targets_failed`` ends it.

The walk's facts go to the request's ``Run`` (attempts, trips, upstream time, the final error);
each provider quota is held in ``Limiter.quota`` and settled exactly once when its call ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from functools import partial

from providers import Call
from router.circuits import Circuits
from router.clock import Clock
from router.errors import (
    TargetUnusable,
    UpstreamError,
    UpstreamStreamError,
)
from router.events import (
    AttemptRecord,
    End,
    Error,
    Event,
    Fallback,
    Start,
    TextDelta,
    ToolCallStart,
    Usage,
)
from router.failures import all_failed, check_output, error_event, is_final, quota_wait
from router.hedge import First, Try, race
from router.limits import (
    DEFAULT_MAX_TOKENS_ESTIMATE,
    FirstTarget,
    Limiter,
    OverBudget,
    Ticket,
)
from router.plan import Plan
from router.policy import Policy
from router.request import ResponseFormat, TaskRequest
from router.retry import RetryBudget, Tried, first_event
from router.run import Run
from router.transport import Transport
from router.upstream import CallFacts, Target, call_target

__all__ = ["Chain", "make_call"]

log = logging.getLogger("llm_router")



_noted: set[tuple[str, str]] = set()


def _note_dropped(target: Target, req: TaskRequest) -> None:
    """Log once per target and parameter that a request's parameter is not sent to it (the
    adapter says which its endpoint has no place for)."""
    for name in target.adapter.unsent(target.base_url):
        if getattr(req, name) is not None and (target.name, name) not in _noted:
            _noted.add((target.name, name))
            log.warning("%s: %s is not sent (its API has no such parameter)", target.name, name)


def make_call(target: Target, req: TaskRequest, plan: Plan, stream: bool) -> Call:
    """The upstream call of ``req`` for ``target``, with the plan's merged params: streamed when
    ``stream`` or when the target's provider streams upstream (``stream_upstream``, the default:
    a non-streamed caller gets the folded stream, under the same first-token and idle deadlines)."""
    p = plan.params
    stream = stream or target.stream_upstream
    _note_dropped(target, req)
    return Call(model=target.model, messages=req.messages, tools=req.tools, tool_choice=req.tool_choice,
                max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, stop=p.stop,
                thinking=p.thinking, stream=stream, thinking_style=target.spec.thinking,
                sampling=target.spec.sampling, tool_stream=target.spec.tool_stream,
                anthropic_beta=req.anthropic_beta, clear_thinking=req.clear_thinking,
                response_format=req.response_format, seed=req.seed,
                frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty, top_k=req.top_k)


def _cost(target: Target, plan: Plan) -> float:
    """The request's estimated cost on ``target`` (USD; its price, prompt estimate and
    ``max_tokens`` or the default estimate), reserved on its provider's budget."""
    p = target.spec.price
    return p.cost(plan.prompt_tokens, plan.params.max_tokens or DEFAULT_MAX_TOKENS_ESTIMATE) if p is not None else 0.0


def price(ev: Usage, target: Target) -> Usage:
    """``ev`` with ``cost_usd`` from the target's routing.yaml price (unpriced models cost 0)."""
    p = target.spec.price
    ev.cost_usd = p.cost(ev.input_tokens, ev.output_tokens, ev.cached_tokens, ev.cache_write_tokens,
                         ev.cache_write_1h_tokens) if p else 0.0
    return ev


async def _drain(upstream: AsyncGenerator[Event, None]) -> None:
    """Read an upstream call past its terminal event to the body's end (so its connection is
    reused); what still comes, and any failure, changes nothing of the answer."""
    try:
        async for _ in upstream:
            pass
    except Exception as e:  # noqa: BLE001 - after `end`, a broken tail is not the answer's
        log.debug("after end: %s", type(e).__name__)


def _reports(suspect: bool, target: str, failed_here: set[str]) -> bool:
    """Whether a success of ``target`` must reach the store (it closes the circuit and resets
    the failure count): it was probing or had failures counted, or it failed before in this
    request."""
    return suspect or target in failed_here


class _Walk:
    """What one walk of a chain knows so far (local to that walk): the failures, the retry
    waits spent, the tokens needed and the smallest window still worth trying, the targets called
    and those that failed retryably."""

    __slots__ = ("budget", "called", "errors", "failed_here", "failure", "first", "hedged", "media", "min_window",
                 "need", "output", "run")

    def __init__(self, plan: Plan, run: Run) -> None:
        self.run = run
        self.errors: list[UpstreamError] = []
        self.budget = RetryBudget()
        self.need = plan.prompt_tokens + (plan.params.max_tokens or 0)
        self.min_window = 0  # after a prompt-too-long error: only larger windows are worth a try
        self.called = 0
        self.failed_here: set[str] = set()
        self.failure: UpstreamError | None = None  # the committed target's failure after its first event
        self.hedged = False  # at most one hedge per request
        self.output: ResponseFormat | None = None  # the answer's required form, checked at its end
        self.media = False  # the request carries images or documents: only vision targets
        self.first: Ticket | float | OverBudget | None = None  # the first target's admission, asked with the caller's


class Chain:
    """Walks chains over ``transports`` (provider name -> ``Transport``), with the shared
    ``circuits`` and ``limiter``, on ``clock``."""

    def __init__(self, transports: Mapping[str, Transport], circuits: Circuits, limiter: Limiter,
                 clock: Clock) -> None:
        self.transports, self.circuits, self.limiter, self.clock = transports, circuits, limiter, clock

    def first_target(self, plan: Plan) -> FirstTarget | None:
        """The plan's first target, to admit with the caller (``Limiter.admit_caller``), when the
        walk would call it: usable, large enough, able to take the request; None otherwise."""
        if not plan.chain or not self.limiter.limits_target(plan.chain[0].provider):
            return None  # nothing to charge
        target, req = plan.chain[0], plan.request
        media = any(m.media() for m in req.messages if isinstance(m.content, list))
        if self._skip(target, plan.prompt_tokens + (plan.params.max_tokens or 0), 0, media) is not None:
            return None
        if not self.limiter.fits_target(target.provider, target.model, plan.estimate):
            return None
        return FirstTarget(target.provider, target.model, plan.background, _cost(target, plan))

    def _skip(self, target: Target, need: int, min_window: int, media: bool = False) -> tuple[str, str] | None:
        if target.unusable_reason:
            return "unusable", f"{target.name}: {target.unusable_reason}"
        if media and not target.spec.vision:
            return "capability", f"{target.name}: does not take images or documents (vision: false)"
        window = target.spec.context_window
        if need > window or window <= min_window:
            return ("context_window", (f"{target.name}: the prompt and max_tokens (about {need} tokens, "
                                       f"estimated) exceed its context window of {window}"))
        return None

    async def _admit(self, target: Target, plan: Plan, policy: Policy, walk: _Walk) -> tuple[Ticket, str] | None:
        """The target's quota ticket and its circuit's admission (``closed``, ``failing`` or
        ``probe``); None (and the skip recorded) when it is skipped: unusable, too small, cooling
        down or over its quota."""
        skip = self._skip(target, walk.need, walk.min_window, walk.media)
        retry_after: float | None = None
        admission = "closed"
        if skip is None:
            admission = await self.circuits.admit(target.name, policy.timeouts.total)
            if admission == "open":
                skip = ("cooldown", f"{target.name}: cooling down after repeated failures")
                retry_after = await self.circuits.reopens_in(target.name)
        if skip is None and not self.limiter.fits_target(target.provider, target.model, plan.estimate):
            why = f"{target.name}: this request (~{plan.estimate} tokens) is over the target's tokens-per-minute quota itself"
            skip = ("quota_too_small", why)
        first, walk.first = walk.first, None  # only ever the chain's first target's, on its first try
        if first is not None and (skip is not None or walk.called or target is not plan.chain[0]):
            if isinstance(first, Ticket):
                await self.limiter.settle(first, None, served=False)
            first = None
        if skip is None:
            got = first if first is not None else await self.limiter.admit_target(
                target.provider, target.model, plan.estimate, plan.background, _cost(target, plan))
            if isinstance(got, Ticket):
                return got, admission
            if isinstance(got, OverBudget):
                skip, retry_after = ("budget", f"{target.name}: its provider's budget is spent"), got.retry_after
            else:
                skip, retry_after = ("rate_limited", f"{target.name}: over its upstream rate limit"), got
            if admission == "probe":  # it will not probe now: the next request may
                await self.circuits.release(target.name)
        code, message = skip
        walk.run.attempt(AttemptRecord(target.name, "skipped", code=code, message=message))
        walk.errors.append(TargetUnusable(message, code=code, retryable=code not in ("unusable", "capability", "quota_too_small"),
                                          provider=target.provider, retry_after=retry_after))
        return None

    async def walk(self, req: TaskRequest, plan: Plan, request_id: str, run: Run,
                   caller: Ticket | None = None) -> AsyncGenerator[Event, None]:
        """The events of the plan's chain (not yet numbered), ending with ``End`` or ``Error``.
        ``caller``: the caller's ticket, whose ``first`` (the first target's admission, asked with
        the caller's) the walk takes instead of asking the store again."""
        walk = _Walk(plan, run)
        if caller is not None:
            walk.first, caller.first = caller.first, None
        try:
            walk.media = any(m.media() for m in req.messages if isinstance(m.content, list))
            if req.response_format is not None and req.response_format.type != "text":
                walk.output = req.response_format
            chain = plan.chain
            i = 0
            while i < len(chain):
                target = chain[i]
                admitted = await self._admit(target, plan, plan.policies[target.name], walk)
                if admitted is None:
                    if i + 1 < len(chain):
                        yield Fallback(from_=target.name, to=chain[i + 1].name, reason=walk.run.attempts[-1].code or "skipped")
                    i += 1
                    continue
                walk.called += 1
                walk.failure = None
                primary = Try(i, target, plan.policies[target.name], *admitted, self.clock.now())
                tries = [primary]
                try:
                    won = await race(tries, partial(self._first_of, req, plan, walk), self.clock,
                                     may_hedge=not walk.hedged and i + 1 < len(chain),
                                     start_hedge=partial(self._hedge, i + 1, req, plan, walk))
                    if len(tries) > 1:
                        walk.hedged = True
                        run.hedge = "won" if won is tries[1] else "lost" if won is primary else "failed"
                    for t in tries:
                        if t is not won:
                            await self._close(t, walk)  # a loser stops at once; its quota is settled now
                    if won is None:  # every try failed before its first event
                        last = tries[-1]
                        error = next((t.tried.error for t in tries if t.tried and t.tried.error and is_final(t.tried.error, plan)),
                                     last.tried.error if last.tried else None)
                        assert error is not None
                        if is_final(error, plan):  # the caller's answer, not the next target's
                            run.fail(error)
                            yield error_event(error, last.target, run)
                            return
                        i = last.index + 1
                        if i < len(chain):
                            yield Fallback(from_=last.target.name, to=chain[i].name, reason=error.code)
                        continue
                    if won is not primary:
                        reason = "hedge" if primary.tried is None or primary.tried.error is None else primary.tried.error.code
                        yield Fallback(from_=primary.target.name, to=won.target.name, reason=reason)
                    won.ticket.served = run.committed = True  # upstream did the work: the charge stands
                    async with aclosing(self._serve(won, walk, plan, request_id)) as served:
                        async for ev in served:
                            yield ev
                    failure = walk.failure
                    if failure is None:
                        return
                    if failure.retryable and await self.circuits.failure(won.target.name, won.policy.cooldown):
                        run.trip(won.target.name)
                finally:
                    for t in tries:
                        await self._close(t, walk)
                i = won.index + 1
                # an invalid structured answer reached no non-streamed caller yet: the next target may do better
                restart = plan.midstream == "restart" or (failure.code == "invalid_output" and not req.stream)
                if restart and i < len(chain) and not is_final(failure, plan):
                    yield Fallback(from_=won.target.name, to=chain[i].name, reason=failure.code)
                    continue
                run.fail(failure)
                yield error_event(failure, won.target, run)
                return
            failed = all_failed(run.attempts, walk.errors, plan)
            run.fail(failed)
            yield Error(code="all_targets_failed", message=failed.message,
                        retryable=failed.status in (429, 503, 504), attempts=run.attempts)
        finally:
            if isinstance(walk.first, Ticket):  # never reached its target: given back
                await self.limiter.settle(walk.first, None, served=False)

    async def _first_of(self, req: TaskRequest, plan: Plan, walk: _Walk, t: Try) -> First:
        return await self._first(t.target, req, plan, t.policy, t.admission != "closed", walk, t.t0, t.facts)

    async def _hedge(self, start: int, req: TaskRequest, plan: Plan, walk: _Walk) -> Try | None:
        """The first usable target from ``start`` on, admitted as a hedge (the skipped ones are
        recorded); None when there is none."""
        for j in range(start, len(plan.chain)):
            target = plan.chain[j]
            admitted = await self._admit(target, plan, plan.policies[target.name], walk)
            if admitted is not None:
                walk.called += 1
                return Try(j, target, plan.policies[target.name], *admitted, self.clock.now(), hedge=True)
        return None

    async def _close(self, t: Try, walk: _Walk) -> None:
        """End a try once: a hedge race's loser is cancelled (its call closed, recorded as
        ``cancelled``); its quota is settled from what it used; a probe's lease is released."""
        if t.closed:
            return
        t.closed = True
        try:
            task = t.task
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
                walk.run.attempt(AttemptRecord(t.target.name, "cancelled", code="hedged",
                                               latency_ms=round((self.clock.now() - t.t0) * 1e3, 3)))
            elif (task is not None and not task.cancelled() and task.exception() is None
                  and (late := task.result().value) is not None and not t.ticket.served):
                await late[1].aclose()  # answered, but too late to win: close its call
                walk.run.attempt(AttemptRecord(t.target.name, "cancelled", code="hedged",
                                               latency_ms=round((self.clock.now() - t.t0) * 1e3, 3)))
        finally:
            await self.limiter.settle(t.ticket, t.ticket.used, t.ticket.served)
            if t.admission == "probe":  # a probe's lease ends with the probe, whatever its outcome
                await self.circuits.release(t.target.name)

    async def _serve(self, won: Try, walk: _Walk, plan: Plan, request_id: str) -> AsyncGenerator[Event, None]:
        """The committed target's answer: ``Start``, then its events to ``End``; a failure after
        the commit is kept in ``walk.failure`` (the walk decides what follows)."""
        target, tried, held, t0 = won.target, won.tried, won.ticket, won.t0
        assert tried is not None and tried.value is not None
        first, upstream = tried.value
        latency = round((self.clock.now() - t0) * 1e3, 3)
        failure: UpstreamError | None = None
        texts: list[str] | None = [] if walk.output is not None else None
        try:
            yield Start(id=request_id, task=plan.task, provider=target.provider, model=target.model,
                        attempt=walk.called, variant=plan.variant, input_tokens=won.facts.prompt_tokens,
                        task_version=plan.task_version)
            ev: Event | None = first
            while ev is not None:
                if type(ev) is Usage:
                    held.used = ev.input_tokens + ev.output_tokens
                    ev = price(ev, target)
                    held.cost = ev.cost_usd
                elif texts is not None:
                    if type(ev) is TextDelta:
                        texts.append(ev.text)
                    elif type(ev) is ToolCallStart:
                        texts = None  # a tool call is not the structured answer
                    elif type(ev) is End:
                        check_output("".join(texts), walk.output, target)
                yield ev
                if type(ev) is End:  # the answer is whole: read the body's end, send nothing more
                    await _drain(upstream)
                    break
                ev = await anext(upstream, None)
        except UpstreamError as e:
            failure = e
        except Exception as e:  # an adapter's bug: this target's answer cannot be decoded
            log.error("decoding %s failed: %s", target.name, type(e).__name__, exc_info=e)
            failure = UpstreamStreamError(f"{target.name}: the answer could not be decoded ({type(e).__name__})",
                                          code="decode_error", retryable=False, provider=target.provider)
        finally:
            walk.failure = failure
            walk.run.upstream_time += self.clock.now() - t0
            await upstream.aclose()
            walk.run.attempt(AttemptRecord(target.name, "ok" if failure is None else "error",
                                           code=failure.code if failure else None,
                                           message=failure.message if failure else None,
                                           latency_ms=latency, retries=tried.retries))

    async def _first(self, target: Target, req: TaskRequest, plan: Plan, policy: Policy, suspect: bool,
                     walk: _Walk, t0: float, facts: CallFacts | None = None) -> Tried[tuple[Event, AsyncGenerator[Event, None]]]:
        """Send, with retries, until the first event; a failure is recorded (attempt, upstream
        time, a window floor after prompt-too-long) before it is returned. ``suspect``: the
        target is probing or has failures counted, so a success must reach the store."""
        report = partial(_reports, suspect, target.name, walk.failed_here)
        try:
            tried = await first_event(partial(self._open, target, req, plan, policy, report, facts), policy.retry,
                                      walk.budget, self.clock.sleep,
                                      partial(self._failure, target, policy, walk.run, walk.failed_here))
        except BaseException:
            walk.run.upstream_time += self.clock.now() - t0
            raise
        e = tried.error
        if e is not None:
            if e.quota:  # spent until a known reset: no use trying it before
                wait = quota_wait(e, self.circuits.wall())
                if wait is not None:
                    e.retry_after = wait
                    await self.circuits.hold(target.name, wait)
                    walk.run.trip(target.name)
            walk.run.upstream_time += self.clock.now() - t0
            walk.errors.append(e)
            if e.context_overflow:
                walk.min_window = max(walk.min_window, target.spec.context_window)
            walk.run.attempt(AttemptRecord(target.name, "error", code=e.code, message=e.message,
                                           status=e.upstream_status or None,
                                           latency_ms=round((self.clock.now() - t0) * 1e3, 3), retries=tried.retries))
        return tried

    async def _failure(self, target: Target, policy: Policy, run: Run, failed_here: set[str],
                       _error: UpstreamError) -> bool:
        """A retryable failure before the first event counts toward the cooldown; True when it
        opened the circuit (no more tries on this target)."""
        failed_here.add(target.name)
        tripped = await self.circuits.failure(target.name, policy.cooldown)
        if tripped:
            run.trip(target.name)
        return tripped

    async def _open(self, target: Target, req: TaskRequest, plan: Plan, policy: Policy,
                    report: Callable[[], bool], facts: CallFacts | None = None) -> tuple[Event, AsyncGenerator[Event, None]]:
        """One try: send, and wait for the first event. A success closes the circuit only when
        the target was probing or failed before in this request (``report``), so a healthy
        target costs no store write."""
        upstream = call_target(self.transports[target.provider], target, make_call(target, req, plan, req.stream),
                               policy.timeouts, self.clock, facts)
        try:
            first = await anext(upstream, None)
            if first is None:
                raise UpstreamStreamError(f"{target.name}: the answer was empty", code="empty_answer",
                                          retryable=True, provider=target.provider)
            if report():
                await self.circuits.success(target.name)
        except BaseException:
            await upstream.aclose()
            raise
        return first, upstream
