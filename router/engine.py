"""Task -> plan -> targets -> one numbered event stream.

``Router.stream(request)`` is the whole request path after the front door: it resolves the task
to a ``Plan`` (chain and params) and walks the chain. Each target is skipped when it is unusable
(no key), too small for the prompt (``context_window``) or cooling down; otherwise it is tried,
with retries (``router.retry``), until its first event arrives. The router *commits* to the target
that yields the first event; before that a failure moves on to the next target (a ``Fallback``
event); after it, a failure ends the stream with ``Error``, never ``End`` (or, with the task's
``midstream: restart``, falls back and starts over on the next target with a new ``Start``).
Events are numbered (``seq``) as they leave; exactly one ``End`` or ``Error`` ends them.
``Router.complete(request)`` folds the same events into one ``Answer``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import msgspec

from providers import Call
from router.cache import CacheEntry, ResponseCache, cache_key, replay
from router.auth import Authenticator
from router.config import (DEFAULT_COOLDOWN, DEFAULT_RETRY, DEFAULT_TIMEOUTS, CachePolicy, Cooldown,
                           Limits, Params, Retry, RoutingConfig, Timeouts, overlay)
from router.errors import (AllTargetsFailed, TargetUnusable, UnknownTask, UpstreamError,
                           UpstreamStreamError)
from router.events import Answer, AttemptRecord, End, Error, Event, Fallback, Start, Usage, fold
from router.experiments import assign
from router.circuits import Circuits
from router.limits import DEFAULT_MAX_TOKENS_ESTIMATE, Limiter, Ticket
from router.outcomes import Tracker
from router.record import RequestRecord, observe
from router.request import TaskRequest
from router.retry import RetryBudget, first_event
from router.stores import MemoryStore, Store, StoreError
from router.upstream import Target, UpstreamClient, call_target, make_targets

__all__ = ["Plan", "Policy", "RequestContext", "Router", "estimate_prompt_tokens", "new_request_id"]


def new_request_id() -> str:
    """A response id: ``req_`` and 24 hex digits."""
    return "req_" + secrets.token_hex(12)


class Policy(msgspec.Struct, frozen=True):
    """A target's effective timeouts, retry and cooldown within one task (task over provider over
    defaults, field by field)."""

    timeouts: Timeouts
    retry: Retry
    cooldown: Cooldown


class Plan(msgspec.Struct, kw_only=True):
    """What a request will do: its task, the ordered targets, merged params, stream failure mode,
    cache policy, and its token estimate (prompt estimate + ``max_tokens``) for limits and skips."""

    task: str
    chain: list[Target]
    params: Params
    midstream: str = "error"
    cache: CachePolicy | None = None
    prompt_tokens: int = 0
    estimate: int = 0
    variant: str | None = None
    tracked: bool = False


class RequestContext(msgspec.Struct, kw_only=True):
    """Per-request facts from the front door: ``caller`` (the tenant, or X-Caller / the client
    address, for limits), ``limits`` (the tenant's own, over ``limits.per_caller``), and the
    caller's ``Cache-Control``: ``no_cache`` skips the cache lookup, ``no_store`` the write."""

    caller: str = "unknown"
    no_cache: bool = False
    no_store: bool = False
    limits: Limits | None = None
    trace: dict[str, str] | None = None

def _merge(req: TaskRequest, params: Params) -> Params:
    return Params(
        max_tokens=req.max_tokens if req.max_tokens is not None else params.max_tokens,
        temperature=req.temperature if req.temperature is not None else params.temperature,
        top_p=req.top_p if req.top_p is not None else params.top_p,
        stop=req.stop if req.stop is not None else params.stop,
        thinking=req.thinking if req.thinking is not None else params.thinking,
    )


def estimate_prompt_tokens(req: TaskRequest) -> int:
    """A tokenizer-free estimate of the prompt: characters / 4, plus 4 per message. It errs low
    for English prose and for code-heavy or CJK text, so a target it lets through may still answer
    prompt-too-long; that error moves on to a target with a larger window."""
    chars = 0
    for m in req.messages:
        chars += len(m.text()) + sum(len(tc.function.arguments) + len(tc.function.name)
                                     for tc in m.tool_calls or ())
    if req.tools:
        chars += len(msgspec.json.encode(req.tools))
    return chars // 4 + 4 * len(req.messages)


def _cost(usage: Usage, target: Target) -> float:
    """USD from the target's routing.yaml price (``Price.cost``); unpriced models cost 0."""
    price = target.spec.price
    return price.cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens) if price else 0.0


