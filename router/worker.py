"""Async tasks: submission, the replica's worker pool, and signed callbacks.

``submit`` turns a planned request into a queued ``TaskRecord`` (``POST /v1/tasks`` with
``"mode": "async"`` or ``Prefer: respond-async``; each line of ``POST /v1/batches``). A replica
runs ``queue.workers`` workers (``Workers``): each claims one entry at a time, runs the task
through the same pipeline as an interactive request (plan, the caller's limits, the chain with
its retries, fallbacks and cooldowns) with the provider quotas held to their ``queue_share``,
paced, and **waits** for a rate limit instead of failing: the caller's ``Retry-After``, the
earliest moment a target's quota fits. A running task renews its claim every third of the
visibility timeout, and stops when it is cancelled. The result is written once (the queue's
conditional save), then the entry is acknowledged and the callback, if any, delivered.

Callbacks: ``POST <callback_url>`` with the task as JSON (``GET /v1/tasks/{id}``'s body), headers
``X-LLM-Router-Task`` and ``X-LLM-Router-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>." + body>`` under the tenant's ``callback_secret`` (else ``queue.callback_secret``). A
2xx answer delivers it; anything else is retried with exponential backoff (5 s doubling, at most
1 h apart) for ``callback_max_age`` seconds from the first try, each try scheduled in the queue
(so another replica delivers it if this one stops). Its state is on the task (``callback``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from router.clock import Clock, LoopClock
from router.engine import RequestContext, Router
from router.errors import BudgetExceeded, RateLimited, RequestError, RouterError
from router.queue import (
    TERMINAL,
    Callback,
    Claim,
    Queue,
    Status,
    TaskRecord,
    new_task_id,
    wait_first,
)
from router.request import TaskRequest

__all__ = ["Workers", "sign", "submit"]

log = logging.getLogger("llm_router")
CALLBACK_TIMEOUT = 10.0  # seconds per delivery try
CALLBACK_FIRST_RETRY = 5.0
CALLBACK_MAX_INTERVAL = 3600.0
TRANSIENT_WAITS = 5  # a chain cooling down (503 with a Retry-After) is waited for this many times, then the task fails
POLL = 0.5  # seconds an idle worker waits before looking again (a submission here wakes it at once)
MAX_QUEUE_WAIT = 7 * 86400.0  # seconds a queued task is kept before it ran (result_ttl counts from its end)
MAX_RUNS = 5  # a task whose runs all died with their process (claimed again after the visibility timeout) fails then
CALLBACK_LEASE = CALLBACK_TIMEOUT * 3  # seconds a replica holds a due callback while it delivers it


def sign(secret: str, body: bytes, t: int) -> str:
    """``X-LLM-Router-Signature``: ``t=<t>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``."""
    mac = hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def callback_secret(router: Router, tenant: str | None) -> str | None:
    """The key that signs ``tenant``'s callbacks: its own, else the queue's."""
    own = router.config.tenants.get(tenant) if tenant else None
    return (own.callback_secret if own is not None else None) or router.config.queue.callback_secret


def _request_of(req: TaskRequest) -> dict[str, Any]:
    """The request as kept on the task: without the submission's own fields."""
    out: dict[str, Any] = msgspec.to_builtins(req)
    for k in ("mode", "callback_url", "idempotency_key", "priority", "stream"):
        out.pop(k, None)
    return out


