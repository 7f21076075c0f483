"""Rate limits: per caller (RPM and TPM, global and per task) and per provider and model (the
upstream quota every replica shares), kept in the store (GCRA, see ``router.stores.base``).

TPM is charged at admission with an estimate (prompt estimate + ``max_tokens``) and settled when
the answer ends: the difference with the real usage is refunded or charged; a request that was
not served (every target failed, or it was refused) gets its whole charge back, RPM included, so
no slot is counted without an answer. When the store fails, ``on_store_error`` decides: ``allow``
lets the request through uncounted, ``deny`` refuses it with 429.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import msgspec

from router.config import Budget, Limits, RoutingConfig
from router.errors import BudgetExceeded, RateLimited, RequestError
from router.stores import BudgetSpec, LimitResult, LimitSpec, Store, StoreError
from router.stores.base import (
    SETTLEMENT,
    AdmitAnswer,
    AdmitAsk,
    Settlement,
    Write,
    write,
)

log = logging.getLogger("llm_router")

__all__ = ["DEFAULT_MAX_TOKENS_ESTIMATE", "Admission", "FirstTarget", "Held", "Limiter", "Ticket", "caller_id"]

DEFAULT_MAX_TOKENS_ESTIMATE = 4096  # tokens charged for the answer when the request sets no max_tokens
_CALLER = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def caller_id(header: str | None, client_host: str | None) -> str:
    """The caller: the ``X-Caller`` header, else the client address. Raises ``RequestError`` for a
    header that is not 1-128 characters of ``A-Za-z0-9._:@/+=-``."""
    if header is not None:
        if not _CALLER.fullmatch(header):
            raise RequestError("X-Caller must be 1-128 characters of A-Za-z0-9._:@/+=-", "headers.x-caller")
        return header
    return client_host or "unknown"


class Ticket(msgspec.Struct):
    """What one admission charged, to settle later: ``specs`` (RPM cost 1, TPM cost the
    estimate), the ``result`` for the rate-limit headers, and whether it is settled. Whoever
    holds it (``Limiter.quota``/``Limiter.caller``) sets ``served`` (the request was answered, or
    upstream did work) and ``used`` (tokens reported; None keeps the estimate) before it settles."""

    specs: list[LimitSpec]
    estimate: int
    result: LimitResult | None = None
    settled: bool = False
    served: bool = False
    used: int | None = None
    budgets: list[BudgetSpec] = []  # the spend reserved (micro-USD), settled with ``cost``
    cost: float | None = None  # USD the request really cost (None keeps the reservation)
    budget_left: float | None = None  # USD left in the tightest budget after the reservation
    # asked with the caller's admission (one store round trip): the cache lookup's
    # ``(entry, locked)`` and the first target's admission (what ``Limiter.admit_target`` returns),
    # each None when not asked; whoever uses one takes it (sets it to None)
    looked: tuple[bytes | None, bool] | None = None
    looked_key: str | None = None  # the cache key ``looked`` is for
    first: Ticket | float | OverBudget | None = None

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-Limit/Remaining/Reset`` of the tightest RPM limiter, the ``-Tokens``
        variants of the tightest TPM limiter (Reset in seconds), and
        ``X-LLM-Router-Budget-Remaining-USD`` when a budget applies."""
        out = {} if self.result is None or not self.result.allowed else _headers(self.specs, self.result)
        if self.budget_left is not None:
            out["x-llm-router-budget-remaining-usd"] = f"{self.budget_left:.6f}"
        return out


def _headers(specs: list[LimitSpec], result: LimitResult) -> dict[str, str]:
    out: dict[str, str] = {}
    for suffix, kind in (("", ":rpm"), ("-Tokens", ":tpm")):
        rows = [(rem, spec.limit, reset) for spec, rem, reset in zip(specs, result.remaining, result.reset, strict=True)
                if spec.key.endswith(kind)]
        if rows:
            rem, limit, reset = min(rows)
            out[f"X-RateLimit-Limit{suffix}"] = str(limit)
            out[f"X-RateLimit-Remaining{suffix}"] = str(rem)
            out[f"X-RateLimit-Reset{suffix}"] = str(math.ceil(reset))
    return out


