"""Trying targets until one gives its first event, with at most one hedge.

A ``Try`` is one target being tried (with its retries) until its first event: its quota ticket
(settled exactly once, by ``Chain``'s close), its circuit admission, and, when it runs beside
another, the task doing it. ``race(primary, ...)`` runs the primary's try; when the target's
policy says ``hedge: {after: S}`` and the primary has produced nothing after S seconds on the
clock, ``start_hedge()`` starts the next usable target as well, and the first of the two to give
an event wins (the primary on a tie). The loser is the caller's to cancel and settle. Without a
hedge policy nothing runs in a task: the common path costs what it did.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from router.clock import Clock
from router.events import Event
from router.policy import Policy
from router.retry import Tried
from router.upstream import CallFacts, Target

__all__ = ["First", "Try", "race"]

First = Tried[tuple[Event, AsyncGenerator[Event, None]]]


class Try:
    """Target ``index`` of the chain, tried from ``t0`` (clock seconds): ``ticket`` its quota,
    ``admission`` its circuit's verdict (``closed``, ``failing``, ``probe``), ``tried`` the
    outcome once known, ``task`` when it runs beside a hedge, ``hedge`` whether it is the hedge."""

    __slots__ = ("admission", "closed", "facts", "hedge", "index", "policy", "t0", "target", "task", "ticket", "tried")

    def __init__(self, index: int, target: Target, policy: Policy, ticket: Any, admission: str, t0: float,
                 hedge: bool = False) -> None:
        self.index, self.target, self.policy, self.ticket, self.admission = index, target, policy, ticket, admission
        self.t0, self.hedge = t0, hedge
        self.tried: First | None = None
        self.task: asyncio.Task[First] | None = None
        self.closed = False
        self.facts = CallFacts()  # what its upstream call reported besides events

    @property
    def won(self) -> bool:
        """It gave its first event."""
        return self.tried is not None and self.tried.value is not None


async def _within(task: asyncio.Task[Any], seconds: float, clock: Clock) -> bool:
    """Wait for ``task`` at most ``seconds`` on ``clock``; whether it finished."""
    loop = asyncio.get_running_loop()
    timer: asyncio.Future[None] = loop.create_future()
    def ring() -> None:
        if not timer.done():
            timer.set_result(None)

    handle = clock.call_at(clock.now() + seconds, ring)
    try:
        await asyncio.wait([task, timer], return_when=asyncio.FIRST_COMPLETED)
    finally:
        handle.cancel()
        timer.cancel()
    return task.done()


async def race(tries: list[Try], first: Callable[[Try], Awaitable[First]], clock: Clock, *, may_hedge: bool,
               start_hedge: Callable[[], Awaitable[Try | None]]) -> Try | None:
    """The try that gave a first event (None when every one failed). ``tries`` holds the primary
    and is the caller's: a hedge is appended as soon as it starts, so the caller closes every try
    however this ends (cancellation included). ``first(try)`` sends with retries until the first
    event; ``start_hedge()`` admits the next usable target (None when there is none). Raises what
    ``first`` raises besides its outcome (cancellation)."""
    primary = tries[0]
    after = primary.policy.hedge_after
    if after is None or not may_hedge:
        primary.tried = await first(primary)
        return primary if primary.won else None
    primary.task = asyncio.ensure_future(first(primary))
    if not await _within(primary.task, after, clock):
        hedge = await start_hedge()
        if hedge is not None:
            hedge.task = asyncio.ensure_future(first(hedge))
            tries.append(hedge)
    pending = list(tries)
    while pending:
        tasks = [t.task for t in pending if t.task is not None]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in list(pending):  # in chain order: the primary wins a tie
            if t.task is not None and t.task.done():
                pending.remove(t)
                t.tried = t.task.result()
                if t.won:
                    return t
    return None
