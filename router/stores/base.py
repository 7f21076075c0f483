"""The store interface: state every replica must agree on (circuit breakers, rate limits, the
response cache). ``MemoryStore`` serves one process; ``RedisStore`` any number, with the same
semantics. Times are seconds on the wall clock (epoch); the Redis store's limits use Redis's clock.

Rate limits use GCRA (the generic cell rate algorithm) over a 60-second period: a limit of L per
minute admits a burst of exactly L units from a full bucket, then one unit every 60/L seconds.
Each key stores one number, its theoretical arrival time (TAT). A request of cost c is admitted
when ``max(TAT, now) + c * 60/L - now <= 60``; the TAT then advances by ``c * 60/L``. Refunds
move it back (never before now). Several keys are checked and charged all-or-nothing, atomically.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from contextvars import ContextVar
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import msgspec

from router.policy import EffectiveCooldown as Cooldown

T = TypeVar("T")

__all__ = [
    "PERIOD",
    "STORE_BUDGET",
    "Admission",
    "BreakerState",
    "BudgetSpec",
    "LimitResult",
    "LimitSpec",
    "Store",
    "StoreBudget",
    "StoreError",
    "background",
    "new_store_budget",
]


class StoreBudget:
    """The seconds one request has lost to store calls that timed out. A store with a per-call
    timeout lets all of one request's calls share it: once a request has waited that long (a
    frozen Redis), its further calls fail at once with ``StoreError`` and the ``on_store_error``
    policy applies, so a frozen store costs a request one timeout, not one per call."""

    __slots__ = ("spent",)

    def __init__(self) -> None:
        self.spent = 0.0


# The current request's budget (set by the door when a request begins; tasks it starts share it).
STORE_BUDGET: ContextVar[StoreBudget | None] = ContextVar("store_budget", default=None)


def new_store_budget() -> StoreBudget:
    """Begin a request: a fresh budget for this task's store calls (and the tasks it starts)."""
    budget = StoreBudget()
    STORE_BUDGET.set(budget)
    return budget