class Held:
    """A ticket held for a block (``Limiter.quota``): settled once, on exit."""

    __slots__ = ("limiter", "ticket")

    def __init__(self, limiter: Limiter, ticket: Ticket) -> None:
        self.limiter, self.ticket = limiter, ticket

    async def __aenter__(self) -> Ticket:
        return self.ticket

    async def __aexit__(self, *exc: object) -> None:
        await self.limiter.settle(self.ticket, self.ticket.used, self.ticket.served)


class Admission:
    """The caller's admission for a block (``Limiter.caller``): charged on entry (with the cache
    lookup and the first target's quota when asked, one store round trip), settled on exit. The
    block's ``Settlement`` collects the writes that can wait (the served tickets' settlements,
    the cache entry) and sends them in one round trip when the block ends."""

    __slots__ = ("args", "kwargs", "limiter", "settlement", "ticket", "token")

    def __init__(self, limiter: Limiter, *args: Any, **kwargs: Any) -> None:
        self.limiter, self.args, self.kwargs = limiter, args, kwargs
        self.ticket: Ticket | None = None
        self.settlement = Settlement()
        self.token: Any = None

    async def __aenter__(self) -> Ticket:
        self.ticket = await self.limiter.admit_caller(*self.args, **self.kwargs)
        self.token = SETTLEMENT.set(self.settlement)
        return self.ticket

    async def __aexit__(self, *exc: object) -> None:
        t = self.ticket
        try:
            if t is not None:
                if t.first is not None or t.looked is not None:
                    await self.limiter.unused(t)
                await self.limiter.settle(t, t.used, t.served)
        finally:
            await self.settlement.flush(self.limiter.store)
            try:
                SETTLEMENT.reset(self.token)
            except ValueError:  # ended in another context than it began (the settlement is closed anyway)
                pass


def _specs(prefix: str, limits: Limits | None, cost: int) -> list[LimitSpec]:
    out = []
    if limits is not None and limits.rpm:
        out.append(LimitSpec(prefix + ":rpm", limits.rpm, 1))
    if limits is not None and limits.tpm:
        out.append(LimitSpec(prefix + ":tpm", limits.tpm, cost))
    return out


class OverBudget(msgspec.Struct, frozen=True):
    """A target's provider spent its budget; ``retry_after`` seconds until the period ends."""

    retry_after: float


class FirstTarget(msgspec.Struct, frozen=True):
    """The first target of a chain, admitted with the caller (``Limiter.admit_caller``):
    ``provider``, ``model``, ``background`` (within its queue's paced share) and ``cost_usd``
    (the request's estimated cost there, for the provider's budget)."""

    provider: str
    model: str
    background: bool = False
    cost_usd: float = 0.0


def micro(usd: float) -> int:
    """USD as whole micro-USD, rounded up (a reservation never under-counts)."""
    return math.ceil(usd * 1e6 - 1e-9)


def _period_ends(now: float) -> tuple[str, float, str, float]:
    """(day id, seconds to the day's end, month id, seconds to the month's end), UTC."""
    t = time.gmtime(now)
    day_end = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86400
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    month_end = calendar.timegm((year, month, 1, 0, 0, 0))
    return time.strftime("%Y-%m-%d", t), day_end - now, time.strftime("%Y-%m", t), month_end - now


