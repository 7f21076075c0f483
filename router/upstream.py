"""One call to one target: send the encoded request, yield unified events, within its timeouts.

The request goes out through a ``router.transport.Transport`` (aiohttp in production, an
in-process one in tests); the answer's bytes are framed by the project's own SSE parser
(``router.sse``, the WHATWG event-stream rules) and decoded by the target's adapter. The deltas
that one network read brought are joined (``router.events.coalesce``) and go on together: a busy
router moves fewer events, and none waits for a later read. Transport
failures are router errors already (the transport is the one boundary that maps them); HTTP error
statuses are decoded by the adapter. The response is always closed, also when the consumer stops
early (the caller went away): a response not read to its end drops its connection, which stops
the upstream's generation.

Timeouts (seconds, the effective ``Timeouts`` of the target): ``connect`` bounds getting a
connection (pool wait and TCP connect); ``first_token`` bounds the wait from sending to the first
event (for a non-streamed call, whose first event is the whole answer, ``total`` is used instead);
``idle`` bounds each gap between later events; ``total`` bounds the whole call. They are deadlines
on the injected ``Clock`` around each wait for the next event, never around a ``yield``, so they
cannot fire into the consumer, and a test of a timeout takes no real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import msgspec

from providers import Adapter, Call, adapter_for
from router.clock import Clock, Timer
from router.config import ModelSpec, Provider
from router.errors import UpstreamStreamError, UpstreamTimeout
from router.events import Event, coalesce
from router.policy import EffectiveTimeouts
from router.sse import SSEParser
from router.transport import Transport

__all__ = ["CallFacts", "Target", "call_target", "make_targets"]


class Target(msgspec.Struct, kw_only=True):
    """A ``provider/model`` entry of a chain, resolved against routing.yaml.

    ``unusable_reason`` is set when the target cannot be called (its key is unset).
    """

    name: str
    provider: str
    model: str
    spec: ModelSpec
    adapter: Adapter
    base_url: str
    api_key: str | None
    headers: dict[str, str]
    stream_upstream: bool = True
    unusable_reason: str | None = None


def make_targets(providers: Mapping[str, Provider]) -> dict[str, Target]:
    """Every ``provider/model`` of the config as a ``Target``."""
    out: dict[str, Target] = {}
    for pname, p in providers.items():
        for mname, spec in p.models.items():
            name = f"{pname}/{mname}"
            out[name] = Target(
                name=name, provider=pname, model=mname, spec=spec, adapter=adapter_for(p.protocol),
                base_url=p.base_url, api_key=p.api_key, headers=p.headers,
                stream_upstream=p.stream_upstream, unusable_reason=p.unusable_reason,
            )
    return out


class CallFacts:
    """What one upstream call learned besides its events: ``prompt_tokens``, when the stream
    reported the prompt's tokens ahead of its answer (the chain puts them on ``start``)."""

    __slots__ = ("prompt_tokens",)

    def __init__(self) -> None:
        self.prompt_tokens: int | None = None


async def _raw_events(transport: Transport, target: Target, call: Call, connect: float,
                      facts: CallFacts | None = None) -> AsyncGenerator[Event, None]:
    # the encoded request (the whole prompt) is not kept while the answer streams
    response = await transport.send(target.adapter.encode(call, target.base_url, target.api_key, target.headers),
                                    connect=connect, name=target.name, provider=target.provider)
    try:
        if response.status >= 400:
            raise target.adapter.decode_error(response.status, response.headers, await response.read())
        if not call.stream:
            for ev in target.adapter.decode_response(await response.read()):
                yield ev
            return
        if response.content_type != "text/event-stream":
            body = await response.read()
            if response.content_type == "application/json" and b'"error"' in body:
                # a business error in a 200 body (Z.ai sends 1305 so): an error, classified by its code
                raise target.adapter.decode_error(response.status, response.headers, body)
            raise UpstreamStreamError(f"{target.name}: the answer is not an event stream",
                                      code="not_event_stream", retryable=True, provider=target.provider)
        decoder, parser = target.adapter.stream_decoder(), SSEParser()
        async for chunk in response.chunks():
            frames = parser.feed(chunk)
            if len(frames) == 1:  # the usual read: one event
                evs = decoder.feed(*frames[0])
            else:  # what one read brought together goes on together, deltas joined
                evs, failed = [], None
                try:
                    for event, data in frames:
                        evs += decoder.feed(event, data)
                except Exception as e:  # noqa: BLE001 - re-raised below: what came before the bad frame goes first
                    failed = e
                if len(evs) > 1:
                    evs = coalesce(evs)
                if failed is not None:
                    for ev in evs:
                        yield ev
                    raise failed
            if facts is not None and facts.prompt_tokens is None:
                facts.prompt_tokens = decoder.prompt_tokens
            for ev in evs:
                yield ev
        for ev in decoder.finish():
            yield ev
    finally:
        response.close()