def background(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task that is no request's: it keeps the current context but no ``StoreBudget`` (the
    ledger's flusher, outcome writes, shadow calls must not spend, or be starved by, the budget
    of the request that happened to start them)."""
    ctx = contextvars.copy_context()
    ctx.run(STORE_BUDGET.set, None)
    return asyncio.get_running_loop().create_task(coro, context=ctx)

Admission = Literal["closed", "failing", "probe", "open"]
PERIOD = 60.0  # seconds: limits are per minute


class StoreError(Exception):
    """The store did not answer in time or failed; callers degrade (see ``on_store_error``)."""


class BreakerState(msgspec.Struct):
    """A target's circuit: ``closed`` (in use), ``open`` (skipped until ``open_until``) or
    ``half_open`` (cooldown over; one probe request decides). ``trips`` counts trips in a row;
    ``failures`` the retryable failures in a row within the window."""

    state: str = "closed"
    failures: int = 0
    trips: int = 0
    open_until: float | None = None


class LimitSpec(NamedTuple):
    """One limiter: ``key`` (namespaced), ``limit`` units per minute, this request's ``cost``.

    ``paced``: admitted only once the bucket has drained to now (GCRA with no burst: requests at
    least ``cost * 60 / limit`` seconds apart, so no 60-second window ever holds more than
    ``limit`` units); otherwise a whole minute's ``limit`` may arrive at once (a token bucket of
    ``limit`` refilled over the minute, as Anthropic describes its own limits)."""

    key: str
    limit: int
    cost: int
    paced: bool = False


class BudgetSpec(NamedTuple):
    """One spend budget for one period: ``key`` (the scope and the period, ``tenant:x:d:2026-12-01``),
    ``limit`` and this request's ``cost`` in micro-USD (1e-6 USD), ``ttl`` seconds the counter
    lives (past the period's end)."""

    key: str
    limit: int
    cost: int
    ttl: float


class LimitResult(msgspec.Struct):
    """``allowed``; ``retry_after`` seconds until the request would fit (0 when allowed);
    per spec, ``remaining`` units now and ``reset`` seconds until the bucket is full again."""

    allowed: bool
    retry_after: float
    remaining: list[int]
    reset: list[float]


class Store(Protocol):
    """What the router keeps outside one request. Every method is atomic; each raises
    ``StoreError`` when the store fails."""

    kind: str

    async def breaker_admit(self, key: str, now: float, probe_lease: float) -> Admission:
        """May a request go to target ``key``? ``closed``: yes; ``failing``: yes, and failures are
        being counted (report a success, it resets the count); ``probe``: yes, as the one
        half-open probe (no other gets through for ``probe_lease`` seconds unless it reports
        back: success, failure or ``breaker_release``); ``open``: no."""
        ...

    async def breaker_hold(self, key: str, now: float, until: float) -> None:
        """Open the circuit of ``key`` until ``until`` (epoch seconds) at least: its provider said
        when it will serve again (a spent quota's reset)."""
        ...

    async def breaker_release(self, key: str) -> None:
        """A probe ended neither in a success nor in a counted failure (a non-retryable error,
        the caller left): give up its lease so the next request probes."""
        ...

    async def breaker_success(self, key: str) -> None:
        """The target answered: close its circuit."""
        ...

    async def breaker_failure(self, key: str, now: float, cfg: Cooldown) -> bool:
        """A retryable failure; returns True when this one tripped (opened) the circuit. ``cfg`` is
        complete (merged over the defaults)."""
        ...

    async def breaker_states(self, keys: list[str], now: float) -> dict[str, BreakerState]:
        """The circuits of ``keys`` (closed ones included)."""
        ...

    async def limit_acquire(self, specs: list[LimitSpec]) -> LimitResult:
        """Charge every spec's cost, or none when any would go over its limit. Specs passed
        together must share a hash tag (one Redis Cluster slot)."""
        ...

    async def limit_adjust(self, key: str, limit: int, delta: int) -> None:
        """Charge ``delta`` more units (negative: refund) without an admission check."""
        ...

    async def budget_acquire(self, specs: list[BudgetSpec]) -> list[int] | None:
        """Reserve every spec's cost, or none when any would take its counter past its limit:
        the counters after the reservation (micro-USD), or None."""
        ...

    async def budget_adjust(self, key: str, delta: int, ttl: float) -> None:
        """Add ``delta`` micro-USD (negative: give back) to a budget counter."""
        ...

    async def budget_spent(self, keys: list[str]) -> list[int]:
        """The counters of ``keys`` (micro-USD; 0 for an unknown one)."""
        ...

    async def cache_get(self, key: str) -> bytes | None:
        """A cached entry, or None."""
        ...

    async def cache_set(self, key: str, value: bytes, ttl: float) -> None:
        """Store an entry for ``ttl`` seconds (written whole, never partly)."""
        ...

    async def cache_get_or_lock(self, key: str, ttl: float) -> tuple[bytes | None, bool]:
        """One step: the entry if there is one (``(entry, False)``); else take the key's lock for
        ``ttl`` seconds, ``(None, True)``, or ``(None, False)`` when someone else holds it."""
        ...

    async def cache_set_unlock(self, key: str, value: bytes, ttl: float) -> None:
        """One step: ``cache_set`` and release the key's lock (a leader's answer)."""
        ...

    async def lock(self, key: str, ttl: float) -> bool:
        """Take a lock that expires after ``ttl`` seconds; False if someone holds it."""
        ...

    async def unlock(self, key: str) -> None:
        ...

    async def stats_add(self, key: str, fields: dict[str, float], ttl: float | None = None) -> None:
        """Add to counters (created at 0) under ``key``, atomically; with ``ttl``, ``key`` expires
        ``ttl`` seconds after this write (else it lives until deleted)."""
        ...

    async def stats_get(self, key: str) -> dict[str, float]:
        """Every counter under ``key`` ({} when none)."""
        ...

    async def stats_get_many(self, keys: list[str]) -> list[dict[str, float]]:
        """``stats_get`` of each of ``keys``, in order, in one round trip (keys in any slots)."""
        ...

    async def kv_set(self, key: str, value: bytes, ttl: float) -> None:
        """A value that expires after ``ttl`` seconds."""
        ...

    async def kv_get(self, key: str) -> bytes | None:
        ...

    async def log_push(self, key: str, values: list[bytes], keep: int) -> None:
        """Append ``values`` (the last is the newest) to a list that keeps only the newest
        ``keep`` entries, atomically."""
        ...

    async def log_get(self, key: str, n: int) -> list[bytes]:
        """The newest ``n`` entries, newest first."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers."""
        ...

    async def close(self) -> None:
        ...
