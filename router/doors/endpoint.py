"""A front door as a Litestar ``@asgi`` route: one request through ``Door`` and ``Router``.

Raw ASGI on the hot path (Litestar's request parsing and response objects cost about a tenth of a
request's CPU), inside the one Litestar app: its routing, CORS, request id, lifespan and
exception handlers apply. Errors before the answer begins are raised and answered by the app's one
exception handler in the door's own shape (``router.app``); an error after a stream began ends it
with the door's terminal error event (``router.asgi.stream_sse``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import Any

import msgspec
from litestar import Litestar, asgi
from litestar.exceptions import MethodNotAllowedException
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from router.asgi import CallerLeft, CallerWatch, read_body, respond, stream_sse
from router.doors.base import Door
from router.engine import RequestContext, Router
from router.errors import PayloadTooLarge, RateLimited
from router.events import Error, Event, Start
from router.limits import caller_id
from router.plan import Plan
from router.request import TaskRequest
from router.requestid import DOOR_OPT, request_id_of
from router.run import Run
from router.stores.base import new_store_budget
from router.worker import submit

__all__ = ["SSE_HEADERS", "count_route", "door_route", "served_by", "until_commit"]

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _current(scope: Scope) -> tuple[Router, Any, int, float]:
    door: Any = Litestar.from_scope(scope).state.door  # set by the app's lifespan
    return door.live.router, door.telemetry, door.max_body_bytes, door.read_timeout


def _asks_async(door: Door, req: TaskRequest, headers: dict[str, str]) -> bool:
    """``"mode": "async"`` or ``Prefer: respond-async`` (RFC 7240), on a door that queues."""
    return door.queues and (req.mode == "async" or "respond-async" in headers.get("prefer", "").lower())


async def _queue(scope: Any, send: Any, router: Router, req: TaskRequest, task: str, caller: str,
                 tenant: str | None, rid: str) -> None:
    """Queue the request as an async task: ``202`` with the task and ``Location`` (the earlier
    task, and ``X-LLM-Router-Idempotent-Replay: true``, for a repeated ``idempotency_key``)."""
    state: Any = Litestar.from_scope(scope).state.door
    rec, fresh = await submit(router, state.queue, req, task=task, caller=caller, tenant=tenant, wall=router.clock.wall())
    state.workers.notify()
    await respond(send, 202, msgspec.json.encode(rec.public()), "application/json",
                  {"location": f"/v1/tasks/{rec.id}", "x-request-id": rid,
                   **({} if fresh else {"x-llm-router-idempotent-replay": "true"})})


async def serve_door(door: Door, scope: Any, receive: Any, send: Any) -> None:
    """Authenticate, decode, plan, admit, then fold or stream. Raises ``RouterError`` (and
    Litestar's ``HTTPException``) before anything is sent; never after. A stream's status and
    headers wait for its commit (the first target's first event, or a cached answer): when every
    target fails before that, the caller gets the failure's status and the door's error body.
    A caller who leaves, streamed or not, cancels the upstream work (``CallerWatch``)."""
    if scope["method"] != "POST":
        raise MethodNotAllowedException(headers={"allow": "POST"})
    router, telemetry, max_body, read_timeout = _current(scope)  # this request keeps this router to its end
    new_store_budget()  # all of this request's store calls share one store timeout
    rid = request_id_of(scope)
    accepted = await _accept(door, scope, receive, send, router, max_body, read_timeout, rid)
    if accepted is None:
        return
    asked, opts, plan, ctx = accepted
    req = plan.request  # as sent: a typed task's prompt rendered; the door answers in the terms of `asked`
    try:
        async with router.admit(plan, ctx) as ticket:
            run = router.run(req, plan, ctx)
            out = {**ticket.headers(), "x-request-id": rid}
            scope["state"]["ratelimit_headers"] = out  # an error answer carries them too
            async with CallerWatch(receive, done=lambda: run.over):
                if not req.stream:
                    answer = await router.complete(req, plan, run, rid, ctx, ticket)
                    await respond(send, 200, await door.answer(answer, asked, opts), door.media_type,
                                  {**out, **served_by(answer.provider, answer.model, plan.task),
                                   "x-llm-router-cost-usd": f"{answer.usage.cost_usd:.10f}".rstrip("0").rstrip(".") or "0"})
                    return
                # closed before the admission settles, however the stream ends: the run's facts
                # (served, used) reach the ticket first
                async with aclosing(router.stream(req, plan, run, rid, ctx, ticket)) as events:
                    head = await until_commit(events, run)
                    start = head[-1]
                    await stream_sse(send, door.stream(_Replay(head, events), asked, opts),
                                     {**SSE_HEADERS, **out,
                                      **(served_by(start.provider, start.model, plan.task) if type(start) is Start else {})},
                                     lambda err: door.error_event(err, run.count))
    except RateLimited:
        if "ratelimit_headers" not in scope["state"]:  # refused at admission, not by an upstream
            telemetry.rate_limited(plan.task, "caller")
        raise


async def _accept(door: Door, scope: Any, receive: Any, send: Any, router: Router, max_body: int,
                  read_timeout: float, rid: str) -> tuple[TaskRequest, Any, Plan, RequestContext] | None:
    """The request read, decoded, authorized and planned: (as asked, the door's options, the plan,
    the context); None when there is nothing more to do (the caller left while sending its body,
    or the request was queued as an async task and answered ``202``). Its own frame, so what only
    this needs (the request's headers and raw body) is not kept for the life of a stream."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body:  # before any read: no `100 Continue` is sent
        raise PayloadTooLarge(f"request body is over {max_body} bytes, the limit")
    try:
        body = await read_body(receive, max_body, read_timeout, router.clock)
    except CallerLeft:
        return None
    tenant = router.auth.identify(headers)
    asked, opts = await door.decode(body, headers, router.store)
    name = router.planner.resolve(asked.task)
    if name is not None:
        router.auth.allow(tenant, name)  # before a typed task's input is checked or rendered
    plan = router.plan(asked)  # raises UnknownTask (404) for an unknown name
    if plan.request.stream and not door.restarts:
        plan.midstream = "error"  # this door's stream cannot say an answer starts over
    cc = headers.get("cache-control", "").lower()
    client = scope.get("client")
    trace = {k: v for k in ("traceparent", "tracestate") if (v := headers.get(k))}
    ctx = RequestContext(caller=tenant or caller_id(headers.get("x-caller"), client[0] if client else None),
                         no_cache="no-cache" in cc, no_store="no-store" in cc,
                         limits=router.auth.limits(tenant) if tenant else None, trace=trace or None, tenant=tenant)
    if _asks_async(door, asked, headers):
        await _queue(scope, send, router, asked, plan.task, ctx.caller, tenant, rid)
        return None
    return asked, opts, plan, ctx


async def serve_count(door: Door, scope: Any, receive: Any, send: Any) -> None:
    """``POST /v1/messages/count_tokens`` (Anthropic's shape; ``max_tokens`` not needed): the
    prompt's input tokens for the task's or model's first usable target, ``{"input_tokens": N}``;
    ``estimated: true`` (and ``x-llm-router-estimated``) when the router estimated it."""
    if scope["method"] != "POST":
        raise MethodNotAllowedException(headers={"allow": "POST"})
    router, _, max_body, read_timeout = _current(scope)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    try:
        body = await read_body(receive, max_body, read_timeout, router.clock)
    except CallerLeft:
        return
    tenant = router.auth.identify(headers)
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raw = None
    if isinstance(raw, dict) and "max_tokens" not in raw:  # the count takes no max_tokens
        body = msgspec.json.encode({**raw, "max_tokens": 1})
    req, _ = await door.decode(body, headers, router.store)
    name = router.planner.resolve(req.task)
    if name is not None:
        router.auth.allow(tenant, name)
    plan = router.plan(req)
    req = plan.request
    count, estimated, target = await router.count_tokens(req, plan)
    answer = {"input_tokens": count, **({"estimated": True} if estimated else {})}
    await respond(send, 200, msgspec.json.encode(answer), "application/json",
                  {"x-request-id": request_id_of(scope), "x-llm-router-target": target,
                   "x-llm-router-estimated": "true" if estimated else "false"})


def count_route(path: str, door: Door) -> ASGIRouteHandler:
    """The Litestar route of ``serve_count`` at ``path`` (errors in ``door``'s shape)."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        await serve_count(door, scope, receive, send)

    handle.__doc__ = "Count a prompt's input tokens (Anthropic's count_tokens)"
    return asgi(path, name=path, copy_scope=False, opt={DOOR_OPT: True})(handle)


def served_by(provider: str, model: str, task: str) -> dict[str, str]:
    """The headers that name who served an answer: ``x-llm-router-target`` (provider/model) and
    ``x-llm-router-task``."""
    return {"x-llm-router-target": f"{provider}/{model}", "x-llm-router-task": task}


async def until_commit(events: AsyncIterator[Event], run: Run) -> list[Event]:
    """The events up to the commit (``start``: a target's first event, or a cached answer),
    fallbacks included. Raises the run's error when the request failed before anything was
    committed (every target failed; a content-filter refusal), so it is answered with its own
    status and the door's error body instead of a 200 stream that only says so."""
    head: list[Event] = []
    async for ev in events:
        head.append(ev)
        if type(ev) is Start:
            break
        if type(ev) is Error and run.error is not None:
            raise run.error
    return head


class _Replay:
    """The events read before the commit, then the rest of the stream (an async iterator; past
    the head, each step is the stream's own ``__anext__``, no frame of this one's)."""

    __slots__ = ("head", "rest")

    def __init__(self, head: list[Event], rest: AsyncIterator[Event]) -> None:
        self.head, self.rest = head, rest

    def __aiter__(self) -> _Replay:
        return self

    def __anext__(self) -> Awaitable[Event]:
        if self.head:
            return _now(self.head.pop(0))
        return self.rest.__anext__()


async def _now(ev: Event) -> Event:
    return ev


def door_route(path: str, door: Door, *, summary: str) -> ASGIRouteHandler:
    """The Litestar route of ``door`` at ``path`` (POST; other methods answer 405 in its shape)."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        await serve_door(door, scope, receive, send)

    handle.__doc__ = summary
    return asgi(path, name=path, copy_scope=False, opt={DOOR_OPT: True})(handle)
