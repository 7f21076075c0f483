"""The HTTP service: the front doors (``/v1/tasks``, ``/v1/chat/completions``, ``/v1/messages``,
``/api/chat``) as plain ASGI (``router.asgi``: the hot path), and on Litestar ``/v1/models``,
health, readiness, routes, metrics, usage, experiments and feedback.

``create_app(config, ...)`` builds the app; its resources are made in the lifespan unless given:
one pooled ``UpstreamClient`` per provider (aiohttp, keep-alive), the store (Redis for ``REDIS_URL``),
and, when ``load`` is given, the live config (watching routing.yaml, reloading on SIGHUP). Every
request takes the router current when it starts and finishes on it. Errors answer in the door's
own shape; nothing upstream, no stack trace and no secret is echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException

from router.asgi import CallerLeft, Receive, Scope, Send, read_body, respond, stream_sse
from router.config import RoutingConfig
from router.doors.anthropic import AnthropicDoor
from router.doors.base import Door, error_headers
from router.doors.native import NativeDoor
from router.doors.openai import OpenAIDoor
from router.doors.zchat import ChatDoor
from router.engine import RequestContext, Router, new_request_id
from router.errors import RateLimited, RequestError, RouterError
from router.events import encode_json
from router.experiments import UnknownResponse, UnknownTaskExperiment, decode_feedback, experiment_report
from router.limits import caller_id
from router.reload import LiveConfig
from router.stores import Store, StoreError, store_from_env
from router.upstream import UpstreamClient
from router.telemetry import Telemetry, usage_report

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

log = logging.getLogger("llm_router")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
_JSON = "application/json"
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_HTTP_TYPES = {404: "not_found_error", 405: "method_not_allowed", 413: "request_too_large"}


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def request_id(given: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is 1-128 safe characters, else a new ``req_...`` id."""
    return given if given and _REQUEST_ID.fullmatch(given) else new_request_id()


def _request_id_middleware(app: Any) -> Any:
    """Every response carries ``X-Request-ID``: the caller's when valid, else a new one."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        rid = request_id(next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), None))
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware


def parse_since(value: str | None) -> float:
    """``YYYY-MM-DD`` or epoch seconds; default 30 days ago. Raises ``RequestError``."""
    if not value:
        return time.time() - 30 * 86400
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise RequestError("since must be YYYY-MM-DD or epoch seconds", "since") from None


def _upstream_client() -> UpstreamClient:
    """One provider's pooled upstream client; ``LLM_ROUTER_MAX_CONNECTIONS`` is the most
    connections to one provider per worker (10,000: every open stream holds one, and a request
    beyond the cap waits for a slot up to the connect timeout)."""
    return UpstreamClient(max_connections=int(os.environ.get("LLM_ROUTER_MAX_CONNECTIONS", "10000")))


def _json(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response[bytes]:
    return Response(encode_json(obj), status_code=status, media_type=_JSON, headers=dict(headers or {}))


def _router_error(_: Request[Any, Any, Any], exc: RouterError) -> Response[bytes]:
    return _json(exc.to_body(), exc.status, error_headers(exc))


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    kind = _HTTP_TYPES.get(status, "invalid_request_error" if status < 500 else "internal_error")
    return _json({"error": {"type": kind, "message": exc.detail if status < 500 else "internal error"}}, status)


def _internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
    return _json({"error": {"type": "internal_error", "message": "internal error"}}, 500)


async def _routes_view(router: Router, live: LiveConfig) -> dict[str, Any]:
    """Effective tasks, chains, policies, limits, circuits and providers, and the config version;
    API keys are never shown, only whether set; tenants' key hashes are not shown either."""
    config = router.config
    return {
        "config": live.status(),
        "targets": await router.target_states(),
        "limits": router.limiter.describe(),
        "tasks": {name: {"chain": t.chain, "params": t.params, "midstream": t.midstream, "cache": t.cache,
                         "policies": {tg: router.policy(name, tg) for tg in t.chain}}
                  for name, t in config.tasks.items()},
        "providers": {
            name: {"protocol": p.protocol, "base_url": p.base_url, "api_key": "set" if p.api_key else "unset",
                   "models": p.models, "usable": p.unusable_reason is None,
                   **({"unusable_reason": p.unusable_reason} if p.unusable_reason else {})}
            for name, p in config.providers.items()
        },
        "tenants": {name: {"keys": len(t.keys), "tasks": t.tasks, "limits": t.limits}
                    for name, t in config.tenants.items()},
    }


