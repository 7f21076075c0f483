"""The HTTP service: one Litestar app for every route, the four doors included.

``create_app(config, settings, ...)`` builds it. The doors (``/v1/tasks``, ``/v1/chat/completions``,
``/v1/messages``, ``/api/chat``) are raw ``@asgi`` routes (``router.doors.endpoint``); the rest
are Litestar handlers (``router.routes``). One stack gives every answer the same request id
(``X-Request-ID``), CORS (from routing.yaml's ``cors``), OpenAPI (``/schema``) and one exception
handler: every error, whatever its status (400 to 504, routing's 404 and 405 included), is mapped
to a ``RouterError`` once and answered in the shape of the door its path belongs to. Nothing
upstream, no stack trace and no secret is echoed.

Resources are made in the lifespan unless given, and reached through the app's ``state``: one
pooled ``AiohttpTransport`` per provider, the store (Redis for ``settings.redis_url``), the
telemetry, and, when ``load`` is given, the live config (watching routing.yaml, reloading on
SIGHUP). Every request takes the router current when it starts and finishes on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar import Router as HTTPRouter
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException

from router.clock import Clock
from router.config import RoutingConfig
from router.console.routes import CONSOLE_ROUTES
from router.doors.anthropic import AnthropicDoor
from router.doors.base import Door, error_headers
from router.doors.endpoint import count_route, door_route
from router.doors.native import NativeDoor
from router.doors.openai import OpenAIDoor
from router.doors.responses import ResponsesDoor
from router.doors.zchat import ChatDoor
from router.engine import Router
from router.errors import RouterError
from router.events import encode_json
from router.openapi import openapi_config
from router.queue import Queue, queue_for
from router.reload import LiveConfig
from router.requestid import RequestIdMiddleware, request_id_of
from router.routes import ROUTES
from router.settings import Settings
from router.stores import Store, StoreError, store_for
from router.tasks_api import TASK_ROUTES
from router.telemetry import Telemetry
from router.transport import AiohttpTransport, Transport
from router.worker import Workers

__all__ = ["create_app", "to_router_error"]

COUNT_PATH = "/v1/messages/count_tokens"  # Anthropic's token counter, in the Anthropic door's shape

log = logging.getLogger("llm_router")

_HTTP_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "method_not_allowed", 408: "request_timeout", 413: "request_too_large",
               429: "rate_limit_error"}
EXPOSED = ["x-request-id", "retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
           "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
           "x-llm-router-target", "x-llm-router-task", "x-llm-router-cost-usd"]


def to_router_error(exc: Exception) -> RouterError:
    """Any exception as the router error it is answered as: itself, Litestar's HTTP errors by
    their status, a failing store 503, anything else a 500 that says only "internal error"."""
    if isinstance(exc, RouterError):
        return exc
    if isinstance(exc, HTTPException):
        if exc.status_code >= 500:  # Litestar's own 5xx: its status, and nothing of its detail
            err = RouterError("internal error")
            err.status = exc.status_code
            return err
        err = RouterError(str(exc.detail))
        err.status, err.type = exc.status_code, _HTTP_TYPES.get(exc.status_code, "invalid_request_error")
        return err
    if isinstance(exc, StoreError):
        err = RouterError("the store (Redis) did not answer")
        err.status, err.type = 503, "store_unavailable"
        return err
    log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
    return RouterError("internal error")


def _error_handler(doors: Mapping[str, Door]) -> Callable[[Request[Any, Any, Any], Exception], Response[bytes]]:
    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        err = to_router_error(exc)
        door = doors.get(request.scope["path"])
        status, body = door.error(err) if door is not None else (err.status, encode_json(err.to_body()))
        headers = {**request.scope.get("state", {}).get("ratelimit_headers", {}), **error_headers(err),
                   "x-request-id": request_id_of(request.scope)}
        if isinstance(exc, HTTPException) and exc.headers:
            headers.update(exc.headers)
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    return handle


class _Resources:
    """What ``create_app`` was given; the lifespan makes the rest and puts them on ``app.state``:
    ``live`` (the live config and its router), ``telemetry`` and ``max_body_bytes``."""

    def __init__(self, config: RoutingConfig, settings: Settings, transports: Mapping[str, Transport] | None,
                 store: Store | None, telemetry: Telemetry | None, clock: Clock | None, notes: list[str],
                 load: Callable[[], RoutingConfig] | None, callback_client: Any = None) -> None:
        self.config, self.settings, self.transports, self.store = config, settings, transports, store
        self.telemetry, self.clock, self.notes, self.load = telemetry, clock, notes, load
        self.callback_client = callback_client

    def _startup_log(self, st: Store, reachable: bool | None) -> None:
        for line in self.notes:
            log.warning("%s", line)
        for name, p in self.config.providers.items():
            if p.unusable_reason:
                log.warning("provider %s is unusable: %s", name, p.unusable_reason)
        if st.kind == "memory":
            log.warning("stores: in-memory (no REDIS_URL): limits, cache and cooldowns are this process's own")
        else:
            log.warning("stores: %s (%s)", st.kind, "reachable" if reachable else
                        "NOT reachable yet: degraded until it answers")
        if not self.config.tenants:
            log.warning("auth: off (no tenants in the config): every caller may use every task")

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        """Make the transports, store and telemetry not given; watch the config when ``load``
        is given (and reload on SIGHUP); release what was made, in order, at shutdown."""
        cfg = self.settings
        owned: dict[str, Transport] = {}
        pool: dict[str, Transport] = dict(self.transports or {})
        st = self.store or store_for(cfg)
        tel = self.telemetry or Telemetry()
        tel.store = st
        observer = tel.record_soon if cfg.telemetry or self.telemetry is not None else None

        def build(c: RoutingConfig) -> Router:
            if self.transports is None:
                for name in c.providers:
                    if name not in pool:
                        pool[name] = owned[name] = AiohttpTransport(max_connections=cfg.max_connections)
            router = Router(c, pool, store=st, clock=self.clock, observer=observer)
            router.limiter.on_alert = tel.budget_alert
            return router

        config = self.config
        live = LiveConfig(config.source, self.load or (lambda: config), build, build(config))
        queue = queue_for(st, self.clock.wall if self.clock is not None else time.time)
        workers = Workers(queue, lambda: live.router, config.queue.workers, clock=self.clock,
                          client=self.callback_client, telemetry=tel)
        app.state.live, app.state.telemetry, app.state.queue, app.state.workers = live, tel, queue, workers
        app.state.settings = cfg
        app.state.door = DoorState(live, tel, cfg.max_body_bytes, cfg.read_timeout, queue, workers)  # what a door request reads, in one lookup
        self._startup_log(st, None if st.kind == "memory" else await st.ping())
        log.warning("queue: %s, %d worker(s) here%s", "Redis Streams (shared by every replica)" if queue.kind == "redis"
                    else "in-memory (no REDIS_URL): async tasks are this process's own and lost when it stops",
                    config.queue.workers, "" if config.queue.workers else " (API-only: this replica queues, others run)")
        workers.start()
        stop = asyncio.Event()
        watcher = None
        if self.load is not None:
            watcher = asyncio.create_task(live.watch(stop))
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
                asyncio.get_running_loop().add_signal_handler(
                    signal.SIGHUP, lambda: asyncio.ensure_future(live.reload("SIGHUP", force=True)))
        try:
            yield
        finally:
            await workers.stop()
            stop.set()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            for t in owned.values():
                await t.aclose()
            await tel.close()  # the ledger's pending sums, before the store closes
            if self.store is None:
                await st.close()
            del app.state.live, app.state.door, app.state.queue, app.state.workers


class DoorState:
    """What every door request reads from the app's state: the live config (and its router), the
    telemetry, the body limit (bytes), the body's read timeout (seconds), the async task queue
    and this replica's workers."""

    __slots__ = ("live", "max_body_bytes", "queue", "read_timeout", "telemetry", "workers")

    def __init__(self, live: LiveConfig, telemetry: Telemetry, max_body_bytes: int, read_timeout: float,
                 queue: Queue, workers: Workers) -> None:
        self.live, self.telemetry, self.max_body_bytes = live, telemetry, max_body_bytes
        self.read_timeout, self.queue, self.workers = read_timeout, queue, workers


