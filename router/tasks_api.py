"""The async task and batch routes: ``GET``/``DELETE /v1/tasks/{id}``, ``POST /v1/batches``,
``GET /v1/batches/{id}`` and ``GET /v1/batches/{id}/results`` (submission itself is
``POST /v1/tasks`` with ``"mode": "async"``, in ``router.doors.endpoint``).

A task or batch is visible to the tenant that submitted it (and to admin keys); with
authentication off, to anyone who has its id. A batch is JSON lines, each a canonical request
with a ``custom_id`` (unique in the batch); a line that does not parse or plan is that line's
error and every other line still runs. Results come back as JSON lines in input order.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from router.engine import Router
from router.errors import Forbidden, RequestError, RouterError
from router.limits import caller_id
from router.queue import TERMINAL, Batch, Queue, TaskRecord
from router.request import TaskRequest, check_request, msgspec_error_path
from router.routes import errors_of
from router.worker import MAX_QUEUE_WAIT, submit

__all__ = ["TASK_ROUTES"]

MAX_BATCH_LINES = 50_000


class UnknownAsyncTask(RouterError):
    """No task or batch with this id (never submitted, or past ``queue.result_ttl``)."""

    status = 404
    type = "not_found_error"


class Conflict(RouterError):
    """The task already ended: it cannot be cancelled."""

    status = 409
    type = "conflict_error"


def _who(request: Request[Any, Any, Any], router: Router) -> tuple[str | None, bool]:
    """(tenant, is admin): the tenant of the key, or admin when it is an admin key."""
    try:
        return router.auth.identify(request.headers), False
    except RouterError:
        router.auth.admin(request.headers)  # raises the 401/403 when it is not an admin key either
        return None, True


def _visible(owner: str | None, tenant: str | None, admin: bool, what: str, ident: str) -> None:
    if owner is not None and owner != tenant and not admin:
        raise UnknownAsyncTask(f"no {what} {ident!r}")  # another tenant's: as if it did not exist


async def _task(state: State, request: Request[Any, Any, Any], task_id: str) -> tuple[Queue, TaskRecord]:
    router: Router = state.live.router
    tenant, admin = _who(request, router)
    rec = await state.queue.get(task_id)
    if rec is None:
        raise UnknownAsyncTask(f"no task {task_id!r} (tasks are kept queue.result_ttl seconds)")
    _visible(rec.tenant, tenant, admin, "task", task_id)
    return state.queue, rec


@get("/v1/tasks/{task_id:str}", tags=["async"], responses=errors_of(401, 403, 404, 503))
async def get_task(request: Request[Any, Any, Any], state: State, task_id: FromPath[str]) -> Response[bytes]:
    """An async task: ``status`` (queued, running, succeeded, failed, cancelled), ``runs``,
    ``attempts``, the folded ``answer`` when it succeeded or the ``error``, its ``callback``."""
    _, rec = await _task(state, request, task_id)
    return Response(msgspec.json.encode(rec.public()), media_type="application/json")


@delete("/v1/tasks/{task_id:str}", tags=["async"], status_code=200, responses=errors_of(401, 403, 404, 409, 503))
async def cancel_task(request: Request[Any, Any, Any], state: State, task_id: FromPath[str]) -> Response[bytes]:
    """Cancel a queued or running task (a running one stops within a third of the visibility
    timeout; what it used is refunded to the limits). 409 when it already ended."""
    queue, rec = await _task(state, request, task_id)
    if rec.status in TERMINAL:
        raise Conflict(f"task {task_id!r} already {rec.status}")
    now = state.live.router.clock.wall()
    rec.status, rec.updated_at, rec.finished_at = "cancelled", now, now
    if not await queue.save(rec, state.live.router.config.queue.result_ttl):
        fresh = await queue.get(task_id)
        raise Conflict(f"task {task_id!r} already {fresh.status if fresh else 'gone'}")
    return Response(msgspec.json.encode(rec.public()), media_type="application/json")


def _lines(body: bytes) -> list[tuple[int, Any]]:
    out = []
    for n, raw in enumerate(body.decode("utf-8", "replace").splitlines()):
        if raw.strip():
            try:
                out.append((n, json.loads(raw)))
            except (ValueError, RecursionError) as e:  # JSONDecodeError, a number too long, nesting too deep
                why = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
                out.append((n, RequestError(f"line {n + 1} is not JSON that can be read ({why})", None)))
    return out


@post("/v1/batches", tags=["async"], status_code=202, responses=errors_of(400, 401, 413, 503))
async def create_batch(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """JSON lines, each a canonical request with ``custom_id``: every valid line becomes an async
    task; a bad line is reported as that line's error. ``202`` with the batch's counts."""
    router: Router = state.live.router
    tenant = router.auth.identify(request.headers)
    client = request.scope.get("client")
    caller = tenant or caller_id(request.headers.get("x-caller"), client[0] if client else None)
    lines = _lines(await request.body())
    if not lines:
        raise RequestError("a batch is JSON lines, one request each; the body has none", "body")
    if len(lines) > MAX_BATCH_LINES:
        raise RequestError(f"a batch has at most {MAX_BATCH_LINES} lines", "body")
    batch = Batch(id="batch_" + secrets.token_hex(12), created_at=router.clock.wall(), tasks=[], custom_ids=[],
                  errors={}, tenant=tenant)
    seen: set[str] = set()
    for i, (_, obj) in enumerate(lines):
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        batch.custom_ids.append(cid if isinstance(cid, str) else None)
        try:
            if isinstance(obj, RequestError):
                raise obj
            if not isinstance(obj, dict):
                raise RequestError("a line is a JSON object", None)
            if not isinstance(cid, str) or not cid:
                raise RequestError("custom_id is required (a string, unique in the batch)", "custom_id")
            if cid in seen:
                raise RequestError(f"custom_id {cid!r} appears twice", "custom_id")
            seen.add(cid)
            fields = {k: v for k, v in obj.items() if k not in ("custom_id", "mode", "stream", "callback_url")}
            try:
                req = msgspec.convert(fields, TaskRequest)
            except msgspec.ValidationError as e:
                msg, path = msgspec_error_path(e)
                raise RequestError(msg, path) from None
            check_request(req)
            name = router.planner.resolve(req.task)
            if name is not None:
                router.auth.allow(tenant, name)
            plan = router.plan(req)
            rec, _ = await submit(router, state.queue, req, task=plan.task, caller=caller, tenant=tenant,
                               wall=router.clock.wall(), batch=batch.id, line=i, custom_id=cid)
            batch.tasks.append(rec.id)
        except (RequestError, Forbidden, RouterError) as e:
            batch.tasks.append(None)
            where = getattr(e, "path", None)
            batch.errors[str(i)] = {"type": e.type, "message": e.message, "status": e.status,
                                    **({"path": where} if where else {})}
    await state.queue.put_batch(batch, router.config.queue.result_ttl + MAX_QUEUE_WAIT)
    state.workers.notify()
    return Response(msgspec.json.encode(await _summary(state.queue, batch)), media_type="application/json",
                    status_code=202, headers={"location": f"/v1/batches/{batch.id}"})


async def _summary(queue: Queue, batch: Batch) -> dict[str, Any]:
    records = await queue.get_many([t for t in batch.tasks if t is not None])
    counts = {s: 0 for s in ("queued", "running", "succeeded", "failed", "cancelled")}
    for r in records:
        if r is not None:
            counts[r.status] += 1
    total = len(batch.tasks)
    done = counts["succeeded"] + counts["failed"] + counts["cancelled"] + len(batch.errors)
    return {"id": batch.id, "object": "batch", "created_at": batch.created_at, "lines": total,
            "invalid_lines": len(batch.errors), "counts": counts, "completed": done, "progress": round(done / total, 4),
            "status": "completed" if done == total else "in_progress"}


async def _batch(state: State, request: Request[Any, Any, Any], batch_id: str) -> Batch:
    tenant, admin = _who(request, state.live.router)
    batch: Batch | None = await state.queue.get_batch(batch_id)
    if batch is None:
        raise UnknownAsyncTask(f"no batch {batch_id!r} (batches are kept queue.result_ttl seconds)")
    _visible(batch.tenant, tenant, admin, "batch", batch_id)
    return batch


@get("/v1/batches/{batch_id:str}", tags=["async"], responses=errors_of(401, 403, 404, 503))
async def get_batch(request: Request[Any, Any, Any], state: State, batch_id: FromPath[str]) -> Response[bytes]:
    """A batch's counts by status, invalid lines and progress (0..1)."""
    batch = await _batch(state, request, batch_id)
    return Response(msgspec.json.encode(await _summary(state.queue, batch)), media_type="application/json")


