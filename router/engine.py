"""The router facade: one config's planner, chain walk, cache, limits, circuits and A/B tracker.

One request: ``plan(req)`` -> ``admit(plan, ctx)`` (the caller's ticket, a context manager:
settled exactly once when the request ends) -> ``stream(req, plan, run, ...)``: the cache
(``ResponseCache.serve``) around the chain walk (``Chain.walk``), every event numbered and seen
once by the request's ``Run`` as it leaves. ``complete`` folds the same events into one
``Answer``. ``finish(run, ...)`` hands the run's record to telemetry and A/B outcomes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import msgspec

from router.auth import Authenticator
from router.cache import CacheEntry, ResponseCache, cache_key, replay
from router.chain import Chain, make_call, price
from router.circuits import Circuits
from router.clock import Clock, LoopClock
from router.config import Limits, RoutingConfig
from router.errors import TargetUnusable, UpstreamError
from router.events import Answer, Error, Event, Usage, fold
from router.limits import Admission, Limiter, OverBudget, Ticket
from router.outcomes import Tracker
from router.output import parsed_output
from router.plan import Plan, Planner
from router.policy import Policy
from router.request import TaskRequest
from router.run import RequestRecord, Run
from router.stores import MemoryStore, Store, StoreError
from router.transport import Transport
from router.upstream import Target, call_target, make_targets

__all__ = ["RequestContext", "Router"]


class RequestContext(msgspec.Struct, kw_only=True):
    """Per-request facts from the front door: ``caller`` (the tenant, or X-Caller / the client
    address, for limits), ``limits`` (the tenant's own, over ``limits.per_caller``), the caller's
    ``Cache-Control`` (``no_cache``: the cache is neither read nor written; ``no_store``: read, not written) and its
    ``traceparent``/``tracestate``."""

    caller: str = "unknown"
    no_cache: bool = False
    no_store: bool = False
    limits: Limits | None = None
    trace: dict[str, str] | None = None
    background: bool = False  # an async task's run: its waits for quota are not requests of their own
    tenant: str | None = None  # the authenticated tenant (its budget applies)


class Router:
    """Routes canonical requests over the chains of one ``RoutingConfig``.

    ``transports``: provider name -> ``Transport`` (made by the app's lifespan). ``store``: shared
    state (limits, cache, circuits); in-memory by default. ``clock``: every deadline, wait and
    duration (``FakeClock`` in tests; a record's ``start_ns`` is real epoch time). ``observer``
    takes each finished request's record.
    """

    def __init__(self, config: RoutingConfig, transports: Mapping[str, Transport], *,
                 store: Store | None = None, clock: Clock | None = None,
                 observer: Callable[[RequestRecord], None] | None = None) -> None:
        self.config = config
        self.observer = observer
        self.log_content = config.log_content
        self.transports = transports
        self.store: Store = store or MemoryStore()
        self.clock: Clock = clock or LoopClock()
        self.limiter = Limiter(config, self.store)
        self.circuits = Circuits(self.store, self.clock.now, self.clock.wall)
        self.auth = Authenticator(config)
        self.targets = make_targets(config.providers)
        self.planner = Planner(config, self.targets)
        self.chain = Chain(transports, self.circuits, self.limiter, self.clock)
        self.cache = ResponseCache(self.store, self.clock)
        self.tracker = Tracker(self.store, self.call_one, self.clock.now)

    def plan(self, req: TaskRequest) -> Plan:
        """The request's plan; raises ``UnknownTask`` listing the known tasks."""
        return self.planner.plan(req)

    def policy(self, task: str, target: str) -> Policy:
        """The effective policy of ``target`` within ``task``."""
        return self.planner.policy(task, target)

    def admit(self, plan: Plan, ctx: RequestContext) -> Admission:
        """``async with``: charge the caller's limits and budgets for the block (raises
        ``RateLimited``/``BudgetExceeded``, 429, when over one); settled exactly once when the
        block ends, from the ticket's ``served``/``used``. The same store round trip looks the
        answer up in the cache (when the task caches) and charges the first target's quota (when
        it would go upstream), so a request needs one store call before its upstream call."""
        cache = None
        if plan.cache is not None and not ctx.no_cache:
            plan.cache_key = cache_key(plan.chain, plan.request, plan.params)
            cache = (plan.cache_key, plan.cache.coalesce_wait)
        return self.limiter.caller(ctx.caller, plan.task, plan.estimate, ctx.limits, ctx.tenant, plan.estimate_usd,
                                   cache=cache, first=self.chain.first_target(plan))

    def run(self, req: TaskRequest, plan: Plan, ctx: RequestContext) -> Run:
        """A new record for one request."""
        cached = plan.cache is not None and not ctx.no_cache
        return Run(self.clock.now, time.time_ns(), keep_text=self.log_content or plan.shadow is not None,
                   keep_events=cached and not ctx.no_store, cache="miss" if cached else None)

    async def target_states(self) -> dict[str, Any]:
        """Circuit state of every target, for ``/v1/routes`` (``unknown`` when the store fails)."""
        try:
            states = await self.store.breaker_states(list(self.targets), self.clock.wall())
        except StoreError:
            return {name: {"state": "unknown"} for name in self.targets}
        return {name: msgspec.to_builtins(s) for name, s in states.items()}

    async def stream(self, req: TaskRequest, plan: Plan, run: Run, request_id: str, ctx: RequestContext,
                     ticket: Ticket | None = None) -> AsyncGenerator[Event, None]:
        """The numbered events of one request, ending with one ``End`` or ``Error``; each is seen
        once by ``run``. ``ticket`` (the caller's, from ``admit``) learns what was served."""
        primary = self.tracker.shadow(plan.task, plan.shadow, req, request_id) if plan.tracked else None
        events: AsyncGenerator[Event, None]
        if plan.cache is not None and not ctx.no_cache:
            def start(entry: CacheEntry) -> list[Event]:
                return replay(entry, request_id, plan.task, plan.variant, plan.task_version)

            key = plan.cache_key if req is plan.request and plan.cache_key else cache_key(plan.chain, req, plan.params)
            looked = None
            if ticket is not None and ticket.looked_key == key:  # the admission looked this key up
                looked, ticket.looked = ticket.looked, None
            events = self.cache.serve(key, plan.cache,
                                      lambda: self.chain.walk(req, plan, request_id, run, ticket), run,
                                      store=not ctx.no_store, start=start, looked=looked)
        else:
            events = self.chain.walk(req, plan, request_id, run, ticket)
        seq = 0
        try:
            async for ev in events:
                ev.seq = seq
                seq += 1
                run.see(ev)
                yield ev
        finally:
            await events.aclose()
            if ticket is not None:
                ticket.served, ticket.used = run.served, run.used_tokens
                ticket.cost = run.usage.cost_usd if run.usage is not None else None
            self.finish(run, req, plan, request_id, ctx, primary)

    async def complete(self, req: TaskRequest, plan: Plan, run: Run, request_id: str, ctx: RequestContext,
                       ticket: Ticket | None = None) -> Answer:
        """The answer as one object. Raises ``AllTargetsFailed`` (with ``attempts``) or, when
        the committed target failed mid-answer, its ``UpstreamError``."""
        events = [ev async for ev in self.stream(req, plan, run, request_id, ctx, ticket)]
        if run.error is not None:
            raise run.error
        if events and isinstance(events[-1], Error):  # a cached answer never ends so; defensive
            raise UpstreamError(events[-1].message, code=events[-1].code, retryable=events[-1].retryable)
        answer = fold(events, Answer(attempts=run.attempts))
        if req.response_format is not None and req.response_format.type != "text":
            answer.output = parsed_output(answer.text)
        return answer

    def finish(self, run: Run, req: TaskRequest, plan: Plan, request_id: str, ctx: RequestContext,
               primary: Any = None) -> None:
        """The request is over: A/B outcomes and the observer (telemetry) read its run."""
        run.stop()
        if plan.tracked:
            self.tracker.finish(run, task=plan.task, variant=plan.variant or "primary", request_id=request_id,
                                primary=primary, task_version=plan.task_version)
        waited = ctx.background and run.error is not None and getattr(run.error, "status", 0) == 429
        if self.observer is not None and not waited:  # an async task logs its runs, not its waits for quota
            self.observer(run.record(
                request_id=request_id, task=plan.task, caller=ctx.caller, variant=plan.variant, stream=req.stream,
                task_version=plan.task_version,
                prompt_tokens=plan.prompt_tokens, max_tokens=plan.params.max_tokens, trace=ctx.trace,
                price=lambda name: t.spec.price if (t := self.targets.get(name)) else None,
                prompt="\n".join(m.text() for m in req.messages) if self.log_content else None))

    async def count_tokens(self, req: TaskRequest, plan: Plan) -> tuple[int, bool, str]:
        """The prompt's input tokens for the first usable target of the plan: (tokens, estimated,
        target). The target's provider counts when its API can (Anthropic's ``count_tokens``,
        Z.ai's tokenizer: the adapter's ``encode_count``), within its connect and total timeouts;
        other endpoints, and a count that fails, get the router's estimate, flagged ``estimated``."""
        usable = [t for t in plan.chain if not t.unusable_reason] or plan.chain
        target = usable[0]
        wire = None if target.unusable_reason else target.adapter.encode_count(
            make_call(target, req, plan, stream=False), target.base_url, target.api_key, target.headers)
        if wire is not None:
            timeouts = plan.policies[target.name].timeouts
            try:
                async with asyncio.timeout(timeouts.total):
                    response = await self.transports[target.provider].send(
                        wire, connect=timeouts.connect, name=target.name, provider=target.provider)
                    try:
                        body = await response.read()
                    finally:
                        response.close()
                n = target.adapter.decode_count(body) if response.status == 200 else None
                if n is not None:
                    return n, False, target.name
            except (UpstreamError, TimeoutError, msgspec.DecodeError):
                pass
        return plan.prompt_tokens, True, target.name

    async def call_one(self, target_name: str, req: TaskRequest) -> AsyncGenerator[Event, None]:
        """One streamed call to one target with its provider's timeouts and quota, no retry or
        fallback (shadow traffic, comparison runs). Raises ``UpstreamError`` (code
        ``rate_limited`` when over the quota)."""
        target: Target = self.targets[target_name]
        plan = self.plan(msgspec.structs.replace(req, task=target_name))
        got = await self.limiter.admit_target(target.provider, target.model, plan.estimate)
        if not isinstance(got, Ticket):
            got = got.retry_after if isinstance(got, OverBudget) else got
            raise TargetUnusable(f"{target_name}: over its upstream rate limit", code="rate_limited",
                                 retryable=True, provider=target.provider, retry_after=got)
        async with self.limiter.quota(got) as held:
            async for ev in call_target(self.transports[target.provider], target,
                                        make_call(target, req, plan, stream=True),
                                        plan.policies[target_name].timeouts, self.clock):
                if type(ev) is Usage:
                    held.used = ev.input_tokens + ev.output_tokens
                    ev = price(ev, target)
                    held.cost = ev.cost_usd
                held.served = True
                yield ev
