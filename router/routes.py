"""The routes besides the doors: models, health, readiness, routing, metrics, usage, experiments
and feedback. Each reads the live router from the app's state (``State.live``)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery

from router.doors.answers import NativeErrorBody
from router.engine import Router
from router.errors import RequestError
from router.experiments import (
    UnknownResponse,
    UnknownTaskExperiment,
    decode_feedback,
    experiment_report,
)
from router.ledger import usage_report
from router.reload import LiveConfig
from router.server import DRAINING
from router.stores import StoreError

__all__ = ["ROUTES", "errors_of", "parse_since"]

_PROMETHEUS = "text/plain; version=0.0.4"  # Litestar adds "; charset=utf-8"
_WHY = {400: "Bad input; `path` names the field", 401: "No API key, or an unknown one (auth is on)",
        403: "An admin key is needed", 404: "Unknown task, response, async task or batch id",
        409: "The async task already ended", 413: "The body is over the limit", 500: "Internal error",
        503: "The store (Redis) did not answer"}


def errors_of(*statuses: int) -> dict[int, ResponseSpec]:
    """The documented error answers of a route (the native error body), 500 included."""
    return _errors(*statuses)


def _errors(*statuses: int) -> dict[int, ResponseSpec]:
    """The documented error answers of a route (the native error body)."""
    return {s: ResponseSpec(data_container=NativeErrorBody, description=_WHY[s]) for s in (*statuses, 500)}


class ModelCard(msgspec.Struct):
    id: str
    owned_by: str
    object: str = "model"
    created: int = 0


class ModelList(msgspec.Struct):
    """An OpenAI model list: every task, then every pinnable ``provider/model``."""

    data: list[ModelCard]
    object: str = "list"


class Health(msgspec.Struct):
    status: str
    zai_client_initialized: bool
    timestamp: str


class Alive(msgspec.Struct):
    status: str


class Ready(msgspec.Struct, omit_defaults=True):
    """``status``: ready, degraded (the store is unreachable) or starting."""

    status: str
    pid: int | None = None
    config: dict[str, Any] | None = None
    stores: dict[str, str] | None = None


class FeedbackRecorded(msgspec.Struct):
    id: str
    task: str
    variant: str
    recorded: bool = True




def parse_since(value: str | None) -> float:
    """``YYYY-MM-DD`` or epoch seconds; default 30 days ago. Raises ``RequestError``."""
    if not value:
        return time.time() - 30 * 86400
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise RequestError("since must be YYYY-MM-DD or epoch seconds", "since") from None


def _router(state: State) -> Router:
    live: LiveConfig = state.live
    return live.router  # type: ignore[no-any-return]


async def _routes_view(router: Router, live: LiveConfig) -> dict[str, Any]:
    """Effective tasks, chains, policies, limits, circuits and providers, and the config version;
    API keys are never shown, only whether set; tenants' key hashes are not shown either."""
    config = router.config
    return {
        "config": live.status(),
        "targets": await router.target_states(),
        "limits": router.limiter.describe(),
        "tasks": {name: {"chain": t.chain, "params": t.params, "midstream": t.midstream, "cache": t.cache,
                         "task_version": router.planner.version(name),
                         **({"typed": {"input_schema": t.input_schema, "output_schema": t.output_schema,
                                       "templates": [k for k in ("system", "user") if getattr(t, k) is not None],
                                       "examples": len(t.examples or ())}}
                            if router.planner.typed(name) else {}),
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


@get("/v1/models", tags=["operators"], responses=_errors(401))
async def models(request: Request[Any, Any, Any], state: State) -> ModelList:
    """Everything ``model`` may name, as an OpenAI model list (any valid key when auth is on):
    tasks and aliases (owned by ``llm-router``), model ids (every provider serving one, as a
    chain) and pinnable ``provider/model`` targets."""
    router = _router(state)
    router.auth.identify(request.headers)
    names = [*router.config.tasks, *router.config.aliases]
    ids = [m for m in router.planner.models if m not in names]
    return ModelList(data=[ModelCard(id=name, owned_by="llm-router") for name in names]
                     + [ModelCard(id=m, owned_by="llm-router") for m in ids]
                     + [ModelCard(id=name, owned_by=t.provider) for name, t in router.targets.items()])


@get("/health", tags=["health"])
async def health(state: State) -> Health:
    """The health answer of the Z.AI FastAPI backend that ``/api/chat`` replaces."""
    return Health(status="healthy", zai_client_initialized="live" in state, timestamp=datetime.now().isoformat())


@get("/healthz", tags=["health"])
async def healthz() -> Alive:
    """Liveness: 200 while the process serves."""
    return Alive(status="ok")


@get("/readyz", tags=["health"], responses={503: ResponseSpec(data_container=Ready, description="Starting or draining")})
async def readyz(state: State) -> Response[Ready]:
    """200 while the service can answer (a failing store only degrades it: cache bypassed,
    limits per ``on_store_error``); 503 before the lifespan has run, and while draining after
    SIGTERM (requests are still served: the load balancer is being told to stop sending).
    Shows the active config version and the last rejected edit."""
    if "live" not in state:
        return Response(Ready(status="starting"), status_code=503)
    if DRAINING.is_set():
        return Response(Ready(status="draining", pid=os.getpid()), status_code=503)
    router = _router(state)
    store_ok = await router.store.ping()
    return Response(Ready(status="ready" if store_ok else "degraded", pid=os.getpid(), config=state.live.status(),
                          stores={"kind": router.store.kind, "status": "ok" if store_ok else "unreachable"}))


@get("/v1/experiments/{task:str}", tags=["operators"], responses=_errors(400, 401, 403, 404, 503))
async def experiment(request: Request[Any, Any, Any], state: State, task: FromPath[str]) -> dict[str, Any]:
    """Per variant (and shadow target): counts, errors, fallbacks, latency/TTFT, tokens, cost
    and feedback, summed over every replica, with the sample sizes."""
    router = _router(state)
    router.auth.admin(request.headers)
    t = router.config.tasks.get(task)
    if t is None or (t.experiment is None and t.shadow is None):
        with_ab = [n for n, x in router.config.tasks.items() if x.experiment or x.shadow]
        raise UnknownTaskExperiment(task, with_ab)
    return await experiment_report(router.store, task, t)


@post("/v1/feedback", status_code=200, tags=["operators"], responses=_errors(400, 401, 404, 503))
async def feedback(request: Request[Any, Any, Any], state: State) -> FeedbackRecorded:
    """``{id, score, label?}``: a caller's judgement of an answer, attributed to its variant."""
    router = _router(state)
    router.auth.identify(request.headers)
    fb = decode_feedback(await request.body())
    task_variant = await router.store.kv_get(f"resp:{fb.id}")
    if task_variant is None:
        raise UnknownResponse(fb.id)
    task, variant = task_variant.decode().split("\t", 1)
    fields = {"feedback_count": 1.0, "feedback_sum": fb.score, "feedback_sq_n": 1.0, "feedback_sq": fb.score * fb.score}
    if fb.label:
        fields[f"label:{fb.label}"] = 1.0
    await router.store.stats_add(f"exp:{task}:{variant}", fields)
    return FeedbackRecorded(id=fb.id, task=task, variant=variant)


@get("/metrics", media_type=_PROMETHEUS, tags=["operators"])
async def metrics(state: State) -> Response[bytes]:
    """Prometheus text format, summed over every worker."""
    return Response(state.telemetry.metrics_text(), media_type=_PROMETHEUS)


@get("/v1/usage", tags=["operators"], responses=_errors(400, 401, 403, 503))
async def usage(request: Request[Any, Any, Any], state: State, tenant: FromQuery[str | None] = None,
                task: FromQuery[str | None] = None,
                since: FromQuery[str | None] = None) -> dict[str, Any]:
    """Usage and cost totals: ``?tenant=&task=&since=`` (``since``: YYYY-MM-DD or epoch seconds;
    default 30 days ago; UTC-day resolution). An admin key is needed when tenants exist."""
    router = _router(state)
    router.auth.admin(request.headers)
    report = await usage_report(router.store, tenant=tenant, task=task, since=parse_since(since))
    spend = await router.limiter.spend()
    report["budgets"] = {k: v for k, v in spend.items()
                         if (tenant is None or not k.startswith("tenant:") or k == f"tenant:{tenant}") and
                         (task is None or not k.startswith("task:") or k == f"task:{task}")}
    return report


@get("/v1/routes", tags=["operators"], responses=_errors(401, 403))
async def routes(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    """The effective routing (an admin key is needed when tenants exist)."""
    router = _router(state)
    router.auth.admin(request.headers)
    view = await _routes_view(router, state.live)
    try:
        view["budgets"] = await router.limiter.spend()
    except StoreError:
        view["budgets"] = {"error": "the store did not answer"}
    queue, workers = state.queue, state.workers
    try:
        depth: dict[str, Any] = await queue.depth(router.clock.wall())
    except Exception as e:  # noqa: BLE001 - the queue's store failed: say so, show the rest
        depth = {"error": f"{type(e).__name__}: the queue's store did not answer"}
    view["queue"] = {"kind": queue.kind, **msgspec.to_builtins(router.config.queue),
                     "callback_secret": "set" if router.config.queue.callback_secret else "unset",
                     "workers_here": {"total": workers.size, "busy": workers.busy}, **depth}
    return view


ROUTES: list[HTTPRouteHandler] = [models, health, healthz, readyz, routes, experiment, feedback, metrics, usage]
