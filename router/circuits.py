"""The router's side of the circuit breakers: the shared state lives in the store (one breaker per
target, shared by every replica); this wraps the store's three operations for the engine, keeps a
short local memory of healthy verdicts, and turns a failing store into "no shared health"."""

from __future__ import annotations

from collections.abc import Callable

from router.policy import EffectiveCooldown as Cooldown
from router.stores import Store, StoreError

__all__ = ["CLOSED_REUSE_SECONDS", "Circuits"]

CLOSED_REUSE_SECONDS = 0.25  # how long a "closed" verdict from the store is reused


class Circuits:
    """Admission, failures and successes of the targets' breakers in ``store``.

    ``clock``: monotonic seconds (the local reuse of verdicts); ``wall``: epoch seconds (the store's
    shared cooldown times). A ``closed`` verdict is reused for ``CLOSED_REUSE_SECONDS``, which saves
    a store round trip per request on a healthy target; a failure here forgets it at once, and a
    circuit tripped by another replica is seen at most that much later. Never raises
    ``StoreError``: without the store every target counts as healthy.
    """

    def __init__(self, store: Store, clock: Callable[[], float], wall: Callable[[], float]) -> None:
        self.store, self.clock, self.wall = store, clock, wall
        self._closed_until: dict[str, float] = {}  # target -> clock() until which "closed" is reused

    async def admit(self, key: str, lease: float) -> str:
        """``closed``, ``failing`` (closed, failures counted: a success must be reported),
        ``open`` or ``probe`` (this request holds the half-open lease for ``lease`` seconds, until
        it reports a success or a failure, or ``release``s it)."""
        now = self.clock()
        if self._closed_until.get(key, 0.0) > now:
            return "closed"
        try:
            verdict = await self.store.breaker_admit(key, self.wall(), lease)
        except StoreError:
            return "closed"  # no shared health without the store: try the target
        if verdict == "closed":
            self._closed_until[key] = now + CLOSED_REUSE_SECONDS
        return verdict

    async def failure(self, key: str, cfg: Cooldown) -> bool:
        """Count a retryable failure; True when it trips the circuit."""
        self._closed_until.pop(key, None)
        try:
            return await self.store.breaker_failure(key, self.wall(), cfg)
        except StoreError:
            return False

    async def success(self, key: str) -> None:
        """Close the circuit and reset its failure count (after a probe, or a success following
        failures)."""
        try:
            await self.store.breaker_success(key)
        except StoreError:
            pass

    async def reopens_in(self, key: str) -> float | None:
        """Seconds until an open circuit lets a probe through (0 when one could go now but
        another request holds the probe); None when unknown (the store failed)."""
        try:
            state = (await self.store.breaker_states([key], self.wall()))[key]
        except StoreError:
            return None
        return max(0.0, state.open_until - self.wall()) if state.open_until else None

    async def hold(self, key: str, seconds: float) -> None:
        """Keep the target out of use for ``seconds`` (its provider said when it serves again)."""
        self._closed_until.pop(key, None)
        try:
            now = self.wall()
            await self.store.breaker_hold(key, now, now + seconds)
        except StoreError:
            pass

    async def release(self, key: str) -> None:
        """A probe is over without a verdict (a non-retryable error, the caller left): the next
        request may probe at once."""
        try:
            await self.store.breaker_release(key)
        except StoreError:
            pass
