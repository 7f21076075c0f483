"""Task -> plan -> targets -> one numbered event stream.

``Router.stream(request)`` is the whole request path after the front door: it resolves the task
to a ``Plan`` (chain and params), walks the chain, and yields unified events with ``seq`` numbers,
ending with exactly one ``End`` or ``Error``. The router *commits* to a target when its first
event arrives; before that a failure moves on to the next target (with a ``Fallback`` event);
after it, a failure ends the stream with ``Error``, never ``End``.
``Router.complete(request)`` folds the same events into one ``Answer``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping

import httpx
import msgspec

from providers import Call
from router.config import Params, RoutingConfig
from router.errors import AllTargetsFailed, TargetUnusable, UnknownTask, UpstreamError
from router.events import (Answer, AttemptRecord, End, Error, Event, Fallback, Start, Usage,
                           fold)
from router.request import TaskRequest
from router.upstream import Target, call_target, make_targets

__all__ = ["Plan", "Router", "new_request_id"]


def new_request_id() -> str:
    """A response id: ``req_`` and 24 hex digits."""
    return "req_" + secrets.token_hex(12)


class Plan(msgspec.Struct, kw_only=True):
    """What a request will do: its task, the ordered targets, and the merged generation params."""

    task: str
    chain: list[Target]
    params: Params


def _merge(req: TaskRequest, params: Params) -> Params:
    return Params(
        max_tokens=req.max_tokens if req.max_tokens is not None else params.max_tokens,
        temperature=req.temperature if req.temperature is not None else params.temperature,
        top_p=req.top_p if req.top_p is not None else params.top_p,
        stop=req.stop if req.stop is not None else params.stop,
        thinking=req.thinking if req.thinking is not None else params.thinking,
    )


def _cost(usage: Usage, target: Target) -> float:
    """USD from routing.yaml prices (USD per 1M tokens); unpriced models cost 0."""
    price = target.spec.price
    if price is None:
        return 0.0
    return round((usage.input_tokens * price.input + usage.output_tokens * price.output) / 1e6, 10)


def _all_failed(attempts: list[AttemptRecord], errors: list[UpstreamError]) -> AllTargetsFailed:
    """502, or 503 when nothing was usable, 504 when every call timed out, 429 when every call
    was rate-limited (with the shortest Retry-After)."""
    called = [e for e in errors if not isinstance(e, TargetUnusable)]
    status, retry_after = 502, None
    if not called:
        status = 503
    elif all(e.status == 504 for e in called):
        status = 504
    elif all(e.upstream_status == 429 and e.retryable for e in called):
        status = 429
        waits = [e.retry_after for e in called if e.retry_after is not None]
        retry_after = min(waits) if waits else None
    return AllTargetsFailed(f"every target of the chain failed ({len(attempts)} tried)", attempts,
                            status=status, retry_after=retry_after)


class _Outcome:
    """Per-request record the event generator fills: every attempt, and the final error."""

    __slots__ = ("attempts", "error")

    def __init__(self, attempts: list[AttemptRecord]) -> None:
        self.attempts = attempts
        self.error: Exception | None = None


class Router:
    """Routes canonical requests over the chains of one ``RoutingConfig``.

    ``clients`` maps provider name -> pooled ``httpx.AsyncClient`` (made by the app's lifespan).
    ``clock`` returns seconds (monotonic) and is injectable for tests.
    """

    def __init__(self, config: RoutingConfig, clients: Mapping[str, httpx.AsyncClient], *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.config = config
        self.clients = clients
        self.clock = clock
        self.targets = make_targets(config.providers)

    def plan(self, req: TaskRequest) -> Plan:
        """Resolve the request's task; raises ``UnknownTask`` listing the known ones."""
        task = self.config.tasks.get(req.task)
        if task is None:
            raise UnknownTask(req.task, list(self.config.tasks))
        return Plan(task=req.task, chain=[self.targets[t] for t in task.chain],
                    params=_merge(req, task.params))

    async def stream(self, req: TaskRequest, plan: Plan | None = None,
                     request_id: str | None = None) -> AsyncIterator[Event]:
        """The numbered events of one request, ending with one ``End`` or ``Error``."""
        seq = 0
        outcome = _Outcome([])
        async for ev in self._events(req, plan or self.plan(req), request_id or new_request_id(),
                                     outcome):
            ev.seq = seq
            seq += 1
            yield ev

    async def complete(self, req: TaskRequest, plan: Plan | None = None,
                       request_id: str | None = None) -> Answer:
        """The answer as one object. Raises ``AllTargetsFailed`` (with ``attempts``) or, when
        the committed target failed mid-answer, the ``UpstreamError``."""
        answer = Answer()
        outcome = _Outcome(answer.attempts)
        events = [ev async for ev in self._events(req, plan or self.plan(req),
                                                  request_id or new_request_id(), outcome)]
        if outcome.error is not None:
            raise outcome.error
        return fold(events, answer)

    async def _events(self, req: TaskRequest, plan: Plan, request_id: str,
                      outcome: _Outcome) -> AsyncIterator[Event]:
        attempts = outcome.attempts
        errors: list[UpstreamError] = []
        stream = req.stream
        n = 0
        for i, target in enumerate(plan.chain):
            nxt = plan.chain[i + 1].name if i + 1 < len(plan.chain) else None
            if target.unusable_reason:
                err = TargetUnusable(f"{target.name}: {target.unusable_reason}", code="unusable",
                                     retryable=False, provider=target.provider)
                errors.append(err)
                attempts.append(AttemptRecord(target.name, "skipped", code="unusable",
                                              message=err.message))
                if nxt:
                    yield Fallback(from_=target.name, to=nxt, reason="unusable")
                continue
            n += 1
            call = Call(model=target.model, messages=req.messages, tools=req.tools,
                        tool_choice=req.tool_choice, max_tokens=plan.params.max_tokens,
                        temperature=plan.params.temperature, top_p=plan.params.top_p,
                        stop=plan.params.stop, thinking=plan.params.thinking, stream=stream,
                        thinking_style=target.spec.thinking, sampling=target.spec.sampling)
            t0 = self.clock()
            committed = False
            upstream = call_target(self.clients[target.provider], target, call)
            try:
                async for ev in upstream:
                    if not committed:
                        committed = True
                        attempts.append(AttemptRecord(target.name, "ok",
                                                      latency_ms=round((self.clock() - t0) * 1e3, 3)))
                        yield Start(id=request_id, task=plan.task, provider=target.provider,
                                    model=target.model, attempt=n)
                    if isinstance(ev, Usage):
                        ev.cost_usd = _cost(ev, target)
                    yield ev
                return
            except UpstreamError as e:
                latency = round((self.clock() - t0) * 1e3, 3)
                if committed:
                    outcome.error = e
                    attempts[-1].outcome, attempts[-1].code = "error", e.code
                    yield Error(code=e.code, message=e.message, retryable=e.retryable,
                                provider=target.provider)
                    return
                errors.append(e)
                attempts.append(AttemptRecord(target.name, "error", code=e.code, message=e.message,
                                              status=e.upstream_status or None, latency_ms=latency))
                if nxt:
                    yield Fallback(from_=target.name, to=nxt, reason=e.code)
            finally:
                await upstream.aclose()
        failed = _all_failed(attempts, errors)
        outcome.error = failed
        yield Error(code="all_targets_failed", message=failed.message,
                    retryable=failed.status in (429, 503, 504), provider="")