def _cors(config: RoutingConfig) -> CORSConfig | None:
    """Litestar's CORS from routing.yaml's ``cors`` (preflights answered by Litestar; every
    answer, streams included, gets the headers; ours exposed to the page's script)."""
    c = config.cors
    if c is None:
        return None
    return CORSConfig(allow_origins=list(c.allow_origins), allow_headers=list(c.allow_headers),
                      allow_credentials=c.allow_credentials, allow_methods=["GET", "POST", "OPTIONS"],
                      expose_headers=EXPOSED, max_age=c.max_age)


def create_app(config: RoutingConfig, settings: Settings | None = None, *,
               transports: Mapping[str, Transport] | None = None, store: Store | None = None,
               telemetry: Telemetry | None = None, clock: Clock | None = None, notes: list[str] | None = None,
               load: Callable[[], RoutingConfig] | None = None, callback_client: Any = None) -> Litestar:
    """The router's ASGI app for ``config``.

    ``settings``: the environment, read once (``Settings.from_env()`` when not given).
    ``transports``: provider name -> ``Transport`` (else one pooled ``AiohttpTransport`` per
    provider, made in the lifespan, also for providers a reload adds). ``store``: shared state
    (else from ``settings``). ``telemetry``: metrics, spans, request logs and the usage ledger
    (else one built from the ``OTEL_*`` environment). ``clock``: every deadline and wait (tests
    inject a ``FakeClock``). ``load``: re-reads the config (raises ``ConfigError``); given, the
    app watches ``config.source`` and reloads on change and on SIGHUP. ``notes``: lines logged at
    startup. CORS comes from ``config.cors`` as the app is made (a reload does not change it).
    ``callback_client``: the ``httpx.AsyncClient`` async tasks' callbacks are POSTed with (tests
    pass one over an in-process receiver). The queue is on the store's Redis when there is one,
    else in memory; ``config.queue.workers`` (read at startup) run here.
    """
    cfg = settings or Settings.from_env()
    resources = _Resources(config, cfg, transports, store, telemetry, clock, notes or [], load, callback_client)
    holder: list[Litestar] = []
    doors: dict[str, Door] = {
        "/v1/tasks": NativeDoor(cfg.max_body_bytes),  # the canonical request, the unified events
        "/v1/chat/completions": OpenAIDoor(cfg.max_body_bytes),  # model: a task or provider/model
        "/v1/messages": AnthropicDoor(cfg.max_body_bytes),  # model: a task or provider/model
        "/api/chat": ChatDoor(cfg.max_body_bytes, lambda name: _known(holder[0], name)),  # the Z.AI backend's contract
        "/v1/responses": ResponsesDoor(cfg.max_body_bytes),  # the OpenAI Responses API
    }
    app = Litestar(
        # the doors carry no middleware, so Litestar adds no second exception layer around them;
        # the other routes get the request id from RequestIdMiddleware (on their router)
        route_handlers=[*(door_route(path, door, summary=type(door).__doc__ or path) for path, door in doors.items()),
                        count_route(COUNT_PATH, doors["/v1/messages"]),
                        HTTPRouter(path="/", route_handlers=[*ROUTES, *TASK_ROUTES, *CONSOLE_ROUTES],
                                   middleware=[RequestIdMiddleware()])],
        lifespan=[resources.lifespan],
        exception_handlers={Exception: _error_handler({**doors, COUNT_PATH: doors["/v1/messages"]})},
        cors_config=_cors(config),
        request_max_body_size=cfg.max_body_bytes,
        openapi_config=openapi_config(),
        logging_config=None,
    )
    holder.append(app)
    return app


def _known(app: Litestar, name: str) -> bool:
    """Whether ``name`` is a task, an alias, a ``provider/model`` or a model id of the live config."""
    router: Router = app.state.live.router
    return router.planner.resolve(name) is not None
