"""The router's time: one injectable object for every deadline, wait and timestamp.

``LoopClock`` is the real one: ``now`` monotonic seconds, ``wall`` epoch seconds (cooldowns
shared across replicas), ``sleep`` a real wait, ``call_at`` a loop timer.
``FakeClock`` is the in-process test double: its time moves only when a test advances it, or, with
``autojump``, whenever every task is waiting on it, so a 600-second timeout takes no real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "FakeClock", "LoopClock", "Timer"]


class Timer(Protocol):
    """A scheduled callback; ``cancel`` it to stop it firing."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Seconds everywhere. ``now``: monotonic; ``wall``: epoch; ``call_at(when, fn)`` runs ``fn``
    at ``now() >= when``; ``sleep`` waits."""

    def now(self) -> float: ...

    def wall(self) -> float: ...

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """Real time: ``now`` is ``time.monotonic()`` (not the loop's clock: uvloop's ``loop.time()``
    moves in whole milliseconds, too coarse for TTFT and overhead), timers are the running loop's
    (``call_later`` by the time left, so the two clocks never need to agree)."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(when - time.monotonic(), fn)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _FakeTimer:
    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Time that moves only when told. ``advance(seconds)`` runs the timers that come due, in
    order. ``autojump()`` (an async context manager's worth of work in one task) moves time to the
    next timer whenever the loop has nothing else to do, like trio's ``MockClock(autojump_threshold=0)``.
    ``wall`` is ``wall_start`` plus the time advanced. ``sleeps`` lists every ``sleep`` asked."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._touched = 0  # calls of now/call_at/sleep: a sign that someone is still working
        self._wall0 = wall_start - start
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._order = itertools.count()
        self.sleeps: list[float] = []

    def now(self) -> float:
        self._touched += 1
        return self._now

    def wall(self) -> float:
        return self._wall0 + self._now

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        self._touched += 1
        timer = _FakeTimer(when, fn)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self.call_at(self._now + max(0.0, seconds), wake)
        try:
            await fut
        finally:
            timer.cancel()

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, firing every timer due by then."""
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.fn()
        self._now = target

    def next_timer(self) -> float | None:
        """When the earliest live timer fires, or None."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    async def autojump(self, idle_turns: int = 200, quiet_seconds: float = 0.005) -> None:
        """Run forever (cancel the task to stop): once nobody has touched the clock for
        ``idle_turns`` loop turns and ``quiet_seconds`` of real time, jump to the next timer.
        asyncio has no public "the loop is idle" signal, so this is a heuristic: the router reads
        the clock at every upstream event, and the real-time floor covers I/O in flight (a test's
        real Redis answers in well under 5 ms); a stretch of work longer than that which never
        reads the clock could see time jump early."""
        while True:
            seen, quiet, since = self._touched, 0, time.monotonic()
            while quiet < idle_turns or time.monotonic() - since < quiet_seconds:
                await asyncio.sleep(0)
                if self._touched != seen:
                    seen, quiet, since = self._touched, 0, time.monotonic()
                else:
                    quiet += 1
            when = self.next_timer()
            if when is not None:
                self.advance(max(0.0, when - self._now))
