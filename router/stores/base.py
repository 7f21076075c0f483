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
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import msgspec

from router.policy import EffectiveCooldown as Cooldown

T = TypeVar("T")

__all__ = [
    "PERIOD",
    "SETTLEMENT",
    "STORE_BUDGET",
    "Admission",
    "AdmitAnswer",
    "AdmitAsk",
    "BreakerState",
    "BudgetSpec",
    "LimitResult",
    "LimitSpec",
    "Settlement",
    "Store",
    "StoreBudget",
    "StoreError",
    "Write",
    "admit_in_steps",
    "background",
    "new_store_budget",
    "write",
    "writes_one_by_one",
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
    ctx.run(SETTLEMENT.set, None)
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


ALLOWED = LimitResult(allowed=True, retry_after=0.0, remaining=[], reset=[])  # no limiter asked


class AdmitAsk(NamedTuple):
    """What a request asks of the store before it starts, in one step (one round trip on Redis):

    1. charge the caller's ``limits`` (all or none; one hash tag);
    2. then reserve its ``budgets`` (all or none; the limits given back when one would go over);
    3. then, admitted, look ``cache_key`` up, locking it for ``cache_lock`` seconds on a miss
       (``Store.cache_get_or_lock``);
    4. then, when the cache missed and this request holds the lock (or no cache was asked),
       charge the first target's ``target_limits`` and ``target_budgets`` (all or none), so a
       request that goes upstream needs no store call before it.

    Each step runs only when the ones before it succeeded."""

    limits: list[LimitSpec]
    budgets: list[BudgetSpec]
    cache_key: str | None = None
    cache_lock: float = 0.0
    target_limits: list[LimitSpec] | None = None
    target_budgets: list[BudgetSpec] | None = None


class AdmitAnswer(msgspec.Struct):
    """The store's answer to an ``AdmitAsk``, step by step; a step not reached is None.

    ``limits``: the caller's (not allowed: nothing was done). ``budgets``: the counters after the
    reservation (``[]`` when none was asked), None when one would go over (nothing charged).
    ``cache``: ``(entry, locked)`` as ``Store.cache_get_or_lock`` returns it. ``target``: the
    target's limits (not allowed: nothing of the target charged); ``target_budgets`` as
    ``budgets``, for the target."""

    limits: LimitResult
    budgets: list[int] | None = None
    cache: tuple[bytes | None, bool] | None = None
    target: LimitResult | None = None
    target_budgets: list[int] | None = None


class Write(NamedTuple):
    """One store write that can wait for the request's end (``Settlement``): ``op``, the name of
    the ``Store`` method (``limit_adjust``, ``budget_adjust``, ``cache_set_unlock`` or ``unlock``),
    and its ``args``."""

    op: Literal["limit_adjust", "budget_adjust", "cache_set_unlock", "unlock"]
    args: tuple[Any, ...]


class Settlement:
    """The store writes of one request that wait for its end, then go in one ``Store.write_many``
    (one round trip on Redis): the TPM and spend settlements of served tickets and the cache
    entry of a leader. ``after`` callbacks run once the writes are done (or failed). Opened by
    the caller's admission (``router.limits.Admission``) for the request's task and the tasks it
    starts; refunds of unserved tickets do not wait (other requests need them now)."""

    __slots__ = ("after", "open", "writes")

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.after: list[Callable[[], None]] = []
        self.open = True

    async def flush(self, store: Store) -> None:
        """Close the settlement and send its writes; the ``after`` callbacks run in any case. A
        ``StoreError`` is given up, as the settlements it carried: a TPM difference until its
        limiter's minute drains, a spend difference (the estimate stays counted) until its
        budget's period ends, a cache entry not stored (its lock expires)."""
        self.open = False
        writes, after = self.writes, self.after
        self.writes, self.after = [], []
        try:
            if writes:
                await store.write_many(writes)
        except StoreError:
            pass
        finally:
            for fn in after:
                fn()


# The current request's settlement (set by its admission; None: every write goes at once).
SETTLEMENT: ContextVar[Settlement | None] = ContextVar("settlement", default=None)


async def write(store: Store, writes: list[Write], after: Callable[[], None] | None = None) -> None:
    """``writes`` now (one ``write_many``), or, while the current request's ``Settlement`` is
    open, at its end with its other writes; ``after`` runs once they are done. Raises
    ``StoreError`` only when written now."""
    s = SETTLEMENT.get()
    if s is not None and s.open:
        s.writes += writes
        if after is not None:
            s.after.append(after)
        return
    try:
        if writes:
            await store.write_many(writes)
    finally:
        if after is not None:
            after()


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

    async def admit(self, ask: AdmitAsk) -> AdmitAnswer:
        """The steps of ``ask``, in order, each only when the ones before it succeeded (one
        script on one Redis; ``admit_in_steps`` elsewhere)."""
        ...

    async def write_many(self, writes: list[Write]) -> None:
        """Each write, in order, in one round trip (each one atomic; not all together)."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers."""
        ...

    async def close(self) -> None:
        ...


async def admit_in_steps(store: Store, ask: AdmitAsk) -> AdmitAnswer:
    """``Store.admit`` as one store call per step (the memory store, whose calls never yield, so
    the whole is atomic; a Redis Cluster, whose keys of one ask lie in several slots). A store
    failure after the first step gives back what was charged (as far as the store answers) and
    raises ``StoreError``."""
    lim = await store.limit_acquire(ask.limits) if ask.limits else ALLOWED
    if not lim.allowed:
        return AdmitAnswer(limits=lim)
    undo: list[Write] = [Write("limit_adjust", (s.key, s.limit, -s.cost)) for s in ask.limits]
    try:
        budgets: list[int] | None = []
        if ask.budgets:
            budgets = await store.budget_acquire(ask.budgets)
            if budgets is None:
                await store.write_many(undo)
                return AdmitAnswer(limits=lim, budgets=None)
            undo += [Write("budget_adjust", (b.key, -b.cost, b.ttl)) for b in ask.budgets]
        cache: tuple[bytes | None, bool] | None = None
        if ask.cache_key is not None:
            cache = await store.cache_get_or_lock(ask.cache_key, ask.cache_lock)
            if cache[0] is not None or not cache[1]:
                return AdmitAnswer(limits=lim, budgets=budgets, cache=cache)
            undo.append(Write("unlock", (ask.cache_key,)))
        if not ask.target_limits and not ask.target_budgets:
            return AdmitAnswer(limits=lim, budgets=budgets, cache=cache)
        target = await store.limit_acquire(ask.target_limits) if ask.target_limits else ALLOWED
        tb: list[int] | None = []
        if target.allowed and ask.target_budgets:
            back = [Write("limit_adjust", (s.key, s.limit, -s.cost)) for s in ask.target_limits or ()]
            undo += back
            tb = await store.budget_acquire(ask.target_budgets)
            if tb is None and back:
                await store.write_many(back)
        return AdmitAnswer(limits=lim, budgets=budgets, cache=cache, target=target, target_budgets=tb)
    except StoreError:
        try:
            await store.write_many(undo)
        except StoreError:
            pass
        raise


async def writes_one_by_one(store: Store, writes: list[Write]) -> None:
    """``Store.write_many`` as one call per write: each is tried, also after one failed; raises
    ``StoreError`` after the last when any failed."""
    failed: StoreError | None = None
    for w in writes:
        try:
            await getattr(store, w.op)(*w.args)
        except StoreError as e:
            failed = e
    if failed is not None:
        raise failed