class _Watchdog:
    """The deadline of one upstream call's current wait, on one lazily moved timer.

    ``asyncio.timeout`` schedules and cancels a timer around every wait, which for a stream is
    every event (about 4% of a stream's CPU in a profile). Here a wait only records its deadline;
    the timer is set once and, when it fires early (a later wait moved the deadline on), sets
    itself again for the current deadline. When it fires during a wait whose deadline has passed it
    cancels the waiting task, as ``asyncio.timeout`` does; ``expired`` tells that cancellation
    apart from any other. Never fires outside a wait, so never into the consumer.
    """

    __slots__ = ("clock", "deadline", "expired", "handle", "task", "waiting", "when")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.task: asyncio.Task[Any] | None = None
        self.handle: Timer | None = None
        self.when = 0.0
        self.deadline = 0.0
        self.waiting = self.expired = False

    def arm(self, deadline: float) -> None:
        """A wait begins, to end by ``deadline`` (clock seconds). The waiting task is looked up
        only when the one known is done: a call's first event may be awaited by a task of its
        own (a hedge race's), the rest by the consumer's, and an async generator is never
        awaited by two tasks at once."""
        task = self.task
        if task is None or task.done():
            self.task = asyncio.current_task()
        self.deadline, self.waiting = deadline, True
        if self.handle is None or self.when > deadline:
            if self.handle is not None:
                self.handle.cancel()
            self.handle, self.when = self.clock.call_at(deadline, self._fire), deadline

    def _fire(self) -> None:
        self.handle = None
        if not self.waiting:
            return  # between waits: the next wait sets the timer again
        if self.clock.now() < self.deadline:
            self.handle, self.when = self.clock.call_at(self.deadline, self._fire), self.deadline
        elif self.task is not None:
            self.expired = True
            self.task.cancel()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


async def call_target(transport: Transport, target: Target, call: Call, timeouts: EffectiveTimeouts,
                      clock: Clock, facts: CallFacts | None = None) -> AsyncGenerator[Event, None]:
    """Yield the unified events of one upstream call (``call.stream`` picks the wire mode).

    Raises ``UpstreamError`` subclasses; a deadline raises ``UpstreamTimeout`` with code
    ``first_token_timeout``, ``idle_timeout`` or ``total_timeout``.
    """
    t = timeouts
    total_deadline = clock.now() + t.total
    gen = _raw_events(transport, target, call, t.connect, facts)
    limit, phase = (t.first_token, "first_token") if call.stream else (t.total, "total")
    dog = _Watchdog(clock)
    try:
        while True:
            deadline = clock.now() + limit
            if deadline >= total_deadline:
                deadline, phase = total_deadline, "total"
            dog.arm(deadline)
            try:
                ev = await anext(gen)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if dog.expired and dog.task is not None and dog.task.uncancel() == 0:
                    raise UpstreamTimeout(f"{target.name}: no event within the {phase} timeout",
                                          code=f"{phase}_timeout", retryable=True,
                                          provider=target.provider) from None
                raise
            finally:
                dog.waiting = False
            yield ev
            if call.stream:  # a non-streamed answer's later events are already in memory
                limit, phase = t.idle, "idle"
    finally:
        dog.close()
        await gen.aclose()
