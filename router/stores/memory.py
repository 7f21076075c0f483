"""The in-memory store: one process's state, with the same semantics as the Redis store."""

from __future__ import annotations

from router.config import Cooldown
from router.stores.base import Admission, BreakerState

__all__ = ["MemoryStore"]


class _Breaker:
    __slots__ = ("failures", "first_failure", "trips", "open_until", "probe_until")

    def __init__(self) -> None:
        self.failures = 0
        self.first_failure = 0.0
        self.trips = 0
        self.open_until = 0.0
        self.probe_until = 0.0


class MemoryStore:
    """Dict-backed ``Store`` for a single process (the default when no Redis is configured)."""

    kind = "memory"

    def __init__(self) -> None:
        self._breakers: dict[str, _Breaker] = {}

    async def breaker_admit(self, key: str, now: float, probe_lease: float) -> Admission:
        b = self._breakers.get(key)
        if b is None or not b.open_until:
            return "closed"
        if now < b.open_until or now < b.probe_until:
            return "open"
        b.probe_until = now + probe_lease
        return "probe"

    async def breaker_success(self, key: str) -> None:
        self._breakers.pop(key, None)

    async def breaker_failure(self, key: str, now: float, cfg: Cooldown) -> bool:
        assert cfg.failures and cfg.window and cfg.duration and cfg.max_duration
        b = self._breakers.setdefault(key, _Breaker())
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
        b.open_until = now + min(cfg.max_duration, cfg.duration * 2 ** (b.trips - 1))
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

    async def ping(self) -> bool:
        return True
