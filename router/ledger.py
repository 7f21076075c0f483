"""The usage ledger: tokens and cost per caller (tenant), task and model per UTC day, in the store.

``UsageLedger.add(record)`` sums a finished request in memory; the sums reach the store at most
``flush_seconds`` later (and at shutdown), one increment per (caller, task, model, day) key, so a
request costs no store round trip for it. ``usage_report`` reads the totals for ``GET /v1/usage``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from router.run import RequestRecord
from router.stores import Store, StoreError
from router.stores.base import background

__all__ = ["LEDGER_FLUSH_SECONDS", "UsageLedger", "WriteBehind", "usage_daily", "usage_report"]

LEDGER_FLUSH_SECONDS = 0.5  # the usage ledger's sums reach the store at most this late


class WriteBehind:
    """Telemetry's write-behind buffer: counter sums (``merge``) and capped log entries (``push``)
    kept in memory and written to ``store`` (set by the app) at most ``flush_seconds`` after the
    first pending one, so a request costs no store round trip for them. What a failing store
    refuses stays pending and is tried again at the next flush. ``clock``: monotonic seconds."""

    def __init__(self, store: Store | None = None, flush_seconds: float = LEDGER_FLUSH_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self.clock = clock
        # key -> (counters not yet written, ttl, when the first of them was merged)
        self._pending: dict[str, tuple[dict[str, float], float | None, float]] = {}
        self._logs: dict[str, deque[bytes]] = {}  # log key -> entries not yet pushed (oldest first)
        self._keep: dict[str, int] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()  # one flush at a time: close() waits for one under way

    def merge(self, key: str, fields: Mapping[str, float], ttl: float | None = None) -> None:
        """Add ``fields`` to the counters of ``key`` (written with ``ttl`` seconds, when given)."""
        got = self._pending.get(key)
        if got is None:
            got = self._pending[key] = ({}, ttl, self.clock())
        acc = got[0]
        for k, v in fields.items():
            acc[k] = acc.get(k, 0.0) + v
        self._schedule()

    def counters(self, key: str, ttl: float | None = None) -> dict[str, float]:
        """The pending counters of ``key`` to add to in place (``acc[k] = acc.get(k, 0) + v``);
        what ``merge`` does without a dict of fields made per call."""
        got = self._pending.get(key)
        if got is None:
            got = self._pending[key] = ({}, ttl, self.clock())
            self._schedule()
        return got[0]

    def push(self, key: str, value: bytes, keep: int) -> None:
        """Append ``value`` to the capped log ``key`` (the store keeps the newest ``keep``; so
        does this buffer while the store is away)."""
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = deque(maxlen=keep)
            self._keep[key] = keep
        log.append(value)
        self._schedule()

    def _schedule(self) -> None:
        if self._flusher is None and self.store is not None:
            self._flusher = background(self._later())

    async def _later(self) -> None:
        try:
            await asyncio.sleep(self.flush_seconds)
        finally:
            self._flusher = None
        await self.flush()

    def _requeue(self, items: list[tuple[str, tuple[dict[str, float], float | None, float]]],
                 logs: dict[str, deque[bytes]]) -> None:
        """Put back what a flush could not write, before what arrived meanwhile: counters merged
        (those whose ttl has run out since are dropped: the store would have expired them), log
        entries older than the ones pushed since (the cap keeps the newest)."""
        now = self.clock()
        for key, (fields, ttl, first) in items:
            if ttl is not None and now - first > ttl:
                continue
            got = self._pending.get(key)
            if got is None:
                self._pending[key] = (fields, ttl, first)
            else:
                for k, v in fields.items():
                    got[0][k] = got[0].get(k, 0.0) + v
                self._pending[key] = (got[0], ttl, min(first, got[2]))
        for key, old in logs.items():
            self._logs[key] = deque([*old, *self._logs.get(key, ())], maxlen=self._keep[key])
        if (items or logs) and self._flusher is None and self.store is not None:
            self._flusher = background(self._later())

    async def flush(self) -> None:
        """Write the pending sums and log entries to the store. What the store refuses
        (``StoreError``: Redis down) stays pending, merged with later requests, and is tried again
        at the next flush, so nothing is lost while the process lives (logs keep their newest;
        counters with a ttl are dropped once it has run out)."""
        async with self._writing:
            if self.store is None or not (self._pending or self._logs):
                return
            pending, self._pending = self._pending, {}
            logs, self._logs = self._logs, {}
            now = self.clock()  # counters whose ttl ran out while they waited would be expired: dropped
            items = [(k, v) for k, v in pending.items() if v[1] is None or now - v[2] <= v[1]]
            for i, (key, (fields, ttl, _first)) in enumerate(items):
                try:
                    await self.store.stats_add(key, fields, ttl)
                except StoreError:
                    self._requeue(items[i:], logs)
                    return
            for j, (key, log) in enumerate(list(logs.items())):
                try:
                    await self.store.log_push(key, list(log), self._keep[key])
                except StoreError:
                    self._requeue([], dict(list(logs.items())[j:]))
                    return

    async def close(self) -> None:
        """Stop the timed flush and write what is pending (the app's shutdown; a flush under way
        finishes first)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush()


