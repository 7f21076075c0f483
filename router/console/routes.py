"""The console's routes: the page at ``/ui`` (static files shipped in the package) and its JSON at
``/ui/api/*``. Every JSON route needs an admin key while tenants exist (``Authorization: Bearer``
or ``x-api-key``, as ``/v1/routes``); the page itself holds no data and asks for the key. Read-only:
nothing here writes routing.yaml, the store's limits or anything a request would see.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromQuery
from litestar.router import Router as HTTPRouter
from litestar.static_files import create_static_files_router

from router.compare import decode_judgements, decode_results, summarize_results
from router.console.check import MAX_EDIT_BYTES, check_edit
from router.console.feed import RECENT_KEEP, recent, traffic
from router.engine import Router
from router.errors import PayloadTooLarge, RequestError, RouterError
from router.experiments import experiment_report
from router.ledger import usage_daily
from router.loading import environment
from router.reload import LiveConfig
from router.routes import errors_of
from router.server import DRAINING
from router.settings import Settings
from router.stores import StoreError

__all__ = ["CONSOLE_ROUTES", "STATIC_DIR"]

STATIC_DIR = Path(__file__).parent / "static"
_HEADERS = {  # the page runs only its own files: no inline script, no third-party origin
    "content-security-policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY",
    "cache-control": "no-cache"}


class UnknownReport(RouterError):
    status = 404
    type = "not_found_error"


def _router(state: State, request: Request[Any, Any, Any]) -> Router:
    live: LiveConfig = state.live
    router: Router = live.router
    router.auth.admin(request.headers)
    return router


def _int(raw: str | None, name: str, low: int, high: int) -> int:
    """A query parameter as an integer in [low, high] (``high`` when absent); raises
    ``RequestError`` naming it."""
    if raw is None:
        return high
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(f"{name} must be an integer from {low} to {high}", name) from None
    if not low <= value <= high:
        raise RequestError(f"{name} must be an integer from {low} to {high}", name)
    return value


async def _or_error(what: str, coro: Any) -> Any:
    """``coro``'s answer, or ``{"error": ...}`` when the store fails (the rest of a view shows)."""
    try:
        return await coro
    except StoreError:
        return {"error": f"the store did not answer ({what} unavailable)"}


