"""Rate limits: per caller (RPM and TPM, global and per task) and per provider and model (the
upstream quota every replica shares), kept in the store (GCRA, see ``router.stores.base``).

TPM is charged at admission with an estimate (prompt estimate + ``max_tokens``) and settled when
the answer ends: the difference with the real usage is refunded or charged; a request that was
not served (every target failed, or it was refused) gets its whole charge back, RPM included, so
no slot is counted without an answer. When the store fails, ``on_store_error`` decides: ``allow``
lets the request through uncounted, ``deny`` refuses it with 429.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from router.config import Limits, RoutingConfig
from router.errors import RateLimited, RequestError
from router.stores import LimitResult, LimitSpec, Store, StoreError

__all__ = ["DEFAULT_MAX_TOKENS_ESTIMATE", "Admission", "Held", "Limiter", "Ticket", "caller_id"]

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

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-Limit/Remaining/Reset`` of the tightest RPM limiter, and the ``-Tokens``
        variants of the tightest TPM limiter (Reset in seconds)."""
        if self.result is None or not self.result.allowed:
            return {}
        return _headers(self.specs, self.result)


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
    """The caller's admission for a block (``Limiter.caller``): charged on entry, settled on exit."""

    __slots__ = ("args", "limiter", "ticket")

    def __init__(self, limiter: Limiter, *args: Any) -> None:
        self.limiter, self.args = limiter, args
        self.ticket: Ticket | None = None

    async def __aenter__(self) -> Ticket:
        self.ticket = await self.limiter.admit_caller(*self.args)
        return self.ticket

    async def __aexit__(self, *exc: object) -> None:
        if self.ticket is not None:
            await self.limiter.settle(self.ticket, self.ticket.used, self.ticket.served)


def _specs(prefix: str, limits: Limits | None, cost: int) -> list[LimitSpec]:
    out = []
    if limits is not None and limits.rpm:
        out.append(LimitSpec(prefix + ":rpm", limits.rpm, 1))
    if limits is not None and limits.tpm:
        out.append(LimitSpec(prefix + ":tpm", limits.tpm, cost))
    return out


class Limiter:
    """Admits and settles requests against the limits of one ``RoutingConfig``."""

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

    async def admit_caller(self, caller: str, task: str, estimate: int, own: Limits | None = None) -> Ticket:
        """Charge the caller's limits; raises ``RateLimited`` (429, Retry-After) when over one."""
        specs = self.caller_specs(caller, task, estimate, own)
        got = await self._acquire(specs, estimate)
        if isinstance(got, LimitResult):
            if not got.remaining:
                raise RateLimited("the rate-limit store is unavailable and on_store_error is deny",
                                  retry_after=got.retry_after, headers={})
            too_big = [s for s in specs if s.cost > s.limit]
            msg = (f"this request needs ~{estimate} tokens; the limit is {too_big[0].limit} per minute"
                   if too_big else f"caller {caller!r} is over its rate limit")
            raise RateLimited(msg, retry_after=got.retry_after, headers=_headers(specs, got), never=bool(too_big))
        return got

    async def admit_target(self, provider: str, model: str, estimate: int, background: bool = False) -> Ticket | float:
        """Charge a target's upstream quota (``background``: within the queue's paced share);
        returns the ticket, or the seconds until it would fit."""
        got = await self._acquire(self.target_specs(provider, model, estimate, background), estimate)
        return got.retry_after if isinstance(got, LimitResult) else got

    def fits_target(self, provider: str, model: str, estimate: int) -> bool:
        """Whether a request of ``estimate`` tokens could ever fit the target's quotas (its TPM)."""
        return all(s.cost <= s.limit for s in self.target_specs(provider, model, estimate))

    def quota(self, ticket: Ticket) -> Held:
        """Hold ``ticket`` for an ``async with`` block; settled exactly once when it ends,
        however it ends, from the ticket's ``used`` and ``served``."""
        return Held(self, ticket)

    def caller(self, caller: str, task: str, estimate: int, own: Limits | None = None) -> Admission:
        """``async with``: charge the caller's limits on entry (raises ``RateLimited``), settle on
        exit; the block gets the ``Ticket``."""
        return Admission(self, caller, task, estimate, own)

    async def settle(self, ticket: Ticket, used_tokens: int | None, served: bool) -> None:
        """Refund an unserved request whole; for a served one, charge or refund the difference
        between ``used_tokens`` and the estimate (``None``: keep the estimate). Idempotent."""
        if ticket.settled or not ticket.specs:
            ticket.settled = True
            return
        ticket.settled = True
        try:
            for spec in ticket.specs:
                if not served:
                    await self.store.limit_adjust(spec.key, spec.limit, -spec.cost)
                elif spec.key.endswith(":tpm") and used_tokens is not None and used_tokens != spec.cost:
                    await self.store.limit_adjust(spec.key, spec.limit, used_tokens - spec.cost)
        except StoreError:
            return

    def describe(self) -> dict[str, Any]:
        """The configured limits, for ``/v1/routes``."""
        return {"per_caller": self._global, "tasks": {k: v for k, v in self._tasks.items() if v},
                "providers": {k: v for k, v in self._providers.items() if v},
                "models": {f"{p}/{m}": v for (p, m), v in self._models.items() if v},
                "on_store_error": self.config.on_store_error}