class UsageLedger(WriteBehind):
    """The usage ledger over the write-behind buffer: sums per (caller, task, model, UTC day)."""

    def add(self, rec: RequestRecord) -> None:
        """Add the request to the usage ledger: summed in memory, written to the store at most
        ``flush_seconds`` later in one increment per (caller, task, model, UTC day) key,
        instead of two store round trips per request."""
        day = time.strftime("%Y-%m-%d", time.gmtime(rec.start_ns / 1e9))
        combo = f"{rec.caller}\t{rec.task}\t{rec.provider}/{rec.model}"
        fields = {"requests": 1.0, "input_tokens": rec.input_tokens, "output_tokens": rec.output_tokens,
                  "reasoning_tokens": rec.reasoning_tokens, "cached_tokens": rec.cached_tokens, "cost_usd": rec.cost_usd,
                  "cache_write_tokens": rec.cache_write_tokens, "cache_savings_usd": rec.cache_savings_usd}
        if rec.usage_estimated:
            fields["estimated_requests"] = 1.0
        if rec.outcome == "error":
            fields["errors"] = 1.0
        self.merge(f"usage:{combo}:{day}", fields)
        self.merge("usage:index", {combo: 1.0})


async def usage_report(store: Store, *, tenant: str | None, task: str | None, since: float) -> dict[str, Any]:
    """Usage totals per (tenant, task, model) since ``since`` (epoch seconds; UTC-day resolution),
    and overall. Raises ``StoreError``."""
    index = await store.stats_get("usage:index")
    days = []
    t = since - since % 86400
    while t <= time.time():
        days.append(time.strftime("%Y-%m-%d", time.gmtime(t)))
        t += 86400
    rows, total = [], {"requests": 0.0, "input_tokens": 0.0, "output_tokens": 0.0, "reasoning_tokens": 0.0,
                       "cached_tokens": 0.0, "cache_write_tokens": 0.0, "cost_usd": 0.0, "cache_savings_usd": 0.0,
                       "estimated_requests": 0.0, "errors": 0.0}
    for combo in sorted(index):
        who, what, model = combo.split("\t")
        if (tenant and who != tenant) or (task and what != task):
            continue
        sums: dict[str, float] = {}
        for day in days:
            for k, v in (await store.stats_get(f"usage:{combo}:{day}")).items():
                sums[k] = sums.get(k, 0.0) + v
        if not sums:
            continue
        for k in total:
            total[k] += sums.get(k, 0.0)
        rows.append({"tenant": who, "task": what, "model": model,
                     **{k: (round(v, 8) if k.endswith("_usd") else int(v)) for k, v in sums.items()}})
    return {"since": time.strftime("%Y-%m-%d", time.gmtime(since)), "rows": rows,
            "total": {k: (round(v, 8) if k.endswith("_usd") else int(v)) for k, v in total.items()}}


async def usage_daily(store: Store, days: int, now: float | None = None) -> dict[str, Any]:
    """The last ``days`` UTC days (1-92) of usage per (tenant, task, model) and day, for the
    console's spend charts: ``days`` (``YYYY-MM-DD``, oldest first) and ``rows`` (one per
    combination and day with requests, tokens, ``cost_usd``, ``cache_savings_usd``, errors).
    One pipelined read. Raises ``StoreError``."""
    days = max(1, min(92, days))
    now = time.time() if now is None else now
    names = [time.strftime("%Y-%m-%d", time.gmtime(now - 86400 * i)) for i in range(days - 1, -1, -1)]
    combos = sorted(await store.stats_get("usage:index"))
    keys = [(combo, day) for combo in combos for day in names]
    hashes = await store.stats_get_many([f"usage:{combo}:{day}" for combo, day in keys])
    rows = []
    for (combo, day), sums in zip(keys, hashes, strict=True):
        if not sums:
            continue
        who, what, model = combo.split("\t")
        rows.append({"day": day, "tenant": who, "task": what, "model": model,
                     **{k: (round(v, 8) if k.endswith("_usd") else int(v)) for k, v in sums.items()}})
    return {"days": names, "rows": rows}
