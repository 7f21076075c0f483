"""The HTTP service (Litestar): the front doors (``/v1/tasks``, ``/v1/chat/completions``,
``/v1/messages``, ``/api/chat``), ``/v1/models``, health, readiness and routes.

``create_app(config, clients=None, ...)`` builds the app; the pooled upstream clients (one
``httpx.AsyncClient`` per provider, keep-alive) are made in the lifespan unless given. Every error
answers with DESIGN.md's JSON shape ``{"error": {"type", "message", "path"?}}``; nothing upstream,
no stack trace and no secret is echoed.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Stream

from router.config import RoutingConfig
from router.engine import RequestContext, Router, new_request_id
from router.errors import RouterError
from router.doors.anthropic import AnthropicDoor
from router.doors.base import Door, error_headers
from router.doors.native import NativeDoor
from router.doors.openai import OpenAIDoor
from router.doors.zchat import ChatDoor
from router.events import encode_json
from router.limits import caller_id
from router.stores import Store, store_from_env

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

log = logging.getLogger("llm_router")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
_JSON = "application/json"
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _error_response(err: RouterError) -> Response[bytes]:
    return Response(encode_json(err.to_body()), status_code=err.status, media_type=_JSON,
                    headers=error_headers(err))


def _router_error(_: Request[Any, Any, Any], exc: RouterError) -> Response[bytes]:
    return _error_response(exc)


_HTTP_TYPES = {404: "not_found_error", 405: "method_not_allowed", 413: "request_too_large"}


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    body = {"error": {"type": _HTTP_TYPES.get(status, "invalid_request_error" if status < 500 else "internal_error"),
                      "message": exc.detail if status < 500 else "internal error"}}
    return Response(encode_json(body), status_code=status, media_type=_JSON)


def _internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
    return Response(encode_json({"error": {"type": "internal_error", "message": "internal error"}}),
                    status_code=500, media_type=_JSON)


async def _routes_view(config: RoutingConfig, router: Router) -> dict[str, Any]:
    """Effective tasks, chains and providers, and each target's circuit; API keys are never shown,
    only whether set."""
    return {
        "targets": await router.target_states(),
        "limits": router.limiter.describe(),
        "version": config.digest,
        "source": config.source,
        "tasks": {name: {"chain": t.chain, "params": t.params, "midstream": t.midstream, "cache": t.cache,
                         "policies": {tg: router.policy(name, tg) for tg in t.chain}}
                  for name, t in config.tasks.items()},
        "providers": {
            name: {"protocol": p.protocol, "base_url": p.base_url,
                   "api_key": "set" if p.api_key else "unset",
                   "models": p.models,
                   "usable": p.unusable_reason is None,
                   **({"unusable_reason": p.unusable_reason} if p.unusable_reason else {})}
            for name, p in config.providers.items()
        },
    }


def create_app(config: RoutingConfig, *, clients: Mapping[str, httpx.AsyncClient] | None = None,
               store: Store | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               notes: list[str] | None = None, **router_options: Any) -> Litestar:
    """The router app for ``config``.

    ``clients``: provider name -> ``httpx.AsyncClient``; when ``None`` the lifespan makes one
    pooled client per provider and closes them at shutdown. ``store``: shared state; when ``None``
    the lifespan makes one from the environment (Redis for ``REDIS_URL``, else in-memory). ``max_body_bytes``: larger request bodies get 413. ``notes``: lines logged at
    startup (e.g. that the emulator stands in). ``router_options`` go to ``Router`` (tests inject
    ``sleep``, ``wall`` and ``clock`` there).
    """
    loaded_at = time.time()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        owned: dict[str, httpx.AsyncClient] = {}
        use = clients
        if use is None:
            limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60)
            owned = {name: httpx.AsyncClient(limits=limits, trust_env=False) for name in config.providers}
            use = owned
        own_store = store is None
        state["router"] = Router(config, use, store=store or store_from_env(), **router_options)
        for line in notes or ():
            log.warning("%s", line)
        for name, p in config.providers.items():
            if p.unusable_reason:
                log.warning("provider %s is unusable: %s", name, p.unusable_reason)
        st = state["router"].store
        if st.kind == "memory":
            log.warning("stores: in-memory (no REDIS_URL): limits, cache and cooldowns are this process's own")
        else:
            log.warning("stores: %s (%s)", st.kind, "reachable" if await st.ping() else
                        "NOT reachable yet: degraded until it answers")
        try:
            yield
        finally:
            for c in owned.values():
                await c.aclose()
            if own_store:
                await st.close()

    async def serve_door(door: Door, request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        """One request through ``door``: decode, plan, admit, then stream or fold; every error
        before the stream begins is answered in the door's own shape."""
        router: Router = state["router"]
        try:
            req, opts = door.decode(await request.body(), request.headers)
            plan = router.plan(req)
            cc = request.headers.get("cache-control", "").lower()
            ctx = RequestContext(caller=caller_id(request.headers.get("x-caller"),
                                                  request.client.host if request.client else None),
                                 no_cache="no-cache" in cc, no_store="no-store" in cc)
            ticket = await router.admit(plan, ctx)
        except RouterError as e:
            status, body = door.error(e)
            return Response(body, status_code=status, media_type=door.media_type, headers=error_headers(e))
        rid = new_request_id()
        headers = ticket.headers()
        if req.stream:
            async def sse() -> AsyncIterator[bytes]:
                try:
                    async for chunk in door.stream(router.stream(req, plan, rid, ticket, ctx), req, opts):
                        yield chunk
                finally:  # the caller left before the stream began: refund its slot
                    if not ticket.settled:
                        await router.limiter.settle(ticket, None, served=False)
            return Stream(sse(), media_type="text/event-stream", headers={**_SSE_HEADERS, **headers})
        try:
            answer = await router.complete(req, plan, rid, ticket, ctx)
        except RouterError as e:
            status, body = door.error(e)
            return Response(body, status_code=status, media_type=door.media_type,
                            headers={**headers, **error_headers(e)})
        return Response(door.answer(answer, req, opts), media_type=door.media_type, headers=headers)

    native, oai, claude = NativeDoor(max_body_bytes), OpenAIDoor(max_body_bytes), AnthropicDoor(max_body_bytes)
    zchat = ChatDoor(max_body_bytes, lambda name: name in config.tasks or "/" in name and name in state["router"].targets)

    @post("/v1/tasks", status_code=200)
    async def tasks(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        """The native door: the canonical request, the unified events."""
        return await serve_door(native, request)

    @post("/v1/chat/completions", status_code=200)
    async def chat_completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        """OpenAI chat completions; ``model`` is a task or ``provider/model``."""
        return await serve_door(oai, request)

    @post("/v1/messages", status_code=200)
    async def messages(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        """Anthropic Messages; ``model`` is a task or ``provider/model``."""
        return await serve_door(claude, request)

    @post("/api/chat", status_code=200)
    async def api_chat(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        """The Z.AI FastAPI backend's contract, routed to the ``chat`` task by default."""
        return await serve_door(zchat, request)

    @get("/v1/models")
    async def models() -> Response[bytes]:
        """Tasks and pinnable targets, as an OpenAI model list."""
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "llm-router"} for name in config.tasks]
        data += [{"id": name, "object": "model", "created": 0, "owned_by": t.provider}
                 for name, t in state["router"].targets.items()]
        return Response(encode_json({"object": "list", "data": data}), media_type=_JSON)

    @get("/health")
    async def health() -> dict[str, Any]:
        """The health answer of the Z.AI FastAPI backend that ``/api/chat`` replaces."""
        return {"status": "healthy", "zai_client_initialized": "router" in state,
                "timestamp": datetime.now().isoformat()}

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz")
    async def readyz() -> Response[bytes]:
        """200 while the service can answer (a failing store only degrades it: cache bypassed,
        limits per ``on_store_error``); 503 before the lifespan has run."""
        ready = "router" in state
        store_ok = ready and await state["router"].store.ping()
        body = {"status": ("ready" if store_ok else "degraded") if ready else "starting",
                "config": {"version": config.digest, "source": config.source, "loaded_at": loaded_at},
                "stores": {"kind": state["router"].store.kind if ready else None,
                           "status": "ok" if store_ok else "unreachable"}}
        return Response(encode_json(body), status_code=200 if ready else 503, media_type=_JSON)

    @get("/v1/routes")
    async def routes() -> Response[bytes]:
        return Response(encode_json(await _routes_view(config, state["router"])), media_type=_JSON)

    return Litestar(
        route_handlers=[tasks, chat_completions, messages, api_chat, models, health, healthz, readyz, routes],
        lifespan=[lifespan],
        exception_handlers={RouterError: _router_error, HTTPException: _http_error,
                            Exception: _internal_error},
        request_max_body_size=max_body_bytes,
        openapi_config=None,
        logging_config=None,
    )
