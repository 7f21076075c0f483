"""The async task queue: task records, the work queue, scheduled callbacks and batches.

Two implementations of one contract (``Queue``): ``RedisQueue``, shared by every replica on one
Redis, and ``MemoryQueue``, one process's own (no Redis: the startup log says so).

Redis layout (every key under one hash tag, ``{<prefix>:q}``, so it works on Redis Cluster):

* ``...:s:high``, ``...:s:normal``, ``...:s:low``: one Stream per priority, consumer group
  ``workers``; an entry carries only the task id. A worker claims with ``XREADGROUP`` (the highest
  priority first); an entry whose worker stopped renewing it (``XCLAIM ... JUSTID``, its
  heartbeat) for ``visibility_timeout`` is taken over by another worker with ``XAUTOCLAIM``
  (https://redis.io/docs/latest/commands/xautoclaim/), so a task of a killed process runs again.
  A finished entry is ``XACK``-ed and ``XDEL``-eted.
* ``...:task:<id>``: the record, a hash of ``status`` and ``body`` (JSON). Every write after the
  first is conditional (one script): a record already ``succeeded``, ``failed`` or
  ``cancelled`` is never written again, so a task run twice is completed once.
* ``...:idem:<tenant>:<key>``: an idempotency key's task id (``SET NX``).
* ``...:cb``: a sorted set of task ids by the time their callback is next due; a replica
  taking one moves it a lease ahead, so a delivery cut by a crash is tried again.
* ``...:batch:<id>``: a batch (its lines' task ids and per-line errors).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol

import msgspec

from router.stores.base import StoreError

__all__ = ["PRIORITIES", "TERMINAL", "Batch", "Callback", "Claim", "MemoryQueue", "Queue", "RedisQueue",
           "TaskRecord", "new_task_id", "queue_for"]

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _owner(rec: TaskRecord) -> str:
    """Whose idempotency keys these are: the tenant, else the caller."""
    return rec.tenant or "caller:" + rec.caller


def new_task_id() -> str:
    """A random task id (``task_`` + 24 hex digits)."""
    return "task_" + secrets.token_hex(12)


class Callback(msgspec.Struct, omit_defaults=True):
    """A task's callback: ``url``; ``state`` ``pending`` (not yet delivered; retried with
    backoff), ``delivered`` or ``failed`` (given up after ``callback_max_age``); ``attempts``;
    the last answer's ``last_status`` or ``last_error``; epoch seconds ``first_at``/``next_at``."""

    url: str
    state: Literal["pending", "delivered", "failed"] = "pending"
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    first_at: float | None = None
    next_at: float | None = None


class TaskRecord(msgspec.Struct, omit_defaults=True):
    """One async task. Times are epoch seconds. ``request``: the canonical request as submitted
    (planned again when it runs, so a live config edit applies); ``runs``: how many times a
    worker started it (more than 1 after a worker died); ``answer``: the folded answer when it
    succeeded; ``error``: ``{type, message, status}`` when it failed."""

    id: str
    task: str
    status: Status
    priority: Priority
    created_at: float
    updated_at: float
    request: dict[str, Any]
    caller: str = "unknown"
    tenant: str | None = None
    runs: int = 0
    answer: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    callback: Callback | None = None
    idempotency_key: str | None = None
    batch: str | None = None
    line: int | None = None
    custom_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    def public(self) -> dict[str, Any]:
        """The task as ``GET /v1/tasks/{id}`` shows it (the request's own fields left out)."""
        out = msgspec.to_builtins(self)
        out.pop("request", None)
        out["object"] = "task"
        out["attempts"] = (self.answer or {}).get("attempts") or (self.error or {}).get("attempts") or []
        return out  # type: ignore[no-any-return]


class Batch(msgspec.Struct):
    """A batch: ``tasks[i]`` is line ``i``'s task id (None for a bad line, whose error is in
    ``errors[str(i)]``); ``custom_ids[i]`` the line's ``custom_id``."""

    id: str
    created_at: float
    tasks: list[str | None]
    custom_ids: list[str | None]
    errors: dict[str, dict[str, Any]]
    tenant: str | None = None