_CONTEXT = ("context_window", "context_overflow")


def _all_failed(attempts: list[AttemptRecord], errors: list[UpstreamError]) -> AllTargetsFailed:
    """The status by the nature of the failures: 400 when the prompt fits no target, 429 when every
    target was rate-limited, upstream or by its quota here (``retry_after`` the shortest wait), 503
    when no target could be called, 504 when every call timed out, else 502."""
    limited = [e for e in errors if e.code == "rate_limited" or (e.upstream_status == 429 and e.retryable)]
    called = [e for e in errors if not isinstance(e, TargetUnusable)]
    status, retry_after = 502, None
    if attempts and all(a.code in _CONTEXT or (a.code and a.code in ("1261", "prompt_too_long"))
                        for a in attempts):
        status = 400
    elif errors and len(limited) == len(errors):
        status = 429
        waits = [e.retry_after for e in limited if e.retry_after is not None]
        retry_after = min(waits) if waits else None
    elif not called:
        status = 503
    elif all(e.status == 504 for e in called):
        status = 504
    return AllTargetsFailed(f"every target of the chain failed ({len(attempts)} tried)", attempts,
                            status=status, retry_after=retry_after)


class _Outcome:
    """Per-request record the event generator fills: every attempt, whether a target committed
    (upstream did work, so its token charge stands), and the final error."""

    __slots__ = ("attempts", "committed", "error", "trips", "upstream_time")

    def __init__(self, attempts: list[AttemptRecord]) -> None:
        self.attempts = attempts
        self.committed = False
        self.error: Exception | None = None
        self.trips: list[str] = []
        self.upstream_time = 0.0  # seconds inside upstream calls