async def submit(router: Router, queue: Queue, req: TaskRequest, *, task: str, caller: str, tenant: str | None,
                 wall: float, batch: str | None = None, line: int | None = None,
                 custom_id: str | None = None) -> tuple[TaskRecord, bool]:
    """Queue ``req`` (already planned: its task exists, its input is valid) as an async task:
    (its record, True), or (the earlier task's record, False) for a repeated
    ``idempotency_key``. Raises
    ``RequestError`` for a ``callback_url`` that is not http(s) or has no signing secret."""
    callback = None
    if req.callback_url is not None:
        if not req.callback_url.startswith(("http://", "https://")):
            raise RequestError("callback_url must be an http:// or https:// URL", "callback_url")
        if callback_secret(router, tenant) is None:
            raise RequestError("callbacks are signed: set the tenant's callback_secret or queue.callback_secret "
                               "in routing.yaml", "callback_url")
        callback = Callback(url=req.callback_url)
    rec = TaskRecord(id=new_task_id(), task=task, status="queued", priority=req.priority or "normal",
                     created_at=wall, updated_at=wall, request=_request_of(req), caller=caller, tenant=tenant,
                     callback=callback, idempotency_key=req.idempotency_key, batch=batch, line=line,
                     custom_id=custom_id)
    got = await queue.submit(rec, router.config.queue.result_ttl + MAX_QUEUE_WAIT)
    return got, got.id == rec.id


def _error_of(err: RouterError) -> dict[str, Any]:
    out: dict[str, Any] = {"type": err.type, "message": err.message, "status": err.status}
    for k in ("code", "path"):
        if getattr(err, k, None):
            out[k] = getattr(err, k)
    attempts = getattr(err, "attempts", None)
    if attempts:
        out["attempts"] = msgspec.to_builtins(attempts)
    return out


