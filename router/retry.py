"""The retry policy: the one module that imports tenacity.

``first_event(open_, policy, budget, sleep, on_failure)`` retries "send and wait for the first
event" of one target and returns what happened as a ``Tried``: the result or the last error, and
the retries made. Only ``UpstreamError``s with ``retryable`` set are retried (the adapters
classify: connect errors, timeouts before the first event, 408/429/5xx/529, Z.ai 1302/1305 yes;
400/401/403/404/413, Z.ai 1113/1261 no). ``on_failure(error)`` hears of every retryable failure
(the circuit breaker counts it) and answers whether trying again is pointless (the circuit opened).
A *silent* target (``SILENT``: no connection within ``connect``, no first event within
``first_token``, nothing before ``total``) is not tried again: waiting on it once more would hold
the caller another full timeout, so the walk moves on to the next target at once (the failure
still counts toward its cooldown).
Waits are exponential with jitter, but never shorter than the Retry-After the upstream asked for
(read afresh from each failed attempt). When the wait asked for exceeds ``max_wait``, or would take
the request past ``max_total_wait``, the target is given up at once so the caller can fall back
instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)

from router.errors import UpstreamError
from router.policy import EffectiveRetry

__all__ = ["SILENT", "RetryBudget", "Tried", "first_event"]

T = TypeVar("T")

SILENT = frozenset({"connect_timeout", "first_token_timeout", "total_timeout"})


class RetryBudget:
    """The seconds one request has waited so far, across all its targets. A wait must fit under
    the ``max_total_wait`` of the target about to be retried."""

    __slots__ = ("spent",)

    def __init__(self) -> None:
        self.spent = 0.0


class Tried(Generic[T]):
    """The outcome of ``first_event``: ``value`` (on success) or ``error`` (the last failure),
    and ``retries`` made (tries - 1)."""

    __slots__ = ("error", "retries", "value")

    def __init__(self, value: T | None, error: UpstreamError | None, retries: int) -> None:
        self.value, self.error, self.retries = value, error, retries


class _Final(Exception):
    """Internal: a retryable failure after which the target's circuit opened (not retried)."""

    def __init__(self, error: UpstreamError) -> None:
        self.error = error


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and exc.retryable and exc.code not in SILENT


async def first_event(open_: Callable[[], Awaitable[T]], policy: EffectiveRetry, budget: RetryBudget,
                      sleep: Callable[[float], Awaitable[Any]],
                      on_failure: Callable[[UpstreamError], Awaitable[bool]] | None = None) -> Tried[T]:
    """Run ``open_`` until it succeeds or the policy gives up. Raises only what is not an
    ``UpstreamError`` (cancellation)."""

    async def attempt() -> T:
        try:
            return await open_()
        except UpstreamError as e:
            if e.retryable and on_failure is not None and await on_failure(e):
                raise _Final(e) from None
            raise

    try:  # the common case, a first try that works, never builds the retry machinery
        return Tried(await attempt(), None, 0)
    except _Final as f:
        return Tried(None, f.error, 0)
    except UpstreamError as e:
        if not _retryable(e) or policy.attempts <= 1:
            return Tried(None, e, 0)
        failed: list[UpstreamError] = [e]

    async def replayed() -> T:  # tenacity's first attempt is the failure that already happened
        if failed:
            raise failed.pop()
        return await attempt()

    backoff = wait_exponential_jitter(multiplier=policy.initial_wait, max=policy.max_wait,
                                      jitter=policy.initial_wait)
    max_wait = policy.max_wait

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after", None) or 0.0
        return max(float(backoff(state)) if asked <= max_wait else 0.0, asked)

    def stop(state: RetryCallState) -> bool:
        upcoming = state.upcoming_sleep
        return (state.attempt_number >= policy.attempts or upcoming > max_wait
                or budget.spent + upcoming > policy.max_total_wait)

    def before_sleep(state: RetryCallState) -> None:
        budget.spent += state.upcoming_sleep

    retrying = AsyncRetrying(retry=retry_if_exception(_retryable), wait=wait, stop=stop,
                             before_sleep=before_sleep, sleep=sleep, reraise=True)
    try:
        async for try_ in retrying:
            with try_:
                result = await replayed()
    except _Final as f:
        return Tried(None, f.error, retrying.statistics.get("attempt_number", 1) - 1)
    except UpstreamError as e:
        return Tried(None, e, retrying.statistics.get("attempt_number", 1) - 1)
    return Tried(result, None, retrying.statistics.get("attempt_number", 1) - 1)
