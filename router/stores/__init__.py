"""Shared state behind one interface (``base.Store``): in-memory for one process, Redis for many.

The store holds what every replica must agree on: target health (circuit breakers), rate limits
and the response cache. ``store_from_env()`` picks Redis when ``REDIS_URL`` is set.
"""

from __future__ import annotations

import os

from router.stores.base import BreakerState, LimitResult, LimitSpec, Store, StoreError
from router.stores.memory import MemoryStore

__all__ = ["BreakerState", "LimitResult", "LimitSpec", "MemoryStore", "Store", "StoreError", "store_from_env"]


def store_from_env() -> Store:
    """``RedisStore`` for ``REDIS_URL`` (keys under ``REDIS_PREFIX``, default ``llmr``; each call
    bounded by ``REDIS_TIMEOUT_MS``, default 50), else a ``MemoryStore``."""
    url = os.environ.get("REDIS_URL")
    if not url:
        return MemoryStore()
    from router.stores.redis import RedisStore

    return RedisStore(url, prefix=os.environ.get("REDIS_PREFIX", "llmr"),
                      timeout=float(os.environ.get("REDIS_TIMEOUT_MS", "50")) / 1000)