class Workers:
    """One replica's pool: ``size`` workers over ``queue``, running tasks on the live router
    (``router()`` returns the current one), on ``clock``; callbacks through ``client``."""

    def __init__(self, queue: Queue, router: Callable[[], Router], size: int, *, clock: Clock | None = None,
                 client: httpx.AsyncClient | None = None, telemetry: Any = None, name: str | None = None) -> None:
        self.queue, self.router, self.size = queue, router, size
        self.clock: Clock = clock or LoopClock()
        self.client = client
        self.telemetry = telemetry
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{new_task_id()[5:13]}"
        self.busy = 0
        self.wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._owns_client = client is None
        self._stopping = False
        self._retries: dict[str, float] = {}  # callbacks this replica rescheduled: task id -> when due (wall)

    # -- the pool -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers and the callback dispatcher (none with ``size`` 0)."""
        if self.size <= 0:
            return
        self._loops = [asyncio.create_task(self._work(i)) for i in range(self.size)]
        self._loops.append(asyncio.create_task(self._callbacks()))

    async def stop(self) -> None:
        """Stop every loop; a running task's entry stays claimed and is run again elsewhere after
        the visibility timeout. (Cancelled again until each loop ends: a client library that
        swallows one cancellation mid-call must not keep the process from stopping.)"""
        self._stopping = True
        self.wake.set()
        pending = set(self._loops)
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.05)
        self._loops = []
        if self._owns_client and self.client is not None:
            await self.client.aclose()

    def notify(self) -> None:
        """A task was queued here: wake an idle worker now."""
        self.wake.set()

    async def _idle(self, n: int) -> None:
        """Until a task is queued here or another worker found one; worker 0 also looks again
        after ``POLL`` seconds of real time (another replica's submissions), so an idle pool
        asks the queue twice a second, not once per worker. It never reads the router's clock:
        a test's fake clock is not moved by it."""
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POLL if n == 0 else None):
                await self.wake.wait()

    async def _work(self, n: int) -> None:
        consumer = f"{self.name}:{n}"
        while not self._stopping:
            try:
                claim = await self.queue.claim(consumer, self.router().config.queue.visibility_timeout)
            except Exception as e:  # noqa: BLE001 - the queue (Redis) failed: try again later
                log.warning("queue: claim failed (%s: %s)", type(e).__name__, e)
                await self.clock.sleep(1.0)
                continue
            if claim is None:
                await self._idle(n)
                continue
            self.wake.set()  # there may be more: the next idle worker looks too
            self.busy += 1
            self._gauge()
            try:
                await self._process(claim)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue: task %s failed in the worker", claim.task_id)
            finally:
                self.busy -= 1
                self._gauge()

    def _gauge(self) -> None:
        if self.telemetry is not None:
            self.telemetry.queue_workers(self.size, self.busy)

    # -- one task -----------------------------------------------------------------------------
    async def _process(self, claim: Claim) -> None:
        rec = await self.queue.get(claim.task_id)
        ttl = self.router().config.queue.result_ttl
        if rec is None or rec.status in TERMINAL:  # expired, cancelled while queued, or done by another worker
            if rec is not None and rec.callback is not None and rec.callback.state == "pending":
                await self.queue.schedule_callback(rec.id, self.clock.wall())  # its worker died before calling back
            await self.queue.ack(claim)
            return
        if rec.runs >= MAX_RUNS:  # every run so far died with its process: it does not get another
            await self._finish(claim, rec, "failed", {"type": "internal_error", "status": 500, "message":
                                                      f"the task was started {rec.runs} times and never finished"}, ttl)
            return
        rec.status, rec.runs = "running", rec.runs + 1
        rec.started_at = rec.updated_at = self.clock.wall()
        if not await self.queue.save(rec, ttl):
            await self.queue.ack(claim)
            return
        running = asyncio.create_task(self._execute(rec))
        visibility = self.router().config.queue.visibility_timeout
        try:
            while not running.done():
                await wait_first(asyncio.shield(running), self.clock.sleep(visibility / 3))
                if running.done():
                    break
                try:
                    await self.queue.renew(claim)
                    fresh = await self.queue.get(rec.id)
                except Exception as e:  # noqa: BLE001 - keep running; the claim may lapse and be run again
                    log.warning("queue: renewing %s failed (%s)", rec.id, e)
                    continue
                if fresh is None or fresh.status == "cancelled":
                    running.cancel()
            status, result = await running
        except asyncio.CancelledError:
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                with contextlib.suppress(Exception):  # the pool stops: give the entry back, another replica runs it now
                    await asyncio.shield(self.queue.release(claim, visibility))
                raise
            await self.queue.ack(claim)  # cancelled by the caller: the record says so already
            self._counted("cancelled")
            return
        finally:
            if not running.done():
                running.cancel()
        await self._finish(claim, rec, status, result, ttl)

    async def _finish(self, claim: Claim, rec: TaskRecord, status: Status, result: dict[str, Any], ttl: float) -> None:
        """Write the result (unless another run already did), then acknowledge the entry and call
        back. The callback is scheduled before the write, so a crash in between still delivers it."""
        now = self.clock.wall()
        rec.status, rec.updated_at, rec.finished_at = status, now, now
        if status == "succeeded":
            rec.answer = result
        else:
            rec.error = result
        if rec.callback is not None:
            rec.callback.first_at = rec.callback.next_at = now
            await self.queue.schedule_callback(rec.id, now + CALLBACK_LEASE)  # a lease: delivered here at once
        saved = await self.queue.save(rec, ttl)
        await self.queue.ack(claim)
        if saved:
            self._counted(status)
            if rec.callback is not None:
                await self._deliver(rec.id)

    def _counted(self, status: str) -> None:
        if self.telemetry is not None:
            self.telemetry.queue_task_done(status)

    async def _execute(self, rec: TaskRecord) -> tuple[Status, dict[str, Any]]:
        """Run ``rec``'s request until it is answered or fails for a reason other than a rate
        limit: ("succeeded", answer) or ("failed", error)."""
        transient = 0
        while True:
            router = self.router()
            try:
                req = msgspec.convert(rec.request, TaskRequest)
                plan = router.plan(req)
                sent = plan.request
                plan.background = True
                tenant = router.config.tenants.get(rec.tenant) if rec.tenant else None
                ctx = RequestContext(caller=rec.caller, limits=tenant.limits if tenant else None, background=True,
                                     tenant=rec.tenant)
                async with router.admit(plan, ctx) as ticket:
                    run = router.run(sent, plan, ctx)
                    answer = await router.complete(sent, plan, run, rec.id, ctx, ticket)
                return "succeeded", msgspec.to_builtins(answer)
            except BudgetExceeded as e:  # a spent budget is not a wait of seconds: the task fails, saying so
                return "failed", _error_of(e)
            except RateLimited as e:
                if e.never:  # bigger than the limit itself: no wait makes it fit
                    return "failed", _error_of(e)
                wait: float | None = e.retry_after
            except RouterError as e:
                wait = getattr(e, "retry_after", None)
                if e.status == 429:
                    wait = wait or 1.0
                elif e.status == 503 and wait is not None and transient < TRANSIENT_WAITS:
                    transient += 1
                else:
                    return "failed", _error_of(e)
            except msgspec.ValidationError as e:
                return "failed", {"type": "invalid_request_error", "message": str(e), "status": 400}
            except Exception as e:  # a bug: this task fails, the worker goes on
                log.exception("queue: task %s raised", rec.id)
                return "failed", {"type": "internal_error", "status": 500, "message": f"internal error ({type(e).__name__})"}
            await self.clock.sleep(max(0.05, wait or 1.0))

    # -- callbacks ----------------------------------------------------------------------------
    async def _callbacks(self) -> None:
        """Deliver due callbacks and sample the queue's depth for ``/metrics``: every second of
        real time, and on the router's clock when a retry this replica scheduled comes due."""
        while not self._stopping:
            try:
                if self.telemetry is not None:
                    self.telemetry.queue_depth(await self.queue.depth(self.clock.wall()))
                for _ in range(64):  # one at a time: each is leased just before it is delivered
                    due = await self.queue.due_callbacks(self.clock.wall(), CALLBACK_LEASE, 1)
                    if not due:
                        break
                    await self._deliver(due[0])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the queue failed; try again
                log.warning("queue: callbacks failed (%s: %s)", type(e).__name__, e)
            waits: list[Any] = [asyncio.sleep(1.0)]
            if self._retries:
                waits.append(self.clock.sleep(max(0.0, min(self._retries.values()) - self.clock.wall())))
            await wait_first(*waits)
            now = self.clock.wall()
            self._retries = {t: at for t, at in self._retries.items() if at > now}

    async def _deliver(self, task_id: str) -> None:
        """One delivery try of ``task_id``'s callback; reschedules or finishes it."""
        rec = await self.queue.get(task_id)
        if rec is None or rec.callback is None or rec.callback.state != "pending":
            await self.queue.done_callback(task_id)
            return
        cb, router = rec.callback, self.router()
        secret = callback_secret(router, rec.tenant)
        body = msgspec.json.encode(rec.public())
        now = self.clock.wall()
        cb.attempts += 1
        ok = False
        if self.client is None:  # made at the first callback (an SSL context costs tens of ms)
            self.client = httpx.AsyncClient(timeout=CALLBACK_TIMEOUT)
        try:
            assert secret is not None
            r = await self.client.post(cb.url, content=body, timeout=CALLBACK_TIMEOUT, headers={
                "content-type": "application/json", "x-llm-router-task": rec.id,
                "x-llm-router-signature": sign(secret, body, int(time.time()))})
            cb.last_status, cb.last_error = r.status_code, None
            ok = 200 <= r.status_code < 300
        except (httpx.HTTPError, AssertionError) as e:
            cb.last_error = f"{type(e).__name__}: {e}"[:200] if not isinstance(e, AssertionError) else "no signing secret"
        if not ok and self.telemetry is not None:
            self.telemetry.queue_callback_failed()
        if ok:
            cb.state, cb.next_at = "delivered", None
        else:
            delay = min(CALLBACK_MAX_INTERVAL, CALLBACK_FIRST_RETRY * 2 ** (cb.attempts - 1))
            if now + delay > (cb.first_at or now) + router.config.queue.callback_max_age:
                cb.state, cb.next_at = "failed", None
            else:
                cb.next_at = now + delay
        await self._write_callback(rec)
        if cb.state == "pending" and cb.next_at is not None:
            await self.queue.schedule_callback(task_id, cb.next_at)
            self._retries[task_id] = cb.next_at
        else:
            await self.queue.done_callback(task_id)

    async def _write_callback(self, rec: TaskRecord) -> None:
        """The record with its callback state (it is terminal, so written unconditionally)."""
        await self.queue.force(rec, self.router().config.queue.result_ttl)