@get("/v1/batches/{batch_id:str}/results", tags=["async"], media_type="application/jsonl",
     responses=errors_of(401, 403, 404, 503))
async def batch_results(request: Request[Any, Any, Any], state: State, batch_id: FromPath[str]) -> Response[bytes]:
    """JSON lines in input order: ``{line, custom_id, status, task_id, answer | error}``
    (``status`` ``invalid`` for a line that never became a task)."""
    batch = await _batch(state, request, batch_id)
    records = await state.queue.get_many([t for t in batch.tasks if t is not None])
    by_id = {r.id: r for r in records if r is not None}
    out = []
    for i, (tid, cid) in enumerate(zip(batch.tasks, batch.custom_ids, strict=True)):
        row: dict[str, Any] = {"line": i + 1, "custom_id": cid}
        if tid is None:
            row.update(status="invalid", error=batch.errors.get(str(i)))
        elif (rec := by_id.get(tid)) is None:
            row.update(status="expired", task_id=tid)
        else:
            row.update(status=rec.status, task_id=tid, answer=rec.answer, error=rec.error)
        out.append(msgspec.json.encode(row))
    return Response(b"\n".join(out) + b"\n", media_type="application/jsonl")


TASK_ROUTES: list[HTTPRouteHandler] = [get_task, cancel_task, create_batch, get_batch, batch_results]
