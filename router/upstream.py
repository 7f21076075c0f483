"""One call to one target: send the encoded request, yield unified events, within its timeouts.

This is the one place where httpx's exceptions become router errors (``router.errors``):
connect failures and resets before any byte -> ``UpstreamConnectError``; timeouts ->
``UpstreamTimeout``; a connection dropped or a body broken after HTTP 200 -> ``UpstreamStreamError``.
HTTP error statuses are decoded by the target's adapter. The response is always closed, also when
the consumer stops early (the caller went away): closing the generator closes the connection.

Timeouts (seconds, routing.yaml ``timeouts``): ``connect`` is httpx's; ``first_token`` bounds the
wait from sending to the first event (for a non-streamed call, whose first event is the whole
answer, ``total`` is used instead); ``idle`` bounds each gap between later events; ``total`` bounds
the whole call. They are deadlines around each wait for the next event, never around a ``yield``,
so they cannot fire into the consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import msgspec
from httpx_sse import EventSource, SSEError

from providers import Adapter, Call, adapter_for
from router.config import DEFAULT_TIMEOUTS, ModelSpec, Provider, Timeouts, overlay
from router.errors import (UpstreamConnectError, UpstreamError, UpstreamStreamError,
                           UpstreamTimeout)
from router.events import Event

__all__ = ["ShardedClient", "Target", "call_target", "make_targets"]


class ShardedClient:
    """One provider's upstream client, spread over ``shards`` connection pools used round-robin.

    httpcore's pool walks every connection it holds on each request (``has_expired`` polls each
    idle socket), so one pool's cost per request grows with concurrency: at 64 concurrent requests
    a profile showed about 60% of the router's CPU there. ``shards`` pools of a fraction of the
    connections each keep that walk short. Same interface as ``httpx.AsyncClient`` for what the
    router uses (``build_request``, ``send``, ``aclose``).
    """

    def __init__(self, shards: int = 8, max_connections: int = 1000, keepalive_expiry: float = 60,
                 transport: str = "httpcore") -> None:
        per = max(1, max_connections // shards)
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per, keepalive_expiry=keepalive_expiry)
        if transport == "aiohttp":  # httpx's API over aiohttp's connection pool and C HTTP parser
            from httpx_aiohttp import AiohttpTransport

            self._clients = [httpx.AsyncClient(transport=AiohttpTransport(limits=limits, trust_env=False),
                                               trust_env=False) for _ in range(shards)]
        else:
            self._clients = [httpx.AsyncClient(limits=limits, trust_env=False) for _ in range(shards)]
        self._next = 0

    def build_request(self, *args: Any, **kwargs: Any) -> httpx.Request:
        return self._clients[0].build_request(*args, **kwargs)

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        self._next = (self._next + 1) % len(self._clients)
        return await self._clients[self._next].send(request, **kwargs)

    async def aclose(self) -> None:
        for c in self._clients:
            await c.aclose()


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
                unusable_reason=p.unusable_reason,
            )
    return out


def _is_timeout(e: httpx.TransportError) -> bool:
    """A real timeout? httpx-aiohttp reports a refused or dropped connection as ``ConnectTimeout``
    (it maps aiohttp's ``ClientConnectionError`` there), so the original exception decides."""
    cause = e.__cause__
    if cause is None:
        return isinstance(e, httpx.TimeoutException)
    return isinstance(cause, TimeoutError) or "Timeout" in type(cause).__name__


def _transport_error(e: httpx.TransportError, target: Target, got_bytes: bool) -> UpstreamError:
    """The router error for a transport failure, before or after the first byte of the body."""
    if _is_timeout(e):
        return UpstreamTimeout(f"{target.name}: {type(e).__name__}", retryable=True,
                               code="read_timeout" if got_bytes else "connect_timeout")
    if got_bytes:
        return UpstreamStreamError(f"{target.name}: the connection broke ({type(e).__name__})",
                                   code="stream_truncated", retryable=True)
    return UpstreamConnectError(f"{target.name}: could not get a response ({type(e).__name__})",
                                code="connect_error", retryable=True)


async def _raw_events(client: httpx.AsyncClient, target: Target, call: Call,
                      connect: float) -> AsyncIterator[Event]:
    wire = target.adapter.encode(call, target.base_url, target.api_key, target.headers)
    request = client.build_request("POST", wire.url, headers=wire.headers, content=wire.body,
                                   timeout=httpx.Timeout(None, connect=connect, write=connect, pool=connect))
    got_bytes = False
    try:
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as e:
            raise _transport_error(e, target, got_bytes=False) from None
        try:
            if response.status_code >= 400:
                body = await response.aread()
                raise target.adapter.decode_error(response.status_code, response.headers, body)
            if not call.stream:
                body = await response.aread()
                got_bytes = True
                for ev in target.adapter.decode_response(body):
                    yield ev
                return
            decoder = target.adapter.stream_decoder()
            try:
                async for sse in EventSource(response).aiter_sse():
                    got_bytes = True
                    for ev in decoder.feed("" if sse.event == "message" else sse.event, sse.data):
                        yield ev
            except SSEError:
                raise UpstreamStreamError(f"{target.name}: the answer is not an event stream",
                                          code="not_event_stream", retryable=True) from None
            for ev in decoder.finish():
                yield ev
        finally:
            await response.aclose()
    except httpx.TransportError as e:
        raise _transport_error(e, target, got_bytes) from None
    except UpstreamError as e:
        e.provider = target.provider
        raise


async def call_target(client: httpx.AsyncClient, target: Target, call: Call,
                      timeouts: Timeouts | None = None) -> AsyncIterator[Event]:
    """Yield the unified events of one upstream call (``call.stream`` picks the wire mode).

    ``timeouts`` are merged over the defaults. Raises ``UpstreamError`` subclasses with
    ``provider`` set; a timeout raises ``UpstreamTimeout`` with code ``first_token_timeout``,
    ``idle_timeout`` or ``total_timeout``.
    """
    t = overlay(DEFAULT_TIMEOUTS, timeouts)
    loop = asyncio.get_running_loop()
    total_deadline = loop.time() + t.total
    gen = _raw_events(client, target, call, t.connect)
    limit, phase = (t.first_token, "first_token") if call.stream else (t.total, "total")
    try:
        while True:
            deadline = loop.time() + limit
            if deadline >= total_deadline:
                deadline, phase = total_deadline, "total"
            try:
                async with asyncio.timeout_at(deadline):
                    ev = await anext(gen)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UpstreamTimeout(f"{target.name}: no event within the {phase} timeout",
                                      code=f"{phase}_timeout", retryable=True,
                                      provider=target.provider) from None
            yield ev
            limit, phase = t.idle, "idle"
    finally:
        await gen.aclose()