@get("/ui/api/now", tags=["console"], responses=errors_of(401, 403))
async def now(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    """Is anything broken: the config version and the last rejected edit (problems with lines),
    every task's chain with each target's circuit, its fallbacks away, hedges, requests and
    errors of the last 5 minutes and its effective hedge; provider/model quotas and tenants'
    limits in use vs limit; budgets; the store; the async queue; this replica."""
    router = _router(state, request)
    live: LiveConfig = state.live
    t0 = time.perf_counter()
    store_ok = await router.store.ping()
    ping_ms = round((time.perf_counter() - t0) * 1e3, 3)
    wall = router.clock.wall()
    circuits = await router.target_states()
    window = await _or_error("traffic", traffic(router.store, time.time(), 5))  # records carry real wall time
    recent_rows = {(r["task"], r["target"]): r for r in window.get("rows", [])} if "rows" in window else {}
    tasks = {}
    for name, t in router.config.tasks.items():
        targets = list(dict.fromkeys([*t.chain, *(x for v in (t.experiment.variants.values() if t.experiment else ())
                                                  for x in v.chain)]))
        rows = []
        for target in targets:
            r = recent_rows.get((name, target), {})
            c = circuits.get(target, {})
            rows.append({"target": target, "in_chain": target in t.chain, "circuit": c.get("state", "unknown"),
                         "open_until": c.get("open_until"), "failures": c.get("failures", 0),
                         "hedge_after": router.policy(name, target).hedge_after,
                         "requests_5m": r.get("requests", 0), "errors_5m": r.get("errors", 0),
                         "fallbacks_5m": r.get("fallbacks_from", 0), "hedges_5m": r.get("hedges", 0),
                         "latency_p95_ms_5m": r.get("latency_p95_ms")})
        tasks[name] = {"chain": t.chain, "targets": rows,
                       "experiment": list(t.experiment.variants) if t.experiment else None,
                       "shadow": t.shadow.target if t.shadow else None}
    try:
        depth: dict[str, Any] = await state.queue.depth(wall)
    except Exception as e:  # noqa: BLE001 - the queue's store failed: say so, show the rest
        depth = {"error": f"{type(e).__name__}: the queue's store did not answer"}
    return {"at": wall, "config": {**live.status(), "path": live.path}, "tasks": tasks,
            "limits": await _or_error("limits", router.limiter.in_use()),
            "budgets": await _or_error("budgets", router.limiter.spend()),
            "store": {"kind": router.store.kind, "status": "ok" if store_ok else "unreachable", "ping_ms": ping_ms},
            "queue": {"kind": state.queue.kind, **depth,
                      "workers_here": {"total": state.workers.size, "busy": state.workers.busy}},
            "replica": {"pid": os.getpid(), "draining": DRAINING.is_set()},
            "traffic_5m": window.get("total", {}) if "total" in window else window}


@get("/ui/api/traffic", tags=["console"], responses=errors_of(400, 401, 403, 503))
async def traffic_view(request: Request[Any, Any, Any], state: State,
                       minutes: FromQuery[str | None] = None) -> dict[str, Any]:
    """Requests, errors, fallbacks, hedges, p50/p95 latency and TTFT, cost and response-cache
    hits per task and target, per minute over the last ``minutes`` (1-360), every replica's."""
    router = _router(state, request)
    return await traffic(router.store, time.time(), _int(minutes or "60", "minutes", 1, 360))  # records: real wall time


@get("/ui/api/spend", tags=["console"], responses=errors_of(400, 401, 403, 503))
async def spend(request: Request[Any, Any, Any], state: State, days: FromQuery[str | None] = None) -> dict[str, Any]:
    """Spend per tenant, task and model per UTC day (the usage ledger, last ``days``, 1-92), with
    prompt-cache savings, and every budget's spend vs its limit."""
    router = _router(state, request)
    out = await usage_daily(router.store, _int(days or "30", "days", 1, 92), time.time())
    out["budgets"] = await _or_error("budgets", router.limiter.spend())
    return out


@get("/ui/api/experiments", tags=["console"], responses=errors_of(401, 403))
async def experiments(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    """Every task with an experiment or a shadow: per variant its measures with 95% intervals
    and the significance statements against the first variant, and the newest shadow pairs."""
    router = _router(state, request)
    return {"tasks": [await experiment_report(router.store, name, t) for name, t in router.config.tasks.items()
                      if t.experiment is not None or t.shadow is not None]}


@get("/ui/api/requests", tags=["console"], responses=errors_of(400, 401, 403, 503))
async def requests(request: Request[Any, Any, Any], state: State, task: FromQuery[str | None] = None,
                   outcome: FromQuery[str | None] = None, target: FromQuery[str | None] = None,
                   q: FromQuery[str | None] = None, limit: FromQuery[str | None] = None) -> dict[str, Any]:
    """The newest request summaries (every replica's, newest first), filtered by ``task``,
    ``outcome`` (ok, error, cached), ``target`` and ``q`` (a substring of the id, caller, variant
    or error); content only when the config's ``log_content`` is on. ``trace_url``: the link
    template of trace ids (``LLM_ROUTER_TRACE_URL``), when set."""
    router = _router(state, request)
    rows = await recent(router.store, RECENT_KEEP)
    needle = (q or "").lower()
    picked = [r for r in rows if (task is None or r.task == task) and (outcome is None or r.outcome == outcome)
              and (target is None or r.target == target)
              and (not needle or any(needle in (v or "").lower() for v in (r.id, r.caller, r.variant, r.error, r.trace_id)))]
    settings: Settings = state.settings
    shown = picked[:_int(limit, "limit", 1, RECENT_KEEP)]
    if not router.config.log_content:  # entries kept while it was on: their content is not shown now
        shown = [msgspec.structs.replace(r, prompt=None, output=None) if r.prompt is not None else r for r in shown]
    return {"requests": msgspec.to_builtins(shown), "kept": len(rows),
            "trace_url": settings.trace_url, "log_content": router.config.log_content}


@post("/ui/api/check", status_code=200, tags=["console"], responses=errors_of(400, 401, 403, 413))
async def check(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    """Check an edited routing.yaml (the body, as text; at most 512 KiB) without deploying it:
    ``validate``'s problems with their lines, its warnings, and the diff of the effective chains
    and policies against the live config. Nothing is written."""
    router = _router(state, request)
    body = await request.body()
    if len(body) > MAX_EDIT_BYTES:
        raise PayloadTooLarge(f"an edit is at most {MAX_EDIT_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("the edit must be UTF-8 text", "body") from None
    live: LiveConfig = state.live
    try:
        live_text = Path(live.path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        live_text = ""
    return check_edit(text, router.config, environment(live.path), live_text)


MAX_REPORT_BYTES = 8 * 1024 * 1024


def _report(results: str, judgements: Any, where: str) -> dict[str, Any]:
    """A comparison run's data from its ``results.jsonl`` text and parsed ``judgements.json``;
    raises ``RequestError`` naming the first bad line (``<where>[N]``) or judgements field."""
    rows, bad = decode_results(results)
    if bad:
        line = bad[0].split(":", 1)[0].removeprefix("line ")
        raise RequestError(f"results.jsonl {bad[0]} ({len(bad)} bad line(s))", f"{where}[{line}]")
    if not rows:
        raise RequestError("results.jsonl holds no results", where)
    judged = None
    if judgements is not None:
        try:
            judged = decode_judgements(judgements)
        except msgspec.ValidationError as e:
            raise RequestError(f"judgements.json: {e}", "judgements") from None
    return summarize_results(rows, judged)


class _Upload(msgspec.Struct, forbid_unknown_fields=True):
    results: str
    judgements: dict[str, Any] | None = None


@post("/ui/api/report", status_code=200, tags=["console"], responses=errors_of(400, 401, 403, 413))
async def report_upload(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    """A comparison run uploaded: ``{"results": "<results.jsonl text>", "judgements": {...}}``
    (at most 8 MiB), as the report's data (per target, per line, the judge's pairs)."""
    _router(state, request)
    body = await request.body()
    if len(body) > MAX_REPORT_BYTES:
        raise PayloadTooLarge("a report upload is at most 8 MiB")
    try:
        up = msgspec.json.decode(body, type=_Upload)
    except msgspec.ValidationError as e:
        raise RequestError(f"not a report upload: {e}", "body") from None
    except msgspec.DecodeError:
        raise RequestError("the upload is not JSON", "body") from None
    return _report(up.results, up.judgements, "results")


def _reports_dir(state: State) -> Path:
    settings: Settings = state.settings
    if not settings.reports_dir:
        raise UnknownReport("no reports directory is configured (LLM_ROUTER_REPORTS_DIR); upload results.jsonl instead")
    return Path(settings.reports_dir).resolve()


@get("/ui/api/reports", tags=["console"], responses=errors_of(401, 403, 404))
async def reports(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    """The ``compare`` output directories under ``LLM_ROUTER_REPORTS_DIR`` (newest first; none
    and ``dir`` null when it is not set)."""
    _router(state, request)
    settings: Settings = state.settings
    if not settings.reports_dir:
        return {"dir": None, "reports": []}
    root = _reports_dir(state)
    found = sorted((p for p in root.iterdir() if (p / "results.jsonl").is_file()),
                   key=lambda p: (p / "results.jsonl").stat().st_mtime, reverse=True) if root.is_dir() else []
    return {"dir": str(root), "reports": [{"name": p.name, "modified": (p / "results.jsonl").stat().st_mtime,
                                           "judged": (p / "judgements.json").is_file()} for p in found]}


@get("/ui/api/report", tags=["console"], responses=errors_of(400, 401, 403, 404, 413))
async def report_by_name(request: Request[Any, Any, Any], state: State, name: FromQuery[str]) -> dict[str, Any]:
    """One ``compare`` output directory under ``LLM_ROUTER_REPORTS_DIR``, by its name (no path:
    nothing outside that directory is read)."""
    _router(state, request)
    root = _reports_dir(state)
    if not name or any(c in name for c in "/\\\x00") or name.startswith("."):
        raise RequestError("name is a directory's name under the reports directory", "name")
    here = (root / name).resolve()
    results = here / "results.jsonl"
    if here.parent != root or not results.is_file():
        raise UnknownReport(f"no compare results named {name!r} in the reports directory")
    judged_file = here / "judgements.json"
    for f in (results, judged_file):
        if f.is_file() and f.stat().st_size > MAX_REPORT_BYTES:
            raise PayloadTooLarge(f"{f.name} is over 8 MiB")
    judged = None
    if judged_file.is_file():
        try:
            judged = json.loads(judged_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("judgements.json is not JSON", "judgements") from None
    try:
        text = results.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RequestError("results.jsonl is not UTF-8", "results") from None
    return {"name": name, **_report(text, judged, "results")}


async def _secure(response: Response[Any]) -> Response[Any]:
    response.headers.update(_HEADERS)
    return response


CONSOLE_ROUTES: list[HTTPRouteHandler | HTTPRouter] = [
    now, traffic_view, spend, experiments, requests, check, report_upload, reports, report_by_name,
    create_static_files_router("/ui", directories=[STATIC_DIR], html_mode=True, name="console",
                               after_request=_secure),
]