class Limiter:
    """Admits and settles requests against the limits and budgets of one ``RoutingConfig``.

    Budgets (USD per UTC day and month, on tenants, tasks and providers) use the same ticket
    discipline as TPM: a request reserves its estimated cost at admission (all its budgets or
    none, in one store script) and is settled with its real cost when it ends (refunded whole
    when nothing was served). Spend can pass a budget only by what requests in flight cost beyond
    their estimates."""

    def __init__(self, config: RoutingConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.deny_on_error = config.on_store_error == "deny"
        self._global = config.limits.per_caller
        self._tasks = {name: t.limits for name, t in config.tasks.items()}
        self._providers = {name: p.limits for name, p in config.providers.items()}
        self._models = {(p, m): spec.limits for p, prov in config.providers.items()
                        for m, spec in prov.models.items()}
        self._shares = {name: p.queue_share for name, p in config.providers.items()}
        self._limited = {p for p, limits in self._providers.items() if limits and (limits.rpm or limits.tpm)}
        self._limited |= {p for (p, _), limits in self._models.items() if limits and (limits.rpm or limits.tpm)}
        self.on_alert: Callable[[str], None] | None = None  # a budget crossed its alert_at ("<scope> daily|monthly")
        self._budgets: dict[str, Budget] = {
            **{f"tenant:{n}": t.budget for n, t in config.tenants.items() if t.budget},
            **{f"task:{n}": t.budget for n, t in config.tasks.items() if t.budget},
            **{f"provider:{n}": p.budget for n, p in config.providers.items() if p.budget}}
        self._limited |= {n for n, p in config.providers.items() if p.budget}

    def limits_target(self, provider: str) -> bool:
        """Whether a call to ``provider`` is charged anything: a quota (its own or a model's) or
        a budget."""
        return provider in self._limited

    def budget_specs(self, scopes: list[str], cost_usd: float, now: float | None = None) -> list[tuple[BudgetSpec, float, str]]:
        """(spec, seconds to its period's end, "<scope> daily|monthly") of each budget of ``scopes``
        (``tenant:<name>``, ``task:<name>``, ``provider:<name>``) for a request of ``cost_usd``."""
        day, day_left, month, month_left = _period_ends(time.time() if now is None else now)
        out = []
        for scope in scopes:
            b = self._budgets.get(scope)
            if b is None:
                continue
            if b.daily_usd:
                out.append((BudgetSpec(f"{scope}:d:{day}", micro(b.daily_usd), micro(cost_usd), day_left + 86400),
                            day_left, f"{scope} daily"))
            if b.monthly_usd:
                out.append((BudgetSpec(f"{scope}:m:{month}", micro(b.monthly_usd), micro(cost_usd), month_left + 86400),
                            month_left, f"{scope} monthly"))
        return out

    def _budgets_of(self, scopes: list[str], cost_usd: float) -> list[tuple[BudgetSpec, float, str]]:
        return self.budget_specs(scopes, cost_usd) if self._budgets else []

    async def _over(self, found: list[tuple[BudgetSpec, float, str]]) -> float:
        """Seconds until the period of the budget that would go over ends (the longest when
        several would, or when the store cannot tell)."""
        specs = [s for s, _, _ in found]
        try:
            spent = await self.store.budget_spent([s.key for s in specs])
        except StoreError:
            spent = [s.limit for s in specs]
        over = [left for (s, left, _), v in zip(found, spent, strict=True) if v + s.cost > s.limit]
        return max(over or [left for _, left, _ in found])

    def _reserved(self, ticket: Ticket, found: list[tuple[BudgetSpec, float, str]], after: list[int]) -> None:
        """``ticket`` holds the reservation of ``found`` (counters ``after`` it); a budget that
        crossed its ``alert_at`` is logged and reported."""
        specs = [s for s, _, _ in found]
        ticket.budgets = specs
        ticket.budget_left = min((s.limit - a) / 1e6 for s, a in zip(specs, after, strict=True))
        for (s, _, name), a in zip(found, after, strict=True):
            alert = self._budgets[name.rsplit(" ", 1)[0]].alert_at
            if a >= alert * s.limit > a - s.cost:
                log.warning("budget %s: %.0f%% spent (USD %.4f of %.2f)", name, 100 * a / s.limit, a / 1e6, s.limit / 1e6)
                if self.on_alert is not None:
                    self.on_alert(name)

    async def _reserve(self, ticket: Ticket, scopes: list[str], cost_usd: float) -> float | None:
        """Reserve ``cost_usd`` on every budget of ``scopes`` into ``ticket``; the seconds until
        the exhausted period ends when one would go over (nothing reserved then), else None."""
        found = self.budget_specs(scopes, cost_usd)
        if not found:
            return None
        try:
            after = await self.store.budget_acquire([s for s, _, _ in found])
        except StoreError:
            if self.deny_on_error:
                return 60.0
            return None
        if after is None:
            return await self._over(found)
        self._reserved(ticket, found, after)
        return None

    async def spend(self, now: float | None = None) -> dict[str, Any]:
        """Each budget's limit and what was spent in the current day and month (USD), for
        ``/v1/routes`` and ``/v1/usage``; raises ``StoreError``."""
        out: dict[str, Any] = {}
        for scope, b in self._budgets.items():
            found = self.budget_specs([scope], 0.0, now)
            spent = await self.store.budget_spent([s.key for s, _, _ in found])
            out[scope] = {name.rsplit(" ", 1)[1]: {"limit_usd": s.limit / 1e6, "spent_usd": round(v / 1e6, 6),
                                                   "resets_in_s": round(left)}
                          for (s, left, name), v in zip(found, spent, strict=True)}
            out[scope]["alert_at"] = b.alert_at
        return out

    def caller_specs(self, caller: str, task: str, estimate: int, own: Limits | None = None) -> list[LimitSpec]:
        """The caller's limiters for ``task`` (one hash tag: ``{c:<caller>}``): its ``own``
        limits (a tenant's) or the global per-caller ones, and the task's."""
        tag = "{c:" + caller + "}"
        return (_specs(tag, own or self._global, estimate)
                + _specs(f"{tag}:t:{task}", self._tasks.get(task), estimate))

    def target_specs(self, provider: str, model: str, estimate: int, background: bool = False) -> list[LimitSpec]:
        """The provider's and the model's limiters (one hash tag: ``{p:<provider>}``). For
        ``background`` work (async tasks) also each one's paced share (``queue_share`` of the
        limit, no burst, on its own ``:bg`` key): the shared bucket still counts it, so
        interactive requests see what the queue used and keep the rest."""
        tag = "{p:" + provider + "}"
        own = [(tag, self._providers.get(provider)), (f"{tag}:m:{model}", self._models.get((provider, model)))]
        specs = [s for prefix, limits in own for s in _specs(prefix, limits, estimate)]
        if background:
            share = self._shares.get(provider, 1.0)
            for prefix, limits in own:
                for s in _specs(prefix + ":bg", limits, estimate):
                    specs.append(LimitSpec(s.key, max(1, int(s.limit * share)), s.cost, paced=True))
        return specs

    async def _acquire(self, specs: list[LimitSpec], estimate: int) -> Ticket | LimitResult:
        if not specs:
            return Ticket(specs=[], estimate=estimate)
        try:
            result = await self.store.limit_acquire(specs)
        except StoreError:
            if self.deny_on_error:
                return LimitResult(allowed=False, retry_after=1.0, remaining=[], reset=[])
            return Ticket(specs=[], estimate=estimate)
        if not result.allowed:
            return result
        return Ticket(specs=specs, estimate=estimate, result=result)

    async def admit_caller(self, caller: str, task: str, estimate: int, own: Limits | None = None,
                           tenant: str | None = None, cost_usd: float = 0.0, *, cache: tuple[str, float] | None = None,
                           first: FirstTarget | None = None) -> Ticket:
        """Charge the caller's limits and reserve ``cost_usd`` (the estimate) on the tenant's and
        the task's budgets; raises ``RateLimited`` (429, Retry-After) when over a limit, and
        ``BudgetExceeded`` (429 ``budget_exceeded``, Retry-After until the period ends) when a
        budget would go over (nothing charged then).

        In the same store round trip (``Store.admit``), once admitted: ``cache`` (key, lock
        seconds) is looked up into ``ticket.looked``, and, when the cache missed and this
        request leads (or no cache was asked), the ``first`` target's quota and budget are
        charged into ``ticket.first``. A failing store asks nothing more (``on_store_error``)."""
        specs = self.caller_specs(caller, task, estimate, own)
        scopes = [*([f"tenant:{tenant}"] if tenant else []), f"task:{task}"]
        found = self._budgets_of(scopes, cost_usd)
        t_specs: list[LimitSpec] = []
        t_found: list[tuple[BudgetSpec, float, str]] = []
        if first is not None:
            t_specs = self.target_specs(first.provider, first.model, estimate, first.background)
            if f"provider:{first.provider}" in self._budgets:
                t_found = self._budgets_of([f"provider:{first.provider}"], first.cost_usd)
        ask_first = bool(t_specs or t_found)
        if not specs and not found and cache is None and not ask_first:
            return Ticket(specs=[], estimate=estimate)
        ask = AdmitAsk(specs, [b for b, _, _ in found], cache[0] if cache else None, cache[1] if cache else 0.0,
                       t_specs if ask_first else None, [b for b, _, _ in t_found] if ask_first else None)
        try:
            got: AdmitAnswer = await self.store.admit(ask)
        except StoreError:
            if self.deny_on_error:
                raise RateLimited("the rate-limit store is unavailable and on_store_error is deny",
                                  retry_after=1.0, headers={}) from None
            return Ticket(specs=[], estimate=estimate)  # uncounted; the cache and the target ask again
        if not got.limits.allowed:
            too_big = [s for s in specs if s.cost > s.limit]
            msg = (f"this request needs ~{estimate} tokens; the limit is {too_big[0].limit} per minute"
                   if too_big else f"caller {caller!r} is over its rate limit")
            raise RateLimited(msg, retry_after=got.limits.retry_after, headers=_headers(specs, got.limits),
                              never=bool(too_big))
        if found and got.budgets is None:  # nothing was charged
            raise BudgetExceeded(f"the budget of {' or '.join(scopes)} is spent until its period ends",
                                 retry_after=await self._over(found), headers={})
        ticket = Ticket(specs=specs, estimate=estimate, result=got.limits if specs else None,
                        looked=got.cache, looked_key=ask.cache_key)
        try:
            if found and got.budgets is not None:
                self._reserved(ticket, found, got.budgets)
            if got.target is not None:  # (its only wait, over its budget, follows no charge of it)
                ticket.first = await self._target_ticket(t_specs, t_found, got.target, got.target_budgets, estimate)
        except BaseException:  # cancelled or failed after the store charged the caller: give it all back
            ticket.budgets = ticket.budgets or [b for b, _, _ in found]
            await asyncio.shield(self._give_back(ticket))
            raise
        return ticket

    async def _give_back(self, ticket: Ticket) -> None:
        await self.unused(ticket)
        await self.settle(ticket, None, served=False)

    async def unused(self, ticket: Ticket) -> None:
        """Give back what ``ticket``'s admission asked for and nobody used: the first target's
        quota, the cache lock (``looked`` still holding it)."""
        first, ticket.first = ticket.first, None
        if isinstance(first, Ticket):
            await self.settle(first, None, served=False)
        looked, ticket.looked = ticket.looked, None
        if looked is not None and looked[1] and ticket.looked_key is not None:
            try:
                await self.store.unlock(ticket.looked_key)
            except StoreError:
                pass

    async def _target_ticket(self, specs: list[LimitSpec], found: list[tuple[BudgetSpec, float, str]],
                             limits: LimitResult, budgets: list[int] | None, estimate: int) -> Ticket | float | OverBudget:
        if not limits.allowed:
            return limits.retry_after
        if budgets is None:
            return OverBudget(await self._over(found))
        ticket = Ticket(specs=specs, estimate=estimate, result=limits if specs else None)
        if found:
            self._reserved(ticket, found, budgets)
        return ticket

    async def admit_target(self, provider: str, model: str, estimate: int, background: bool = False,
                           cost_usd: float = 0.0) -> Ticket | float | OverBudget:
        """Charge a target's upstream quota (``background``: within the queue's paced share) and
        reserve ``cost_usd`` on its provider's budget; returns the ticket, the seconds until the
        quota would fit, or ``OverBudget`` (the quota given back)."""
        got = await self._acquire(self.target_specs(provider, model, estimate, background), estimate)
        if isinstance(got, LimitResult):
            return got.retry_after
        if self._budgets and f"provider:{provider}" in self._budgets:
            wait = await self._reserve(got, [f"provider:{provider}"], cost_usd)
            if wait is not None:
                await self.settle(got, None, served=False)
                return OverBudget(wait)
        return got

    def fits_target(self, provider: str, model: str, estimate: int) -> bool:
        """Whether a request of ``estimate`` tokens could ever fit the target's quotas (its TPM)."""
        return all(s.cost <= s.limit for s in self.target_specs(provider, model, estimate))

    def quota(self, ticket: Ticket) -> Held:
        """Hold ``ticket`` for an ``async with`` block; settled exactly once when it ends,
        however it ends, from the ticket's ``used`` and ``served``."""
        return Held(self, ticket)

    def caller(self, caller: str, task: str, estimate: int, own: Limits | None = None,
               tenant: str | None = None, cost_usd: float = 0.0, *, cache: tuple[str, float] | None = None,
               first: FirstTarget | None = None) -> Admission:
        """``async with``: charge the caller's limits and budgets on entry (raises
        ``RateLimited``/``BudgetExceeded``; ``cache`` and ``first`` as ``admit_caller``), settle
        on exit; the block gets the ``Ticket``."""
        return Admission(self, caller, task, estimate, own, tenant, cost_usd, cache=cache, first=first)

    async def settle(self, ticket: Ticket, used_tokens: int | None, served: bool) -> None:
        """Refund an unserved request whole (at once: other requests need it back now); for a
        served one, charge or refund the difference between ``used_tokens`` and the estimate
        (``None``: keep the estimate) and the spend's difference from its reservation, at the
        request's end with its other writes (``router.stores.base.write``). Idempotent."""
        if ticket.settled:
            return
        ticket.settled = True
        writes: list[Write] = []
        for b in ticket.budgets:
            delta = -b.cost if not served else (micro(ticket.cost) - b.cost if ticket.cost is not None else 0)
            if delta:
                writes.append(Write("budget_adjust", (b.key, delta, b.ttl)))
        for spec in ticket.specs:
            if not served:
                writes.append(Write("limit_adjust", (spec.key, spec.limit, -spec.cost)))
            elif spec.key.endswith(":tpm") and used_tokens is not None and used_tokens != spec.cost:
                writes.append(Write("limit_adjust", (spec.key, spec.limit, used_tokens - spec.cost)))
        if not writes:
            return
        try:
            if served:
                await write(self.store, writes)
            else:
                await self.store.write_many(writes)
        except StoreError:
            return

    async def in_use(self) -> dict[str, dict[str, dict[str, int]]]:
        """What each provider's and model's quota and each tenant's own limits have in use now:
        ``{"provider:glm": {"rpm": {"limit": 300, "used": 12}, "tpm": {...}}, "model:glm/x": ...,
        "tenant:billing": ...}``, read by charging nothing (a cost-0 admission, one store call per
        hash tag). Raises ``StoreError``."""
        groups: dict[str, list[LimitSpec]] = {}
        for name, limits in self._providers.items():
            groups[f"provider:{name}"] = _specs("{p:" + name + "}", limits, 0)
        for (p, m), limits in self._models.items():
            groups[f"model:{p}/{m}"] = _specs("{p:" + p + "}" + f":m:{m}", limits, 0)
        for name, t in self.config.tenants.items():
            groups[f"tenant:{name}"] = _specs("{c:" + name + "}", t.limits or self._global, 0)
        out: dict[str, dict[str, dict[str, int]]] = {}
        for scope, specs in groups.items():
            if not specs:
                continue
            got = await self.store.limit_acquire([s._replace(cost=0) for s in specs])
            out[scope] = {s.key.rsplit(":", 1)[1]: {"limit": s.limit, "used": max(0, s.limit - rem)}
                          for s, rem in zip(specs, got.remaining, strict=True)}
        return out

    def describe(self) -> dict[str, Any]:
        """The configured limits, for ``/v1/routes``."""
        return {"per_caller": self._global, "tasks": {k: v for k, v in self._tasks.items() if v},
                "providers": {k: v for k, v in self._providers.items() if v},
                "models": {f"{p}/{m}": v for (p, m), v in self._models.items() if v},
                "on_store_error": self.config.on_store_error}
