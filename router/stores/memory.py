"""The in-memory store: one process's state, with the same semantics as the Redis store."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from router.policy import EffectiveCooldown as Cooldown
from router.stores.base import (
    PERIOD,
    Admission,
    AdmitAnswer,
    AdmitAsk,
    BreakerState,
    BudgetSpec,
    LimitResult,
    LimitSpec,
    Write,
    admit_in_steps,
    writes_one_by_one,
)

__all__ = ["MemoryStore"]


class _Breaker:
    __slots__ = ("failures", "first_failure", "open_until", "probe_until", "trips", "window")

    def __init__(self) -> None:
        self.window = 0.0
        self.failures = 0
        self.first_failure = 0.0
        self.trips = 0
        self.open_until = 0.0
        self.probe_until = 0.0


class MemoryStore:
    """Dict-backed ``Store`` for a single process (the default when no Redis is configured).
    ``clock``: epoch seconds for limits, cache and locks (injectable for tests); the cache keeps at
    most ``max_entries`` entries (oldest written dropped first)."""

    kind = "memory"

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = 10_000) -> None:
        self.clock = clock
        self._budgets: dict[str, tuple[float, int]] = {}  # key -> (expires, micro-USD)
        self.max_entries = max_entries
        self._breakers: dict[str, _Breaker] = {}
        self._tat: dict[str, float] = {}
        self._cache: dict[str, tuple[float, bytes]] = {}
        self._locks: dict[str, float] = {}
        self._stats: dict[str, dict[str, float]] = {}
        self._stats_expiry: dict[str, float] = {}  # keys written with a ttl -> when they expire
        self._stats_pruned = 0.0
        self._kv: dict[str, tuple[float, bytes]] = {}
        self._logs: dict[str, deque[bytes]] = {}

    # -- circuit breakers ------------------------------------------------------------------
    async def breaker_admit(self, key: str, now: float, probe_lease: float) -> Admission:
        b = self._breakers.get(key)
        if b is None:
            return "closed"
        if not b.open_until:
            return "failing" if b.failures and now - b.first_failure <= b.window else "closed"
        if now < b.open_until or now < b.probe_until:
            return "open"
        b.probe_until = now + probe_lease
        return "probe"

    async def breaker_success(self, key: str) -> None:
        self._breakers.pop(key, None)

    async def breaker_hold(self, key: str, now: float, until: float) -> None:
        b = self._breakers.setdefault(key, _Breaker())
        b.open_until = max(b.open_until, until)
        b.probe_until, b.failures, b.trips = 0.0, 0, max(b.trips, 1)

    async def breaker_release(self, key: str) -> None:
        b = self._breakers.get(key)
        if b is not None:
            b.probe_until = 0.0

    async def breaker_failure(self, key: str, now: float, cfg: Cooldown) -> bool:
        b = self._breakers.setdefault(key, _Breaker())
        b.window = cfg.window
        if b.open_until:  # a failed probe (or a straggler while open): trip again, longer
            if now < b.open_until:
                return False
            b.trips += 1
        else:
            if b.failures and now - b.first_failure > cfg.window:
                b.failures = 0
            if not b.failures:
                b.first_failure = now
            b.failures += 1
            if b.failures < cfg.failures:
                return False
            b.trips = 1
        b.open_until = now + min(cfg.max_duration, cfg.duration * cfg.backoff ** (b.trips - 1))
        b.probe_until = 0.0
        b.failures = 0
        return True

    async def breaker_states(self, keys: list[str], now: float) -> dict[str, BreakerState]:
        out = {}
        for key in keys:
            b = self._breakers.get(key)
            if b is None:
                out[key] = BreakerState()
            elif b.open_until:
                out[key] = BreakerState(state="open" if now < b.open_until else "half_open",
                                        trips=b.trips, open_until=b.open_until)
            else:
                out[key] = BreakerState(failures=b.failures)
        return out

    # -- rate limits (GCRA, see router.stores.base) ----------------------------------------
    async def limit_acquire(self, specs: list[LimitSpec]) -> LimitResult:
        now = self.clock()
        news, retry = [], 0.0
        for key, limit, cost, paced in specs:
            tat = max(self._tat.get(key, now), now)
            new = tat + cost * PERIOD / limit
            retry = max(retry, tat - now if paced else new - now - PERIOD)
            news.append((tat, new))
        allowed = retry <= 0
        remaining, reset = [], []
        for (key, limit, _, _), (tat, new) in zip(specs, news, strict=True):
            t = new if allowed else tat
            if allowed:
                self._tat[key] = new
            remaining.append(max(0, math.floor((PERIOD - (t - now)) * limit / PERIOD)))
            reset.append(round(t - now, 3))
        return LimitResult(allowed=allowed, retry_after=0.0 if allowed else round(retry, 3),
                           remaining=remaining, reset=reset)

    async def budget_acquire(self, specs: list[BudgetSpec]) -> list[int] | None:
        now = self.clock()
        current = [self._budgets[s.key][1] if s.key in self._budgets and self._budgets[s.key][0] > now else 0
                   for s in specs]
        if any(c + s.cost > s.limit for c, s in zip(current, specs, strict=True)):
            return None
        for c, s in zip(current, specs, strict=True):
            self._budgets[s.key] = (now + s.ttl, c + s.cost)
        return [c + s.cost for c, s in zip(current, specs, strict=True)]

    async def budget_adjust(self, key: str, delta: int, ttl: float) -> None:
        now = self.clock()
        exp, cur = self._budgets.get(key, (now + ttl, 0))
        self._budgets[key] = (max(exp, now + ttl) if exp > now else now + ttl, (cur if exp > now else 0) + delta)

    async def budget_spent(self, keys: list[str]) -> list[int]:
        now = self.clock()
        return [self._budgets[k][1] if k in self._budgets and self._budgets[k][0] > now else 0 for k in keys]

    async def limit_adjust(self, key: str, limit: int, delta: int) -> None:
        now = self.clock()
        new = max(self._tat.get(key, now), now) + delta * PERIOD / limit
        if new <= now:
            self._tat.pop(key, None)
        else:
            self._tat[key] = new

    # -- cache and locks -------------------------------------------------------------------
    async def cache_get(self, key: str) -> bytes | None:
        hit = self._cache.get(key)
        if hit is None:
            return None
        if hit[0] <= self.clock():
            del self._cache[key]
            return None
        return hit[1]

    async def cache_set(self, key: str, value: bytes, ttl: float) -> None:
        now = self.clock()
        if len(self._cache) >= self.max_entries:  # bound memory: drop the expired, then the oldest
            for k in [k for k, (exp, _) in self._cache.items() if exp <= now]:
                del self._cache[k]
            while len(self._cache) >= self.max_entries:
                del self._cache[next(iter(self._cache))]
        self._cache.pop(key, None)
        self._cache[key] = (now + ttl, value)

    async def cache_get_or_lock(self, key: str, ttl: float) -> tuple[bytes | None, bool]:
        hit = await self.cache_get(key)
        if hit is not None:
            return hit, False
        return None, await self.lock(key, ttl)

    async def cache_set_unlock(self, key: str, value: bytes, ttl: float) -> None:
        await self.cache_set(key, value, ttl)
        await self.unlock(key)

    async def lock(self, key: str, ttl: float) -> bool:
        now = self.clock()
        if self._locks.get(key, 0.0) > now:
            return False
        self._locks[key] = now + ttl
        return True

    async def unlock(self, key: str) -> None:
        self._locks.pop(key, None)

    # -- outcomes --------------------------------------------------------------------------
    async def stats_add(self, key: str, fields: dict[str, float], ttl: float | None = None) -> None:
        self._expire_stats(key)
        d = self._stats.setdefault(key, {})
        for f, v in fields.items():
            d[f] = d.get(f, 0.0) + v
        if ttl is not None:
            now = self.clock()
            self._stats_expiry[key] = now + ttl
            if now - self._stats_pruned >= 60:  # drop what has expired, once a minute at most
                self._stats_pruned = now
                for k in [k for k, exp in self._stats_expiry.items() if exp <= now]:
                    self._expire_stats(k)

    def _expire_stats(self, key: str) -> None:
        exp = self._stats_expiry.get(key)
        if exp is not None and exp <= self.clock():
            del self._stats_expiry[key]
            self._stats.pop(key, None)

    async def stats_get(self, key: str) -> dict[str, float]:
        self._expire_stats(key)
        return dict(self._stats.get(key, {}))

    async def stats_get_many(self, keys: list[str]) -> list[dict[str, float]]:
        return [await self.stats_get(k) for k in keys]

    async def kv_set(self, key: str, value: bytes, ttl: float) -> None:
        now = self.clock()
        if len(self._kv) >= self.max_entries:
            for k in [k for k, (exp, _) in self._kv.items() if exp <= now] or [next(iter(self._kv))]:
                del self._kv[k]
        self._kv[key] = (now + ttl, value)

    async def kv_get(self, key: str) -> bytes | None:
        hit = self._kv.get(key)
        return hit[1] if hit is not None and hit[0] > self.clock() else None

    async def log_push(self, key: str, values: list[bytes], keep: int) -> None:
        log = self._logs.get(key)
        if log is None or log.maxlen != keep:
            log = self._logs[key] = deque(log or (), maxlen=keep)
        log.extendleft(values)

    async def log_get(self, key: str, n: int) -> list[bytes]:
        return list(self._logs.get(key, ()))[:n]

    async def admit(self, ask: AdmitAsk) -> AdmitAnswer:
        return await admit_in_steps(self, ask)  # no step yields: atomic

    async def write_many(self, writes: list[Write]) -> None:
        await writes_one_by_one(self, writes)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
