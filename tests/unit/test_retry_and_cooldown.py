"""The retry policy and the circuit breaker, pure: fake sleep, explicit clock."""

from __future__ import annotations

import asyncio

import pytest

from router.config import DEFAULT_COOLDOWN
from router.errors import UpstreamError, UpstreamHTTPError
from router.policy import EffectiveCooldown, EffectiveRetry
from router.retry import RetryBudget, Tried, first_event
from router.stores import MemoryStore


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


class Script:
    """An ``open_`` that fails with the given errors, then returns ``"ok"``."""

    def __init__(self, *errors: UpstreamError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def err(status: int, retryable: bool = True, retry_after: float | None = None) -> UpstreamHTTPError:
    return UpstreamHTTPError("x", code=str(status), retryable=retryable, upstream_status=status,
                             retry_after=retry_after)


POLICY = EffectiveRetry(attempts=3, initial_wait=0.5, max_wait=10, max_total_wait=30)


def result(tried: Tried[str]) -> tuple[str, int]:
    """(value, retries) of a success; raises the error of a failure."""
    if tried.error is not None:
        raise tried.error
    assert tried.value is not None
    return tried.value, tried.retries


def test_success_after_retries_with_growing_waits() -> None:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    script = Script(err(503), err(503))
    assert result(run(first_event(script, POLICY, RetryBudget(), sleep))) == ("ok", 2)
    assert script.calls == 3 and len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 1.5  # 0.5 * 2^n plus up to 0.5 jitter


def test_gives_up_after_attempts_and_reports_retries() -> None:
    async def sleep(s: float) -> None:
        pass

    script = Script(err(503), err(502), err(500))
    tried = run(first_event(script, POLICY, RetryBudget(), sleep))
    assert tried.error is not None and tried.value is None
    assert tried.error.code == "500" and tried.retries == 2 and script.calls == 3


def test_non_retryable_is_raised_at_once() -> None:
    async def sleep(s: float) -> None:  # pragma: no cover - must not be called
        raise AssertionError("slept")

    script = Script(err(400, retryable=False))
    with pytest.raises(UpstreamHTTPError):
        result(run(first_event(script, POLICY, RetryBudget(), sleep)))
    assert script.calls == 1


def test_retry_after_is_a_floor_and_over_max_wait_gives_up() -> None:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    assert result(run(first_event(Script(err(429, retry_after=7)), POLICY, RetryBudget(), sleep)))[0] == "ok"
    assert sleeps == [7]
    script = Script(err(429, retry_after=11))
    with pytest.raises(UpstreamHTTPError):
        result(run(first_event(script, POLICY, RetryBudget(), sleep)))
    assert script.calls == 1 and sleeps == [7]


def test_budget_is_shared_across_calls() -> None:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    budget = RetryBudget()
    tight = EffectiveRetry(attempts=5, initial_wait=0, max_wait=10, max_total_wait=10)
    result(run(first_event(Script(err(429, retry_after=6)), tight, budget, sleep)))
    with pytest.raises(UpstreamHTTPError):  # 6 spent; another 6 would pass 10
        result(run(first_event(Script(err(429, retry_after=6)), tight, budget, sleep)))
    assert sleeps == [6] and budget.spent == 6


def test_a_tripped_circuit_stops_the_retries() -> None:
    async def sleep(s: float) -> None:  # pragma: no cover
        raise AssertionError("slept")

    heard: list[str] = []

    async def on_failure(e: UpstreamError) -> bool:
        heard.append(e.code)
        return True  # the circuit opened

    script = Script(err(503))
    tried = run(first_event(script, POLICY, RetryBudget(), sleep, on_failure))
    assert tried.error is not None and tried.error.code == "503" and tried.retries == 0
    assert script.calls == 1 and heard == ["503"]


def test_on_failure_hears_every_retryable_failure_only() -> None:
    async def sleep(s: float) -> None:
        pass

    heard: list[str] = []

    async def on_failure(e: UpstreamError) -> bool:
        heard.append(e.code)
        return False

    assert result(run(first_event(Script(err(503), err(502)), POLICY, RetryBudget(), sleep, on_failure))) == ("ok", 2)
    assert heard == ["503", "502"]
    tried = run(first_event(Script(err(400, retryable=False)), POLICY, RetryBudget(), sleep, on_failure))
    assert tried.error is not None and heard == ["503", "502"]


CFG = EffectiveCooldown(failures=3, window=30, duration=10, max_duration=25, backoff=2)


def test_breaker_trips_after_n_failures_within_the_window() -> None:
    async def go() -> None:
        s = MemoryStore()
        assert [await s.breaker_failure("t", t, CFG) for t in (0, 1)] == [False, False]
        assert await s.breaker_admit("t", 2, 5) == "failing"
        assert await s.breaker_failure("t", 2, CFG) is True
        assert await s.breaker_admit("t", 5, 5) == "open"
        assert (await s.breaker_states(["t"], 5))["t"].state == "open"
        # half-open after 10 s: exactly one probe
        assert await s.breaker_admit("t", 12.5, 5) == "probe"
        assert await s.breaker_admit("t", 12.6, 5) == "open"
        assert await s.breaker_admit("t", 18, 5) == "probe"  # the first probe's lease ran out
        assert await s.breaker_failure("t", 18, CFG) is True  # failed probe: 20 s now (backoff 2)
        assert await s.breaker_admit("t", 37, 5) == "open"
        assert await s.breaker_admit("t", 38.5, 5) == "probe"
        assert await s.breaker_failure("t", 38.5, CFG) is True  # 40 s capped at 25
        assert (await s.breaker_states(["t"], 39))["t"].open_until == 63.5
        await s.breaker_success("t")
        assert await s.breaker_admit("t", 40, 5) == "closed"

    run(go())


def test_breaker_window_expires_old_failures() -> None:
    async def go() -> None:
        s = MemoryStore()
        await s.breaker_failure("t", 0, CFG)
        await s.breaker_failure("t", 1, CFG)
        assert await s.breaker_failure("t", 40, CFG) is False  # the first two fell out of the window
        assert (await s.breaker_states(["t"], 40))["t"].failures == 1
        await s.breaker_success("t")
        assert (await s.breaker_states(["t"], 40))["t"].failures == 0

    run(go())


def test_default_cooldown_is_complete() -> None:
    assert None not in (DEFAULT_COOLDOWN.failures, DEFAULT_COOLDOWN.window, DEFAULT_COOLDOWN.duration,
                        DEFAULT_COOLDOWN.max_duration, DEFAULT_COOLDOWN.backoff)
    assert DEFAULT_COOLDOWN.backoff == 1  # a failed probe re-opens for `duration`: no growth unless asked


def test_a_closed_verdict_is_reused_briefly_and_forgotten_on_a_local_failure() -> None:
    """The router trusts a store's "closed" for CLOSED_REUSE_SECONDS of its clock (one store round
    trip saved per request); a failure here forgets it at once."""
    from router.circuits import CLOSED_REUSE_SECONDS, Circuits

    class Counting(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.admits = 0

        async def breaker_admit(self, key, now, probe_lease):  # type: ignore[no-untyped-def]
            self.admits += 1
            return await super().breaker_admit(key, now, probe_lease)

    t = [100.0]
    store = Counting()
    circuits = Circuits(store, clock=lambda: t[0], wall=lambda: 1_800_000_000.0)
    cfg = EffectiveCooldown(failures=1, window=60, duration=30, max_duration=300)

    async def go() -> list[object]:
        out: list[object] = [await circuits.admit("p/m", 60), await circuits.admit("p/m", 60), store.admits]
        t[0] += CLOSED_REUSE_SECONDS + 0.01
        out += [await circuits.admit("p/m", 60), store.admits]
        out.append(await circuits.failure("p/m", cfg))  # trips (failures: 1)
        out += [await circuits.admit("p/m", 60), store.admits]
        return out

    assert run(go()) == ["closed", "closed", 1, "closed", 2, True, "open", 3]