class Router:
    """Routes canonical requests over the chains of one ``RoutingConfig``.

    ``clients``: provider name -> pooled ``UpstreamClient`` (made by the app's lifespan).
    ``store``: shared state (circuit breakers); in-memory by default. Injectable for tests:
    ``clock`` (monotonic seconds, for latencies), ``wall`` (epoch seconds, for cooldowns shared
    across replicas) and ``sleep`` (retry waits).
    """

    def __init__(self, config: RoutingConfig, clients: Mapping[str, UpstreamClient], *,
                 store: Store | None = None, clock: Callable[[], float] = time.perf_counter,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 observer: Callable[[RequestRecord], None] | None = None, log_content: bool = False) -> None:
        self.config = config
        self.observer = observer
        self.log_content = log_content
        self.clients = clients
        self.store: Store = store or MemoryStore()
        self.clock, self.wall, self.sleep = clock, wall, sleep
        self.limiter = Limiter(config, self.store)
        self.circuits = Circuits(self.store, clock, wall)
        self.auth = Authenticator(config)
        self.tracker = Tracker(self.store, self.call_one, clock)
        self.cache = ResponseCache(self.store, wall)
        self.targets = make_targets(config.providers)
        self._plans: dict[str, tuple[list[Target], Params, str, CachePolicy | None]] = {}
        self._policies: dict[tuple[str, str], Policy] = {}
        for tname, task in config.tasks.items():
            self._plans[tname] = ([self.targets[t] for t in task.chain], task.params, task.midstream,
                                  task.cache)
            variant_targets = [t for v in (task.experiment.variants.values() if task.experiment else ()) for t in v.chain]
            for t in dict.fromkeys([*task.chain, *variant_targets]):
                p = config.providers[self.targets[t].provider]
                self._policies[(tname, t)] = Policy(
                    timeouts=overlay(DEFAULT_TIMEOUTS, p.timeouts, task.timeouts),
                    retry=overlay(DEFAULT_RETRY, p.retry, task.retry),
                    cooldown=overlay(DEFAULT_COOLDOWN, p.cooldown),
                )
        for t, target in self.targets.items():  # a pinned target is a one-target chain of its own
            p = config.providers[target.provider]
            self._plans.setdefault(t, ([target], Params(), "error", None))
            self._policies.setdefault((t, t), Policy(timeouts=overlay(DEFAULT_TIMEOUTS, p.timeouts),
                                                     retry=overlay(DEFAULT_RETRY, p.retry),
                                                     cooldown=overlay(DEFAULT_COOLDOWN, p.cooldown)))

    def plan(self, req: TaskRequest) -> Plan:
        """Resolve the request's task, or a pinned ``provider/model`` target (its provider's
        policies, no task params or cache); raises ``UnknownTask`` listing the known tasks."""
        found = self._plans.get(req.task)
        if found is None:
            raise UnknownTask(req.task, list(self.config.tasks))
        chain, params, midstream, cache = found
        task = self.config.tasks.get(req.task)
        variant = None
        if task is not None and task.experiment is not None:
            variant = assign(req.task, task.experiment, req)
            v = task.experiment.variants[variant]
            chain = [self.targets[t] for t in v.chain]
            if v.params is not None:
                params = overlay(params, v.params)
        merged = _merge(req, params)
        prompt = estimate_prompt_tokens(req)
        return Plan(task=req.task, chain=chain, params=merged, midstream=midstream, cache=cache,
                    prompt_tokens=prompt, estimate=prompt + (merged.max_tokens or DEFAULT_MAX_TOKENS_ESTIMATE),
                    variant=variant, tracked=task is not None and (task.experiment is not None or task.shadow is not None))

    async def admit(self, plan: Plan, ctx: RequestContext) -> Ticket:
        """Charge the caller's limits for this request (settled when its events end); raises
        ``RateLimited`` (429) when the caller is over one."""
        return await self.limiter.admit_caller(ctx.caller, plan.task, plan.estimate, ctx.limits)

    def policy(self, task: str, target: str) -> Policy:
        """The effective policy of ``target`` within ``task``."""
        return self._policies[(task, target)]

    async def target_states(self) -> dict[str, Any]:
        """Circuit state of every target, for ``/v1/routes`` (``unknown`` when the store fails)."""
        try:
            states = await self.store.breaker_states(list(self.targets), self.wall())
        except StoreError:
            return {name: {"state": "unknown"} for name in self.targets}
        return {name: msgspec.to_builtins(s) for name, s in states.items()}

    async def stream(self, req: TaskRequest, plan: Plan | None = None, request_id: str | None = None,
                     ticket: Ticket | None = None, ctx: RequestContext | None = None) -> AsyncIterator[Event]:
        """The numbered events of one request, ending with one ``End`` or ``Error``. ``ticket``
        (from ``admit``) is settled when the events end, however they end."""
        seq = 0
        plan = plan or self.plan(req)
        async for ev in self._tracked(req, plan, request_id or new_request_id(), _Outcome([]), ticket,
                                      ctx or RequestContext()):
            ev.seq = seq
            seq += 1
            yield ev

    async def complete(self, req: TaskRequest, plan: Plan | None = None, request_id: str | None = None,
                       ticket: Ticket | None = None, ctx: RequestContext | None = None) -> Answer:
        """The answer as one object. Raises ``AllTargetsFailed`` (with ``attempts``) or, when
        the committed target failed mid-answer, the ``UpstreamError``."""
        answer = Answer()
        outcome = _Outcome(answer.attempts)
        events = [ev async for ev in self._tracked(req, plan or self.plan(req), request_id or new_request_id(),
                                                   outcome, ticket, ctx or RequestContext())]
        if outcome.error is not None:
            raise outcome.error
        return fold(events, answer)

    def _tracked(self, req: TaskRequest, plan: Plan, request_id: str, outcome: _Outcome,
                 ticket: Ticket | None, ctx: RequestContext) -> AsyncIterator[Event]:
        """``_serve``, followed by the A/B tracker for tasks with an experiment or a shadow, and
        the observer (telemetry) when one is set."""
        events = self._serve(req, plan, request_id, outcome, ticket, ctx)
        if plan.tracked:
            task = self.config.tasks[plan.task]
            events = self.tracker.track(events, task=plan.task, variant=plan.variant or "primary",
                                        request_id=request_id, shadow=task.shadow, req=req)
        if self.observer is not None:
            rec = RequestRecord(request_id=request_id, task=plan.task, caller=ctx.caller, variant=plan.variant,
                                stream=req.stream, start_ns=time.time_ns(), attempts=outcome.attempts,
                                max_tokens=plan.params.max_tokens,
                                cache=None if plan.cache is None or ctx.no_cache else "miss", trace=ctx.trace)
            events = observe(events, rec, outcome, self.observer, clock=self.clock,
                             prompt_tokens=plan.prompt_tokens, targets=self.targets,
                             prompt=(lambda: "\n".join(m.text() for m in req.messages)) if self.log_content else None)
        return events

    async def call_one(self, target_name: str, req: TaskRequest) -> AsyncIterator[Event]:
        """One streamed call to one target with its provider's timeouts and quota, no retry or
        fallback (shadow traffic, comparison runs). Raises ``UpstreamError`` (code
        ``rate_limited`` when over the quota)."""
        target = self.targets[target_name]
        plan = self.plan(msgspec.structs.replace(req, task=target_name))
        quota = await self.limiter.admit_target(target.provider, target.model, plan.estimate)
        if not isinstance(quota, Ticket):
            raise TargetUnusable(f"{target_name}: over its upstream rate limit", code="rate_limited",
                                 retryable=True, provider=target.provider, retry_after=quota)
        call = Call(model=target.model, messages=req.messages, tools=req.tools, tool_choice=req.tool_choice,
                    max_tokens=plan.params.max_tokens, temperature=plan.params.temperature,
                    top_p=plan.params.top_p, stop=plan.params.stop, thinking=plan.params.thinking, stream=True,
                    thinking_style=target.spec.thinking, sampling=target.spec.sampling)
        used: int | None = None
        ok = False
        try:
            async for ev in call_target(self.clients[target.provider], target, call,
                                        self._policies[(target_name, target_name)].timeouts):
                if isinstance(ev, Usage):
                    ev.cost_usd = _cost(ev, target)
                    used = ev.input_tokens + ev.output_tokens
                ok = True
                yield ev
        finally:
            await self.limiter.settle(quota, used, served=ok)

    async def _serve(self, req: TaskRequest, plan: Plan, request_id: str, outcome: _Outcome,
                     ticket: Ticket | None, ctx: RequestContext) -> AsyncIterator[Event]:
        """Cache around the chain walk, and the caller's ticket settled at the end."""
        used: int | None = None
        served = False
        key, lead = None, False
        try:
            policy = plan.cache
            if policy is not None and not ctx.no_cache:
                key = cache_key(plan.chain, req, plan.params)
                entry, lead = await self.cache.lookup(key, policy.coalesce_wait)
                if entry is not None:
                    served, used = True, 0
                    for ev in replay(entry, request_id, plan.task, plan.variant):
                        yield ev
                    return
            collect: list[Event] | None = [] if policy is not None and not ctx.no_store else None
            provider = model = ""
            async for ev in self._events(req, plan, request_id, outcome):
                if isinstance(ev, Start):
                    provider, model = ev.provider, ev.model
                    if collect is not None:
                        collect.clear()  # a midstream restart: keep only the answer that ends
                elif isinstance(ev, Usage):
                    used = ev.input_tokens + ev.output_tokens
                elif isinstance(ev, End):
                    served = True
                elif collect is not None and isinstance(ev, Fallback):
                    continue
                if collect is not None and not isinstance(ev, Start | Fallback):
                    collect.append(ev)
                yield ev
            if key is not None and policy is not None and collect is not None and served:
                entry = CacheEntry(provider=provider, model=model, created_at=self.wall(), events=collect)
                if lead:
                    lead = False
                    await self.cache.finish(key, entry, policy.ttl, policy.max_bytes)
                else:
                    await self.cache.put(key, entry, policy.ttl, policy.max_bytes)
        finally:
            if lead and key is not None and policy is not None:
                await self.cache.finish(key, None, policy.ttl, policy.max_bytes)
            if ticket is not None:
                await self.limiter.settle(ticket, used, served or outcome.committed)

    def _skip_reason(self, target: Target, need: int, min_window: int) -> tuple[str, str, None] | None:
        if target.unusable_reason:
            return "unusable", f"{target.name}: {target.unusable_reason}", None
        window = target.spec.context_window
        if need > window or window <= min_window:
            return ("context_window", f"{target.name}: the prompt (~{need} tokens with max_tokens) "
                    f"exceeds its context window of {window}", None)
        return None

    async def _events(self, req: TaskRequest, plan: Plan, request_id: str,
                      outcome: _Outcome) -> AsyncIterator[Event]:
        attempts = outcome.attempts
        errors: list[UpstreamError] = []
        budget = RetryBudget()
        need = plan.prompt_tokens + (plan.params.max_tokens or 0)
        min_window = 0  # after a prompt-too-long error: only larger windows are worth a try
        called = 0
        chain = plan.chain
        for i, target in enumerate(chain):
            nxt = chain[i + 1].name if i + 1 < len(chain) else None
            policy = self._policies[(plan.task, target.name)]
            skip = self._skip_reason(target, need, min_window)
            admission = "closed"
            if skip is None:
                admission = await self.circuits.admit(target.name, policy.timeouts.total or 600)
                if admission == "open":
                    skip = ("cooldown", f"{target.name}: cooling down after repeated failures", None)
            quota: Ticket | float | None = None
            if skip is None:
                quota = await self.limiter.admit_target(target.provider, target.model, plan.estimate)
                if not isinstance(quota, Ticket):
                    skip = ("rate_limited", f"{target.name}: over its upstream rate limit", quota)
            if skip is not None:
                code, message, retry_after = skip
                attempts.append(AttemptRecord(target.name, "skipped", code=code, message=message))
                errors.append(TargetUnusable(message, code=code, retryable=code != "unusable",
                                             provider=target.provider, retry_after=retry_after))
                if nxt:
                    yield Fallback(from_=target.name, to=nxt, reason=code)
                continue
            assert isinstance(quota, Ticket)
            called += 1
            call = Call(model=target.model, messages=req.messages, tools=req.tools,
                        tool_choice=req.tool_choice, max_tokens=plan.params.max_tokens,
                        temperature=plan.params.temperature, top_p=plan.params.top_p,
                        stop=plan.params.stop, thinking=plan.params.thinking, stream=req.stream,
                        thinking_style=target.spec.thinking, sampling=target.spec.sampling)
            t0 = self.clock()
            health = [admission != "closed"]  # must the store hear of a success?
            try:
                (first, upstream), retries = await first_event(
                    lambda: self._open(target, call, policy, health, outcome), policy.retry, budget, self.sleep)
            except UpstreamError as e:
                outcome.upstream_time += self.clock() - t0
                await self.limiter.settle(quota, None, served=False)
                errors.append(e)
                if e.context_overflow:
                    min_window = max(min_window, target.spec.context_window)
                attempts.append(AttemptRecord(target.name, "error", code=e.code, message=e.message,
                                              status=e.upstream_status or None,
                                              latency_ms=round((self.clock() - t0) * 1e3, 3),
                                              retries=e.retries))
                if nxt:
                    yield Fallback(from_=target.name, to=nxt, reason=e.code)
                continue
            except BaseException:
                await self.limiter.settle(quota, None, served=False)
                raise
            outcome.committed = True
            attempts.append(AttemptRecord(target.name, "ok", latency_ms=round((self.clock() - t0) * 1e3, 3),
                                          retries=retries))
            yield Start(id=request_id, task=plan.task, provider=target.provider, model=target.model,
                        attempt=called, variant=plan.variant)
            used: int | None = None
            try:
                ev: Event | None = first
                while ev is not None:
                    if isinstance(ev, Usage):
                        ev.cost_usd = _cost(ev, target)
                        used = ev.input_tokens + ev.output_tokens
                    yield ev
                    ev = await anext(upstream, None)
                return
            except UpstreamError as e:
                if e.retryable and await self.circuits.failure(target.name, policy.cooldown):
                    outcome.trips.append(target.name)
                attempts[-1].outcome, attempts[-1].code, attempts[-1].message = "error", e.code, e.message
                if plan.midstream == "restart" and nxt:
                    yield Fallback(from_=target.name, to=nxt, reason=e.code)
                    continue
                outcome.error = e
                yield Error(code=e.code, message=e.message, retryable=e.retryable,
                            provider=target.provider, attempts=attempts)
                return
            finally:
                outcome.upstream_time += self.clock() - t0
                await upstream.aclose()
                await self.limiter.settle(quota, used, served=True)  # upstream did the work
        failed = _all_failed(attempts, errors)
        outcome.error = failed
        yield Error(code="all_targets_failed", message=failed.message,
                    retryable=failed.status in (429, 503, 504), attempts=attempts)

    async def _open(self, target: Target, call: Call, policy: Policy, health: list[bool],
                    outcome: _Outcome) -> tuple[Event, AsyncIterator[Event]]:
        """One try: send, and wait for the first event. Each retryable failure counts toward the
        target's cooldown; once the circuit trips, the try is not retried. A success resets the
        circuit only when it had failures (``health[0]``), so a healthy target costs no write."""
        upstream = call_target(self.clients[target.provider], target, call, policy.timeouts)
        try:
            first = await anext(upstream, None)
            if first is None:
                raise UpstreamStreamError(f"{target.name}: the answer was empty", code="empty_answer",
                                          retryable=True, provider=target.provider)
        except UpstreamError as e:
            await upstream.aclose()
            if e.retryable:
                health[0] = True
                if await self.circuits.failure(target.name, policy.cooldown):
                    e.stop_retrying = True
                    outcome.trips.append(target.name)
            raise
        except BaseException:
            await upstream.aclose()
            raise
        if health[0]:
            await self.circuits.success(target.name)
        return first, upstream

