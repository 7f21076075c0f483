"""The upstream transport (``router.upstream``) over a real loopback socket.

A scripted HTTP/1.1 server replays recorded provider bodies with awkward framing (one byte per
write, CRLF line ends, multi-byte characters split across writes) and misbehaves on purpose (cut
connections, a non-SSE answer, an early close). What ``call_target`` yields must equal what the
adapter makes of the whole recorded body at once, up to the deltas one network read brought
together, which it joins (``router.events.coalesce``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from providers import Call, adapter_for
from router.clock import LoopClock
from router.config import DEFAULT_TIMEOUTS, Timeouts, overlay
from router.emulator import free_port
from router.errors import (
    UpstreamConnectError,
    UpstreamHTTPError,
    UpstreamStreamError,
    UpstreamTimeout,
)
from router.events import End, Event, TextDelta, coalesce
from router.policy import EffectiveTimeouts
from router.request import Message
from router.transport import AiohttpTransport as UpstreamClient
from router.upstream import Target
from router.upstream import call_target as _call_target


def call_target(client: UpstreamClient, target: Target, call: Call, timeouts: Timeouts | None = None) -> AsyncIterator[Event]:
    """The real transport on the real clock, with ``timeouts`` over the defaults."""
    t = overlay(DEFAULT_TIMEOUTS, timeouts)
    return _call_target(client, target, call, EffectiveTimeouts(t.connect, t.first_token, t.idle, t.total), LoopClock())
from router.config import ModelSpec
from tests.wire._sse import WIRE, decode_stream

Writer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def scripted(respond: Writer) -> AsyncIterator[tuple[int, list[str]]]:
    """A loopback HTTP/1.1 server: reads each request (headers + Content-Length body) of a
    connection and lets ``respond`` write the answer. Yields (port, log); the log records
    'request' per request and 'eof' when a client closes its connection."""
    log: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    log.append("eof")
                    return
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                log.append("request")
                await respond(reader, writer)
        except ConnectionError:
            log.append("eof")
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port, log


async def _hang(reader: asyncio.StreamReader) -> None:
    """Send nothing more until the client closes the connection (then the server logs 'eof')."""
    await reader.read(1)


async def _eof(log: list[str]) -> None:
    for _ in range(200):
        if "eof" in log:
            return
        await asyncio.sleep(0.01)


def _target(protocol: str, port: int) -> Target:
    base = f"http://127.0.0.1:{port}" + ("/v1" if protocol == "anthropic" else "/api/paas/v4")
    return Target(name="t/m", provider="t", model="m", spec=ModelSpec(context_window=100_000), adapter=adapter_for(protocol),
                  base_url=base, api_key="k", headers={})


def _call(stream: bool = True) -> Call:
    return Call(model="m", messages=[Message(role="user", content="hi")], stream=stream)


async def _collect(port: int, protocol: str, stream: bool = True, timeouts: Timeouts | None = None) -> list[Event]:
    client = UpstreamClient()
    try:
        return [ev async for ev in call_target(client, _target(protocol, port), _call(stream), timeouts)]
    finally:
        await client.aclose()


def _sse_head(extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n" + extra + b"\r\n"


async def _chunked(writer: asyncio.StreamWriter, body: bytes, piece: int, end: bool = True) -> None:
    for i in range(0, len(body), piece):
        part = body[i:i + piece]
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
    if end:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


STREAMS = [("anthropic", "anthropic/thinking-tool-use.sonnet-4.sse"),
           ("openai", "zai/thinking-tool-calls-parallel.glm-4-7-flash.sse"),
           ("openai", "openai/text-with-usage-chunk.gpt-4o.sse")]


@pytest.mark.parametrize("piece", [1, 7, 65536])
@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize(("protocol", "name"), STREAMS)
def test_recorded_stream_over_a_socket_in_any_framing(protocol: str, name: str, piece: int, crlf: bool) -> None:
    body = (WIRE / name).read_bytes()
    expected = decode_stream(protocol, body)
    if crlf:
        body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_sse_head())
        await _chunked(writer, body, piece)

    async def go() -> list[Event]:
        async with scripted(respond) as (port, _):
            return await _collect(port, protocol)

    got = asyncio.run(go())
    assert coalesce(got) == coalesce(expected) and isinstance(got[-1], End)


def test_coalesce_joins_adjacent_deltas_of_one_kind_only() -> None:
    from router.events import ReasoningDelta, ToolCallDelta, Usage

    evs: list[Event] = [ReasoningDelta(text="a"), ReasoningDelta(text="b"), ReasoningDelta(signature="sig"),
                        TextDelta(text="Hel"), TextDelta(text="lo"), ToolCallDelta(index=0, arguments='{"a"'),
                        ToolCallDelta(index=0, arguments=":1}"), ToolCallDelta(index=1, arguments="{}"),
                        TextDelta(text="!"), Usage(input_tokens=1), End()]
    assert coalesce(evs) == [ReasoningDelta(text="ab"), ReasoningDelta(signature="sig"), TextDelta(text="Hello"),
                             ToolCallDelta(index=0, arguments='{"a":1}'), ToolCallDelta(index=1, arguments="{}"),
                             TextDelta(text="!"), Usage(input_tokens=1), End()]


def test_multibyte_character_split_between_writes() -> None:
    text = "naïve café — 東京"
    data = ('data: {"id":"1","choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % text).encode()
    data += b'data: {"id":"1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_sse_head())
        await _chunked(writer, data, 1)  # every multi-byte character arrives in pieces

    async def go() -> list[Event]:
        async with scripted(respond) as (port, _):
            return await _collect(port, "openai")

    got = asyncio.run(go())
    assert "".join(e.text for e in got if isinstance(e, TextDelta)) == text


def test_connection_cut_mid_stream_is_truncated_not_end() -> None:
    body = (WIRE / "openai/text-with-usage-chunk.gpt-4o.sse").read_bytes()

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_sse_head())
        await _chunked(writer, body[: len(body) // 2], 64, end=False)
        writer.transport.abort()
        raise ConnectionError

    async def go() -> list[Event]:
        async with scripted(respond) as (port, _):
            return await _collect(port, "openai")

    with pytest.raises(UpstreamStreamError) as info:
        asyncio.run(go())
    assert info.value.code == "stream_truncated" and info.value.retryable and info.value.provider == "t"


def test_a_200_that_is_not_an_event_stream() -> None:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 5\r\n\r\n<h1/>")
        await writer.drain()

    async def go() -> list[Event]:
        async with scripted(respond) as (port, _):
            return await _collect(port, "openai")

    with pytest.raises(UpstreamStreamError) as info:
        asyncio.run(go())
    assert info.value.code == "not_event_stream"


def test_error_status_is_decoded_by_the_adapter_with_retry_after() -> None:
    body = (WIRE / "zai/error-429-1302-high-concurrency.json").read_bytes()

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nRetry-After: 7\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async def go() -> list[Event]:
        async with scripted(respond) as (port, _):
            return await _collect(port, "openai")

    with pytest.raises(UpstreamHTTPError) as info:
        asyncio.run(go())
    assert (info.value.upstream_status, info.value.code, info.value.retryable) == (429, "1302", True)
    assert info.value.retry_after == 7


def test_refused_connection_is_a_connect_error() -> None:
    port = free_port()  # nothing listens there

    with pytest.raises(UpstreamConnectError) as info:
        asyncio.run(_collect(port, "openai"))
    assert info.value.code == "connect_error" and info.value.retryable


def test_first_token_timeout_then_the_connection_is_dropped() -> None:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_sse_head())
        await writer.drain()
        await _hang(reader)  # headers, then nothing

    async def go() -> list[str]:
        async with scripted(respond) as (port, log):
            with pytest.raises(UpstreamTimeout) as info:
                await _collect(port, "openai", timeouts=Timeouts(first_token=0.2))
            assert info.value.code == "first_token_timeout"
            await _eof(log)
            return log

    assert asyncio.run(go()) == ["request", "eof"]


def test_consumer_stopping_early_closes_the_upstream_connection() -> None:
    """A caller that leaves mid-stream must stop the upstream's generation: the connection is
    closed, not returned to the pool half-read."""
    body = (WIRE / "openai/text-with-usage-chunk.gpt-4o.sse").read_bytes()

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_sse_head())
        await _chunked(writer, body[: body.index(b"\n\n", 500) + 2], 4096, end=False)  # two events
        await _hang(reader)

    async def go() -> list[str]:
        async with scripted(respond) as (port, log):
            client = UpstreamClient()
            gen = call_target(client, _target("openai", port), _call())
            assert await anext(gen) is not None
            await gen.aclose()
            await _eof(log)
            await client.aclose()
            return log

    assert asyncio.run(go()) == ["request", "eof"]


def test_non_streamed_answer_and_keep_alive_reuse() -> None:
    body = (WIRE / "openai/completion-parallel-tool-calls.gpt-4o.json").read_bytes()
    connections: list[int] = []

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(id(writer))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()

    async def go() -> list[list[Event]]:
        async with scripted(respond) as (port, _):
            client = UpstreamClient()
            try:
                return [[ev async for ev in call_target(client, _target("openai", port), _call(stream=False))]
                        for _ in range(3)]
            finally:
                await client.aclose()

    answers = asyncio.run(go())
    assert answers[0] == answers[1] == answers[2] == adapter_for("openai").decode_response(body)
    assert len(set(connections)) == 1  # one kept-alive connection served all three


def test_idle_timeout_moves_with_each_event_and_fires_on_a_gap() -> None:
    """Events 30 ms apart for 10 events never trip a 100 ms idle timeout (the deadline moves with
    every event, over one lazily re-set timer); a 300 ms gap then does, with the events before it
    delivered."""
    chunk = b'data: {"id":"1","choices":[{"index":0,"delta":{"content":"w "}}]}\n\n'

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_sse_head())
        for _ in range(10):
            await _chunked(writer, chunk, 4096, end=False)
            await asyncio.sleep(0.03)
        await _hang(reader)

    async def go() -> tuple[list[Event], UpstreamTimeout]:
        got: list[Event] = []
        async with scripted(respond) as (port, _):
            client = UpstreamClient()
            try:
                with pytest.raises(UpstreamTimeout) as info:
                    async for ev in call_target(client, _target("openai", port), _call(),
                                                Timeouts(first_token=1.0, idle=0.1, total=5.0)):
                        got.append(ev)
            finally:
                await client.aclose()
        return got, info.value

    got, err = asyncio.run(go())
    assert sum(isinstance(e, TextDelta) for e in got) == 10
    assert err.code == "idle_timeout" and err.retryable


def test_deltas_before_a_bad_frame_of_the_same_read_still_go_first() -> None:
    """A read that brings good deltas and then a malformed frame: the deltas are yielded (joined)
    before the error, as they would be had they come in reads of their own."""
    body = (b'data: {"id":"1","choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
            b'data: {"id":"1","choices":[{"index":0,"delta":{"content":"lo"}}]}\n\n'
            b"data: {bad\n\n")

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_sse_head())
        await _chunked(writer, body, len(body), end=False)
        await asyncio.sleep(5)

    async def go() -> tuple[str, str]:
        async with scripted(respond) as (port, _):
            client = UpstreamClient()
            got: list[str] = []
            try:
                async for ev in call_target(client, _target("openai", port), _call(True)):
                    got.append(ev.text if isinstance(ev, TextDelta) else type(ev).__name__)
            except UpstreamStreamError as e:
                return "".join(got), e.code
            finally:
                await client.aclose()
            return "".join(got), "no error"

    assert asyncio.run(go()) == ("Hello", "malformed_chunk")