class Claim(msgspec.Struct, frozen=True):
    """A worker's hold on one queue entry: the ``task_id``, the stream ``entry`` id and its
    ``priority``, by ``consumer``."""

    task_id: str
    entry: str
    priority: Priority
    consumer: str


_rec = msgspec.json.Decoder(TaskRecord)
_batch = msgspec.json.Decoder(Batch)
_enc = msgspec.json.Encoder()


class Queue(Protocol):
    """The queue contract (both implementations; tests run it on each)."""

    kind: str

    async def submit(self, rec: TaskRecord, ttl: float) -> TaskRecord:
        """Keep ``rec`` (for ``ttl`` seconds) and queue it; with an ``idempotency_key`` already
        used by the same tenant, nothing is queued and the earlier task's record is returned."""
        ...

    async def claim(self, consumer: str, visibility: float) -> Claim | None:
        """The next entry for ``consumer``: one whose claim lapsed ``visibility`` seconds ago,
        else the oldest of the highest priority; None when there is none."""
        ...

    async def renew(self, claim: Claim) -> None:
        """Reset the entry's idle time (a running task's heartbeat)."""
        ...

    async def ack(self, claim: Claim) -> None:
        """The entry is done: remove it from the queue."""
        ...

    async def release(self, claim: Claim, visibility: float) -> None:
        """Give the entry back (this replica stops): the next claim anywhere takes it at once."""
        ...

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record, or None (unknown or expired)."""
        ...

    async def save(self, rec: TaskRecord, ttl: float) -> bool:
        """Write ``rec`` unless the stored one is already terminal (False then)."""
        ...

    async def force(self, rec: TaskRecord, ttl: float) -> None:
        """Write ``rec`` whatever the stored status (a finished task's callback state)."""
        ...

    async def depth(self, now: float) -> dict[str, Any]:
        """``{"queued": {priority: n}, "running": n, "oldest_age": seconds or None}``."""
        ...

    async def schedule_callback(self, task_id: str, at: float) -> None:
        """Deliver ``task_id``'s callback at epoch ``at`` (or later)."""
        ...

    async def due_callbacks(self, now: float, lease: float, n: int) -> list[str]:
        """Up to ``n`` task ids whose callback is due, each moved ``lease`` seconds ahead."""
        ...

    async def done_callback(self, task_id: str) -> None:
        """The callback is delivered or given up: no more deliveries."""
        ...

    async def put_batch(self, batch: Batch, ttl: float) -> None: ...

    async def get_batch(self, batch_id: str) -> Batch | None: ...

    async def get_many(self, task_ids: list[str]) -> list[TaskRecord | None]:
        """The records of ``task_ids``, in order."""
        ...

    async def close(self) -> None: ...


class QueueFull(StoreError):
    """The in-memory queue holds ``max_records`` tasks that are neither finished nor expired."""


class MemoryQueue:
    """One process's queue (no Redis). ``clock``: epoch seconds. At ``max_records`` it drops
    finished or expired records (never a queued or running one), else refuses new work
    (``QueueFull``, answered 503)."""

    kind = "memory"

    def __init__(self, clock: Callable[[], float] = time.time, max_records: int = 200_000) -> None:
        self.clock, self.max_records = clock, max_records
        self._records: dict[str, tuple[float, bytes, str]] = {}  # id -> (expires, record, status)
        self._idem: dict[str, tuple[float, str]] = {}
        self._streams: dict[str, deque[tuple[str, str, float]]] = {p: deque() for p in PRIORITIES}
        self._pending: dict[str, tuple[Claim, float, float]] = {}  # entry -> (claim, last renewal, enqueued)
        self._callbacks: dict[str, float] = {}
        self._batches: dict[str, tuple[float, bytes]] = {}
        self._seq = 0

    def _entry(self) -> str:
        self._seq += 1
        return f"{int(self.clock() * 1000)}-{self._seq}"

    def _put(self, rec: TaskRecord, ttl: float) -> None:
        if rec.id not in self._records and len(self._records) >= self.max_records:
            now = self.clock()
            gone = [k for k, (exp, _, status) in self._records.items() if exp <= now or status in TERMINAL]
            if not gone:
                raise QueueFull(f"the in-memory queue holds {self.max_records} unfinished tasks")
            for k in gone:
                del self._records[k]
            self._idem = {k: v for k, v in self._idem.items() if v[0] > now}
            self._batches = {k: v for k, v in self._batches.items() if v[0] > now}
        self._records[rec.id] = (self.clock() + ttl, _enc.encode(rec), rec.status)

    async def submit(self, rec: TaskRecord, ttl: float) -> TaskRecord:
        if rec.idempotency_key is not None:
            key = f"{_owner(rec)}:{rec.idempotency_key}"
            earlier = self._idem.get(key)
            if earlier is not None and (got := await self.get(earlier[1])) is not None:
                return got
            self._put(rec, ttl)
            self._idem[key] = (self.clock() + ttl, rec.id)
        else:
            self._put(rec, ttl)
        self._streams[rec.priority].append((self._entry(), rec.id, self.clock()))
        return rec

    async def claim(self, consumer: str, visibility: float) -> Claim | None:
        now = self.clock()
        for entry, (c, renewed, enqueued) in list(self._pending.items()):
            if now - renewed >= visibility:
                claim = Claim(c.task_id, entry, c.priority, consumer)
                self._pending[entry] = (claim, now, enqueued)
                return claim
        for p in PRIORITIES:
            if self._streams[p]:
                entry, task_id, enqueued = self._streams[p].popleft()
                claim = Claim(task_id, entry, p, consumer)
                self._pending[entry] = (claim, now, enqueued)
                return claim
        return None

    async def renew(self, claim: Claim) -> None:
        if claim.entry in self._pending:
            c, _, enqueued = self._pending[claim.entry]
            self._pending[claim.entry] = (c, self.clock(), enqueued)

    async def ack(self, claim: Claim) -> None:
        self._pending.pop(claim.entry, None)

    async def release(self, claim: Claim, visibility: float) -> None:
        if claim.entry in self._pending:
            c, _, enqueued = self._pending[claim.entry]
            self._pending[claim.entry] = (c, float("-inf"), enqueued)

    async def get(self, task_id: str) -> TaskRecord | None:
        got = self._records.get(task_id)
        if got is None or got[0] <= self.clock():
            return None
        return _rec.decode(got[1])

    async def get_many(self, task_ids: list[str]) -> list[TaskRecord | None]:
        return [await self.get(t) for t in task_ids]

    async def save(self, rec: TaskRecord, ttl: float) -> bool:
        current = await self.get(rec.id)
        if current is None or current.status in TERMINAL:
            return False
        self._put(rec, ttl)
        return True

    async def force(self, rec: TaskRecord, ttl: float) -> None:
        self._put(rec, ttl)

    async def depth(self, now: float) -> dict[str, Any]:
        oldest = [s[0][2] for s in self._streams.values() if s] + [e for _, _, e in self._pending.values()]
        return {"queued": {p: len(s) for p, s in self._streams.items()}, "running": len(self._pending),
                "oldest_age": round(now - min(oldest), 3) if oldest else None}

    async def schedule_callback(self, task_id: str, at: float) -> None:
        self._callbacks[task_id] = at

    async def due_callbacks(self, now: float, lease: float, n: int) -> list[str]:
        due = sorted((at, t) for t, at in self._callbacks.items() if at <= now)[:n]
        for _, t in due:
            self._callbacks[t] = now + lease
        return [t for _, t in due]

    async def done_callback(self, task_id: str) -> None:
        self._callbacks.pop(task_id, None)

    async def put_batch(self, batch: Batch, ttl: float) -> None:
        self._batches[batch.id] = (self.clock() + ttl, _enc.encode(batch))

    async def get_batch(self, batch_id: str) -> Batch | None:
        got = self._batches.get(batch_id)
        return _batch.decode(got[1]) if got is not None and got[0] > self.clock() else None

    async def close(self) -> None:
        return None


# KEYS[1]: the record. ARGV: status, body, ttl ms. Returns 1 when written, 0 when the stored record
# is terminal (or gone: a record is created only by submit).
_SAVE = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur or cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'body', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: the streams, highest priority first. ARGV: group, consumer, min idle ms. Returns {index,
# entry id, task id} of a lapsed entry (XAUTOCLAIM), else of the oldest new entry, else false.
_CLAIM = """
for i = 1, #KEYS do
  local cursor = '0-0'
  for _ = 1, 100 do  -- XAUTOCLAIM looks at about 10 entries per call: follow its cursor through the list
    local r = redis.call('XAUTOCLAIM', KEYS[i], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', 1)
    local e = r[2][1]
    if e then return {i, e[1], e[2][2]} end
    cursor = r[1]
    if cursor == '0-0' then break end
  end
end
for i = 1, #KEYS do
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[i], '>')
  if r then
    local e = r[1][2][1]
    return {i, e[1], e[2][2]}
  end
end
return false
"""

# KEYS[1]: the callback set. ARGV: now, lease seconds, n. The due ids, each moved a lease ahead.
_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id) end
return ids
"""

# KEYS[1]: the idempotency key (or the record when there is none), KEYS[2]: the record, KEYS[3]:
# the stream. ARGV: task id, status, body, ttl ms, record key prefix, has key (1/0). Returns the
# task id queued, or the earlier task's id for a key seen before (nothing queued then).
_SUBMIT = """
if ARGV[6] == '1' then
  local earlier = redis.call('GET', KEYS[1])
  if earlier and redis.call('EXISTS', ARGV[5] .. earlier) == 1 then return earlier end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
end
redis.call('HSET', KEYS[2], 'status', ARGV[2], 'body', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('XADD', KEYS[3], '*', 'id', ARGV[1])
return ARGV[1]
"""

GROUP = "workers"


class RedisQueue:
    """The queue on Redis (see the module docstring), over ``client`` (a redis-py asyncio client,
    plain or cluster: the store's), its keys under ``prefix``."""

    kind = "redis"

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.tag = "{" + prefix + ":q}"
        self.streams = {p: f"{self.tag}:s:{p}" for p in PRIORITIES}
        self._save = client.register_script(_SAVE)
        self._submit = client.register_script(_SUBMIT)
        self._claim = client.register_script(_CLAIM)
        self._due = client.register_script(_DUE)
        self._groups = False

    def _task(self, task_id: str) -> str:
        return f"{self.tag}:task:{task_id}"

    @staticmethod
    async def _call(aw: Any) -> Any:
        """``aw``, with Redis' failures as ``StoreError`` (answered 503, as the store's are)."""
        import redis

        try:
            return await aw
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as e:
            raise StoreError(f"the queue's Redis failed: {type(e).__name__}") from e

    async def _ensure_groups(self) -> None:
        if self._groups:
            return
        import redis

        for s in self.streams.values():
            try:
                await self.client.xgroup_create(s, GROUP, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self._groups = True

    async def submit(self, rec: TaskRecord, ttl: float) -> TaskRecord:
        await self._ensure_groups()
        idem = f"{self.tag}:idem:{_owner(rec)}:{rec.idempotency_key}" if rec.idempotency_key is not None else None
        got = await self._call(self._submit(
            keys=[idem or self._task(rec.id), self._task(rec.id), self.streams[rec.priority]],
            args=[rec.id, rec.status, _enc.encode(rec), max(1, int(ttl * 1000)), self._task(""), 1 if idem else 0]))
        queued = got.decode() if isinstance(got, bytes) else str(got)
        if queued != rec.id:
            earlier = await self.get(queued)
            if earlier is not None:
                return earlier
        return rec

    async def claim(self, consumer: str, visibility: float) -> Claim | None:
        await self._ensure_groups()
        got = await self._call(self._claim(keys=list(self.streams.values()), args=[GROUP, consumer, int(visibility * 1000)]))
        if not got:
            return None
        index, entry, task_id = got
        return Claim(task_id.decode(), entry.decode(), PRIORITIES[int(index) - 1], consumer)

    async def renew(self, claim: Claim) -> None:
        await self.client.xclaim(self.streams[claim.priority], GROUP, claim.consumer, 0, [claim.entry], justid=True)

    async def release(self, claim: Claim, visibility: float) -> None:
        """``XCLAIM ... IDLE``: the entry looks idle for longer than the visibility timeout."""
        await self._call(self.client.xclaim(self.streams[claim.priority], GROUP, claim.consumer, 0, [claim.entry],
                                            idle=int(visibility * 1000) + 1000, justid=True))

    async def ack(self, claim: Claim) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(self.streams[claim.priority], GROUP, claim.entry)
            pipe.xdel(self.streams[claim.priority], claim.entry)
            await pipe.execute()

    async def get(self, task_id: str) -> TaskRecord | None:
        body = await self._call(self.client.hget(self._task(task_id), "body"))
        return _rec.decode(body) if body else None

    async def get_many(self, task_ids: list[str]) -> list[TaskRecord | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for t in task_ids:
                pipe.hget(self._task(t), "body")
            bodies = await self._call(pipe.execute())
        return [_rec.decode(b) if b else None for b in bodies]

    async def save(self, rec: TaskRecord, ttl: float) -> bool:
        return bool(await self._call(self._save(keys=[self._task(rec.id)],
                                                args=[rec.status, _enc.encode(rec), max(1, int(ttl * 1000))])))

    async def force(self, rec: TaskRecord, ttl: float) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self._task(rec.id), mapping={"status": rec.status, "body": _enc.encode(rec)})
            pipe.pexpire(self._task(rec.id), max(1, int(ttl * 1000)))
            await pipe.execute()

    async def depth(self, now: float) -> dict[str, Any]:
        await self._ensure_groups()
        async with self.client.pipeline(transaction=False) as pipe:
            for s in self.streams.values():
                pipe.xlen(s)
                pipe.xpending(s, GROUP)
                pipe.xrange(s, count=1)
            got = await pipe.execute()
        queued, running, oldest = {}, 0, []
        for i, p in enumerate(PRIORITIES):
            length, pending, first = got[3 * i], got[3 * i + 1], got[3 * i + 2]
            n = int(pending.get("pending", 0)) if isinstance(pending, dict) else 0
            queued[p], running = max(0, int(length) - n), running + n
            if first:
                oldest.append(int(first[0][0].decode().split("-")[0]) / 1000)
        return {"queued": queued, "running": running, "oldest_age": round(now - min(oldest), 3) if oldest else None}

    async def schedule_callback(self, task_id: str, at: float) -> None:
        await self.client.zadd(f"{self.tag}:cb", {task_id: at})

    async def due_callbacks(self, now: float, lease: float, n: int) -> list[str]:
        got = await self._due(keys=[f"{self.tag}:cb"], args=[now, lease, n])
        return [x.decode() for x in got]

    async def done_callback(self, task_id: str) -> None:
        await self.client.zrem(f"{self.tag}:cb", task_id)

    async def put_batch(self, batch: Batch, ttl: float) -> None:
        await self._call(self.client.set(f"{self.tag}:batch:{batch.id}", _enc.encode(batch), px=max(1, int(ttl * 1000))))

    async def get_batch(self, batch_id: str) -> Batch | None:
        body = await self._call(self.client.get(f"{self.tag}:batch:{batch_id}"))
        return _batch.decode(body) if body else None

    async def close(self) -> None:
        return None  # the client is the store's, closed with it


def queue_for(store: Any, clock: Callable[[], float] = time.time) -> Queue:
    """The queue beside ``store``: on its Redis client (and prefix) when it is a Redis store,
    else this process's own."""
    client = getattr(store, "client", None)
    if getattr(store, "kind", "memory") != "memory" and client is not None:
        return RedisQueue(client, store.prefix)
    return MemoryQueue(clock)


async def wait_first(*aws: Any) -> None:
    """Return when the first of ``aws`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
