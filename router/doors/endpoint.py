"""A front door as a Litestar ``@asgi`` route: one request through ``Door`` and ``Router``.

Raw ASGI on the hot path (Litestar's request parsing and response objects cost about a tenth of a
request's CPU), inside the one Litestar app: its routing, CORS, request id, lifespan and
exception handlers apply. Errors before the answer begins are raised and answered by the app's one
exception handler in the door's own shape (``router.app``); an error after a stream began ends it
with the door's terminal error event (``router.asgi.stream_sse``).
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

from litestar import Litestar, asgi
from litestar.exceptions import MethodNotAllowedException
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from router.asgi import CallerLeft, read_body, respond, stream_sse
from router.doors.base import Door
from router.engine import RequestContext, Router
from router.errors import RateLimited
from router.limits import caller_id
from router.requestid import DOOR_OPT, request_id_of

__all__ = ["SSE_HEADERS", "door_route"]

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _current(scope: Scope) -> tuple[Router, Any, int]:
    door: Any = Litestar.from_scope(scope).state.door  # set by the app's lifespan
    return door.live.router, door.telemetry, door.max_body_bytes


async def serve_door(door: Door, scope: Any, receive: Any, send: Any) -> None:
    """Authenticate, decode, plan, admit, then stream or fold. Raises ``RouterError`` (and
    Litestar's ``HTTPException``) before anything is sent; never after."""
    if scope["method"] != "POST":
        raise MethodNotAllowedException(headers={"allow": "POST"})
    router, telemetry, max_body = _current(scope)  # this request keeps this router to its end
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    rid = request_id_of(scope)
    try:
        body = await read_body(receive, max_body)
    except CallerLeft:
        return
    tenant = router.auth.identify(headers)
    req, opts = door.decode(body, headers)
    plan = router.plan(req)
    if req.stream and not door.restarts:
        plan.midstream = "error"  # this door's stream cannot say an answer starts over
    router.auth.allow(tenant, plan.task)
    cc = headers.get("cache-control", "").lower()
    client = scope.get("client")
    trace = {k: v for k in ("traceparent", "tracestate") if (v := headers.get(k))}
    ctx = RequestContext(caller=tenant or caller_id(headers.get("x-caller"), client[0] if client else None),
                         no_cache="no-cache" in cc, no_store="no-store" in cc,
                         limits=router.auth.limits(tenant) if tenant else None, trace=trace or None)
    try:
        async with router.admit(plan, ctx) as ticket:
            run = router.run(req, plan, ctx)
            out = {**ticket.headers(), "x-request-id": rid}
            scope["state"]["ratelimit_headers"] = out  # an error answer carries them too
            if not req.stream:
                answer = await router.complete(req, plan, run, rid, ctx, ticket)
                await respond(send, 200, door.answer(answer, req, opts), door.media_type, out)
                return
            # closed before the admission settles, however the stream ends: the run's facts
            # (served, used) reach the ticket first
            async with aclosing(router.stream(req, plan, run, rid, ctx, ticket)) as events:
                await stream_sse(send, receive, door.stream(events, req, opts), {**SSE_HEADERS, **out},
                                 lambda err: door.error_event(err, run.count), done=lambda: run.over)
    except RateLimited:
        if "ratelimit_headers" not in scope["state"]:  # refused at admission, not by an upstream
            telemetry.rate_limited(plan.task, "caller")
        raise


def door_route(path: str, door: Door, *, summary: str) -> ASGIRouteHandler:
    """The Litestar route of ``door`` at ``path`` (POST; other methods answer 405 in its shape)."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        await serve_door(door, scope, receive, send)

    handle.__doc__ = summary
    return asgi(path, name=path, copy_scope=False, opt={DOOR_OPT: True})(handle)