def create_app(config: RoutingConfig, *, clients: Mapping[str, UpstreamClient] | None = None,
               store: Store | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               notes: list[str] | None = None, load: Callable[[], RoutingConfig] | None = None,
               telemetry: Telemetry | None = None, **router_options: Any) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The router's ASGI app for ``config``: the doors as plain ASGI, everything else Litestar.

    ``clients``: provider name -> ``UpstreamClient`` (else one pooled client per provider, made
    in the lifespan, also for providers a reload adds). ``store``: shared state (else from the
    environment). ``load``: re-reads the config (raises ``ConfigError``); given, the app watches
    ``config.source`` and reloads on change and on SIGHUP. ``max_body_bytes``: larger bodies get 413.
    ``notes``: lines logged at startup. ``telemetry``: metrics, spans, request logs and the usage
    ledger (else one built from the ``OTEL_*`` environment). ``router_options`` go to ``Router``
    (tests inject ``sleep``, ``wall`` and ``clock``).
    """
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        owned: dict[str, Any] = {}
        pool: dict[str, Any] = dict(clients or {})
        st = store or store_from_env()
        tel = telemetry or Telemetry()
        tel.store = st
        state["telemetry"] = tel
        observer = None if os.environ.get("LLM_ROUTER_TELEMETRY") == "off" and telemetry is None else tel.record_soon

        def build(cfg: RoutingConfig) -> Router:
            if clients is None:
                for name in cfg.providers:
                    if name not in pool:
                        pool[name] = owned[name] = _upstream_client()
            return Router(cfg, pool, store=st, observer=observer, log_content=cfg.log_content, **router_options)

        live = LiveConfig(config.source, load or (lambda: config), build, build(config))
        state["live"] = live
        for line in notes or ():
            log.warning("%s", line)
        for name, p in config.providers.items():
            if p.unusable_reason:
                log.warning("provider %s is unusable: %s", name, p.unusable_reason)
        if st.kind == "memory":
            log.warning("stores: in-memory (no REDIS_URL): limits, cache and cooldowns are this process's own")
        else:
            log.warning("stores: %s (%s)", st.kind, "reachable" if await st.ping() else
                        "NOT reachable yet: degraded until it answers")
        if not config.tenants:
            log.warning("auth: off (no tenants in the config): every caller may use every task")
        stop = asyncio.Event()
        watcher = None
        if load is not None:
            watcher = asyncio.create_task(live.watch(stop))
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
                asyncio.get_running_loop().add_signal_handler(
                    signal.SIGHUP, lambda: asyncio.ensure_future(live.reload("SIGHUP", force=True)))
        try:
            yield
        finally:
            stop.set()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            for c in owned.values():
                await c.aclose()
            await tel.close()  # the ledger's pending sums, before the store closes
            if store is None:
                await st.close()

    def current() -> Router:
        return state["live"].router  # type: ignore[no-any-return]

    async def serve_door(door: Door, scope: Scope, receive: Receive, send: Send) -> None:
        """One request through ``door``: authenticate, decode, plan, admit, then stream or fold;
        every error before the stream begins is answered in the door's own shape."""
        router = current()  # this request keeps this router (and its config) to the end
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rid = request_id(headers.get("x-request-id"))
        plan = None
        try:
            tenant = router.auth.identify(headers)
            req, opts = door.decode(await read_body(receive, max_body_bytes), headers)
            plan = router.plan(req)
            router.auth.allow(tenant, plan.task)
            cc = headers.get("cache-control", "").lower()
            client = scope.get("client")
            caller = tenant or caller_id(headers.get("x-caller"), client[0] if client else None)
            trace = {k: v for k in ("traceparent", "tracestate") if (v := headers.get(k))}
            ctx = RequestContext(caller=caller, no_cache="no-cache" in cc, no_store="no-store" in cc,
                                 limits=router.auth.limits(tenant) if tenant else None, trace=trace or None)
            ticket = await router.admit(plan, ctx)
        except RouterError as e:
            if isinstance(e, RateLimited) and plan is not None:
                state["telemetry"].rate_limited(plan.task, "caller")
            status, body = door.error(e)
            return await respond(send, status, body, door.media_type, {**error_headers(e), "x-request-id": rid})
        except CallerLeft:
            return
        out = {**ticket.headers(), "x-request-id": rid}
        if req.stream:
            try:
                await stream_sse(send, receive, door.stream(router.stream(req, plan, rid, ticket, ctx), req, opts),
                                 {**_SSE_HEADERS, **out})
            finally:  # the caller left before the stream began: refund its slot
                if not ticket.settled:
                    await router.limiter.settle(ticket, None, served=False)
            return
        try:
            answer = await router.complete(req, plan, rid, ticket, ctx)
        except RouterError as e:
            status, body = door.error(e)
            return await respond(send, status, body, door.media_type, {**out, **error_headers(e)})
        await respond(send, 200, door.answer(answer, req, opts), door.media_type, out)

    def known(name: str) -> bool:
        router = current()
        return name in router.config.tasks or ("/" in name and name in router.targets)

    doors: dict[str, Door] = {
        "/v1/tasks": NativeDoor(max_body_bytes),  # the native door: the canonical request, the unified events
        "/v1/chat/completions": OpenAIDoor(max_body_bytes),  # model: a task or provider/model
        "/v1/messages": AnthropicDoor(max_body_bytes),  # model: a task or provider/model
        "/api/chat": ChatDoor(max_body_bytes, known),  # the Z.AI FastAPI backend's contract (task chat)
    }

    @get("/v1/models")
    async def models(request: Request[Any, Any, Any]) -> Response[bytes]:
        """Tasks and pinnable targets, as an OpenAI model list (any valid key when auth is on)."""
        router = current()
        router.auth.identify(request.headers)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "llm-router"} for name in router.config.tasks]
        data += [{"id": name, "object": "model", "created": 0, "owned_by": t.provider} for name, t in router.targets.items()]
        return _json({"object": "list", "data": data})

    @get("/health")
    async def health() -> dict[str, Any]:
        """The health answer of the Z.AI FastAPI backend that ``/api/chat`` replaces."""
        return {"status": "healthy", "zai_client_initialized": "live" in state,
                "timestamp": datetime.now().isoformat()}

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz")
    async def readyz() -> Response[bytes]:
        """200 while the service can answer (a failing store only degrades it: cache bypassed,
        limits per ``on_store_error``); 503 before the lifespan has run. Shows the active config
        version and the last rejected edit."""
        if "live" not in state:
            return _json({"status": "starting"}, 503)
        router = current()
        store_ok = await router.store.ping()
        return _json({"status": "ready" if store_ok else "degraded", "pid": os.getpid(), "config": state["live"].status(),
                      "stores": {"kind": router.store.kind, "status": "ok" if store_ok else "unreachable"}})

    @get("/v1/experiments/{task:str}")
    async def experiment(request: Request[Any, Any, Any]) -> Response[bytes]:
        """Per variant (and shadow target): counts, errors, fallbacks, latency/TTFT, tokens, cost
        and feedback, summed over every replica, with the sample sizes."""
        task: str = request.path_params["task"]
        router = current()
        router.auth.admin(request.headers)
        t = router.config.tasks.get(task)
        if t is None or (t.experiment is None and t.shadow is None):
            with_ab = [n for n, x in router.config.tasks.items() if x.experiment or x.shadow]
            raise UnknownTaskExperiment(task, with_ab)
        return _json(await experiment_report(router.store, task, t))

    @post("/v1/feedback", status_code=200)
    async def feedback(request: Request[Any, Any, Any]) -> Response[bytes]:
        """``{id, score, label?}``: a caller's judgement of an answer, attributed to its variant."""
        router = current()
        router.auth.identify(request.headers)
        fb = decode_feedback(await request.body())
        task_variant = await router.store.kv_get(f"resp:{fb.id}")
        if task_variant is None:
            raise UnknownResponse(fb.id)
        task, variant = task_variant.decode().split("\t", 1)
        fields = {"feedback_count": 1.0, "feedback_sum": fb.score}
        if fb.label:
            fields[f"label:{fb.label}"] = 1.0
        await router.store.stats_add(f"exp:{task}:{variant}", fields)
        return _json({"id": fb.id, "task": task, "variant": variant, "recorded": True})

    async def _store_down(_: Request[Any, Any, Any], exc: StoreError) -> Response[bytes]:
        return _json({"error": {"type": "store_unavailable", "message": "the store (Redis) did not answer"}}, 503)

    @get("/metrics", media_type="text/plain; version=0.0.4")
    async def metrics() -> Response[bytes]:
        """Prometheus text format, summed over every worker."""
        return Response(state["telemetry"].metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @get("/v1/usage")
    async def usage(request: Request[Any, Any, Any]) -> Response[bytes]:
        """Usage and cost totals: ``?tenant=&task=&since=`` (``since``: YYYY-MM-DD or epoch seconds;
        default 30 days ago; UTC-day resolution). An admin key is needed when tenants exist."""
        router = current()
        router.auth.admin(request.headers)
        q = request.query_params
        since = parse_since(q.get("since"))
        return _json(await usage_report(router.store, tenant=q.get("tenant"), task=q.get("task"), since=since))

    @get("/v1/routes")
    async def routes(request: Request[Any, Any, Any]) -> Response[bytes]:
        """The effective routing (an admin key is needed when tenants exist)."""
        router = current()
        router.auth.admin(request.headers)
        return _json(await _routes_view(router, state["live"]))

    rest = Litestar(
        route_handlers=[models, health, healthz, readyz, routes,
                        experiment, feedback, metrics, usage],
        middleware=[_request_id_middleware],
        lifespan=[lifespan],
        exception_handlers={RouterError: _router_error, HTTPException: _http_error, StoreError: _store_down,
                            Exception: _internal_error},
        request_max_body_size=max_body_bytes,
        openapi_config=None,
        logging_config=None,
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        """The doors are served here, as plain ASGI (they are the hot path: Litestar's routing,
        middleware and response objects cost about a tenth of a request's CPU); every other route,
        the lifespan and the error pages are Litestar's."""
        door = doors.get(scope["path"]) if scope["type"] == "http" else None
        if door is None:
            return await rest(scope, receive, send)
        if scope["method"] != "POST":
            body = encode_json({"error": {"type": "method_not_allowed", "message": "use POST"}})
            return await respond(send, 405, body, _JSON, {"allow": "POST"})
        try:
            await serve_door(door, scope, receive, send)
        except Exception as exc:  # answered like Litestar's handler would, if the answer has not begun
            log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
            body = encode_json({"error": {"type": "internal_error", "message": "internal error"}})
            await respond(send, 500, body, _JSON, {})

    return app
