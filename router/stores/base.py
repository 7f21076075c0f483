"""The store interface. Times are seconds on the wall clock (``time.time()``), shared by replicas."""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from router.config import Cooldown

__all__ = ["Admission", "BreakerState", "Store"]

Admission = Literal["closed", "probe", "open"]


class BreakerState(msgspec.Struct):
    """A target's circuit: ``closed`` (in use), ``open`` (skipped until ``open_until``) or
    ``half_open`` (cooldown over; one probe request decides). ``trips`` counts trips in a row;
    ``failures`` the retryable failures in a row within the window."""

    state: str = "closed"
    failures: int = 0
    trips: int = 0
    open_until: float | None = None


class Store(Protocol):
    """What the router keeps outside one request. Every method is atomic per key."""

    kind: str

    async def breaker_admit(self, key: str, now: float, probe_lease: float) -> Admission:
        """May a request go to target ``key``? ``probe`` means: yes, as the one half-open probe
        (no other gets through for ``probe_lease`` seconds unless it reports back)."""
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

    async def ping(self) -> bool:
        """Whether the store answers."""
        ...
