"""The retry policy: the one module that imports tenacity.

``first_event(open_, policy, budget, sleep)`` retries "send and wait for the first event" of one
target. Only ``UpstreamError``s with ``retryable`` set are retried (the adapters classify: connect
errors, timeouts before the first event, 408/429/5xx/529, Z.ai 1302/1305 yes; 400/401/403/404/413,
Z.ai 1113/1261 no). Waits are exponential with jitter, but never shorter than the Retry-After the
upstream asked for (read afresh from each failed attempt). When the wait asked for exceeds
``max_wait``, or would take the request past ``max_total_wait``, the target is given up at once so
the caller can fall back instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from router.config import Retry
from router.errors import UpstreamError

__all__ = ["RetryBudget", "first_event"]

T = TypeVar("T")


class RetryBudget:
    """The seconds one request has waited so far, across all its targets. A wait must fit under
    the ``max_total_wait`` of the target about to be retried."""

    __slots__ = ("spent",)

    def __init__(self) -> None:
        self.spent = 0.0


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and exc.retryable and not exc.stop_retrying


async def first_event(open_: Callable[[], Awaitable[T]], policy: Retry, budget: RetryBudget,
                      sleep: Callable[[float], Awaitable[Any]],
                      on_retry: Callable[[UpstreamError, float], None] | None = None) -> tuple[T, int]:
    """Run ``open_`` until it succeeds or the policy gives up; returns (its result, retries made).

    ``policy`` must be complete (merged over the defaults). Raises the last ``UpstreamError``.
    ``on_retry(error, wait_seconds)`` is called before each wait.
    """
    assert policy.attempts is not None and policy.max_wait is not None
    try:  # the common case, a first try that works, never builds the retry machinery
        return await open_(), 0
    except UpstreamError as e:
        if not _retryable(e) or policy.attempts <= 1:
            raise
        failed: list[UpstreamError] = [e]

    async def replayed() -> T:  # tenacity's first attempt is the failure that already happened
        if failed:
            raise failed.pop()
        return await open_()

    backoff = wait_exponential_jitter(multiplier=policy.initial_wait or 0, max=policy.max_wait,
                                      jitter=policy.initial_wait or 0)
    max_wait = policy.max_wait

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after", None) or 0.0
        return max(float(backoff(state)) if asked <= max_wait else 0.0, asked)

    def stop(state: RetryCallState) -> bool:
        upcoming = state.upcoming_sleep
        return (state.attempt_number >= (policy.attempts or 1) or upcoming > max_wait
                or budget.spent + upcoming > (policy.max_total_wait or 0))

    def before_sleep(state: RetryCallState) -> None:
        budget.spent += state.upcoming_sleep
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if isinstance(exc, UpstreamError):
                on_retry(exc, state.upcoming_sleep)

    retrying = AsyncRetrying(retry=retry_if_exception(_retryable), wait=wait, stop=stop,
                             before_sleep=before_sleep, sleep=sleep, reraise=True)
    result: T
    try:
        async for attempt in retrying:
            with attempt:
                result = await replayed()
    except UpstreamError as e:
        e.retries = retrying.statistics.get("attempt_number", 1) - 1
        raise
    return result, retrying.statistics.get("attempt_number", 1) - 1
