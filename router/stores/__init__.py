"""Shared state behind one interface (``base.Store``): in-memory for one process, Redis for many.

The store holds what every replica must agree on: target health (circuit breakers), rate limits
and the response cache. ``store_for(settings)`` picks Redis when ``settings.redis_url`` is set.
"""

from __future__ import annotations

from router.settings import Settings
from router.stores.base import (
    BreakerState,
    BudgetSpec,
    LimitResult,
    LimitSpec,
    Store,
    StoreError,
)
from router.stores.memory import MemoryStore

__all__ = ["BreakerState", "BudgetSpec", "LimitResult", "LimitSpec", "MemoryStore", "Store", "StoreError", "store_for"]


def store_for(settings: Settings) -> Store:
    """``RedisStore`` for ``settings.redis_url`` (keys under ``redis_prefix``; each call bounded
    by ``redis_timeout`` seconds), else a ``MemoryStore``."""
    if not settings.redis_url:
        return MemoryStore()
    from router.stores.redis import RedisStore

    return RedisStore(settings.redis_url, prefix=settings.redis_prefix, timeout=settings.redis_timeout)
