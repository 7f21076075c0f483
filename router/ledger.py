"""The usage ledger: tokens and cost per caller (tenant), task and model per UTC day, in the store.

``UsageLedger.add(record)`` sums a finished request in memory; the sums reach the store at most
``flush_seconds`` later (and at shutdown), one increment per (caller, task, model, day) key, so a
request costs no store round trip for it. ``usage_report`` reads the totals for ``GET /v1/usage``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from router.run import RequestRecord
from router.stores import Store, StoreError
from router.stores.base import background

__all__ = ["LEDGER_FLUSH_SECONDS", "UsageLedger", "usage_report"]

LEDGER_FLUSH_SECONDS = 0.5  # the usage ledger's sums reach the store at most this late


class UsageLedger:
    """Sums in memory, written to ``store`` (set by the app) every ``flush_seconds``."""

    def __init__(self, store: Store | None = None, flush_seconds: float = LEDGER_FLUSH_SECONDS) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self._pending: dict[str, dict[str, float]] = {}  # store key -> counters not yet written
        self._flusher: asyncio.Task[None] | None = None

    def add(self, rec: RequestRecord) -> None:
        """Add the request to the usage ledger: summed in memory, written to the store at most
        ``ledger_flush_seconds`` later in one increment per (caller, task, model, UTC day) key,
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
        self._merge(f"usage:{combo}:{day}", fields)
        self._merge("usage:index", {combo: 1.0})
        if self._flusher is None:
            self._flusher = background(self._later())

    def _merge(self, key: str, fields: Mapping[str, float]) -> None:
        acc = self._pending.setdefault(key, {})
        for k, v in fields.items():
            acc[k] = acc.get(k, 0.0) + v

    async def _later(self) -> None:
        try:
            await asyncio.sleep(self.flush_seconds)
        finally:
            self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        """Write the ledger's pending sums to the store. What the store refuses (``StoreError``:
        Redis down) stays pending, merged with later requests, and is tried again at the next flush,
        so the ledger loses nothing while its process lives."""
        if self.store is None or not self._pending:
            return
        pending, self._pending = self._pending, {}
        for i, (key, fields) in enumerate(pending.items()):
            try:
                await self.store.stats_add(key, fields)
            except StoreError:
                for k, f in list(pending.items())[i:]:
                    self._merge(k, f)
                if self._flusher is None:
                    self._flusher = background(self._later())
                return

    async def close(self) -> None:
        """Stop the timed flush and write what is pending (the app's shutdown)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush()



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
