"""Shared state behind one interface (``base.Store``): in-memory for one process, Redis for many.

The store holds what every replica must agree on: target health (circuit breakers) now; rate
limits and the response cache next.
"""

from router.stores.base import BreakerState, Store
from router.stores.memory import MemoryStore

__all__ = ["BreakerState", "MemoryStore", "Store"]
