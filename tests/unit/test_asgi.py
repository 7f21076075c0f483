"""The raw ASGI helpers of the doors (bounded body, SSE with disconnects), the settings read from
the environment once, and the OpenAPI document, in process: no socket."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openapi_spec_validator import validate

from router.asgi import CallerLeft, CallerWatch, read_body, stream_sse
from router.errors import PayloadTooLarge, RouterError
from router.settings import DEFAULT_MAX_BODY_BYTES, Settings
from tests.unit._app import app


def test_read_body_joins_parts_stops_at_the_limit_and_notices_a_departure() -> None:
    async def go() -> None:
        parts = iter([{"type": "http.request", "body": b"ab", "more_body": True},
                      {"type": "http.request", "body": b"cd", "more_body": False}])

        async def receive() -> dict[str, Any]:
            return next(parts)

        assert await read_body(receive, 10) == b"abcd"
        big = iter([{"type": "http.request", "body": b"x" * 6, "more_body": True},
                    {"type": "http.request", "body": b"x" * 6, "more_body": True}])

        async def receive_big() -> dict[str, Any]:
            return next(big)

        with pytest.raises(PayloadTooLarge):
            await read_body(receive_big, 10)

        async def gone() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        with pytest.raises(CallerLeft):
            await read_body(gone, 10)

    asyncio.run(go())


def test_a_caller_that_leaves_mid_stream_stops_the_chunks_and_nothing_more_is_sent() -> None:
    async def go() -> None:
        sent: list[dict[str, Any]] = []
        left = asyncio.Event()
        closed: list[bool] = []

        async def receive() -> dict[str, Any]:
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if len(sent) == 3:
                left.set()  # the caller goes away after two chunks

        async def chunks() -> AsyncIterator[bytes]:
            try:
                for i in range(1000):
                    yield b"data: %d\n\n" % i
                    await asyncio.sleep(0)
            finally:
                closed.append(True)

        async with CallerWatch(receive) as watch:
            await stream_sse(send, chunks(), {"x-a": "1"}, lambda err: b"never")
        assert watch.left
        assert sent[0]["type"] == "http.response.start" and (b"x-a", b"1") in sent[0]["headers"]
        assert 3 <= len(sent) < 10 and closed == [True]
        assert not any(m.get("more_body") is False for m in sent)  # never reported complete

    asyncio.run(go())


def test_a_router_error_after_the_start_is_the_doors_terminal_event() -> None:
    async def go() -> None:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            await asyncio.get_running_loop().create_future()
            return {}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def chunks() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            raise RouterError("upstream broke")

        await stream_sse(send, chunks(), {}, lambda err: f"data: {err.message}\n\n".encode())
        assert [m["type"] for m in sent].count("http.response.start") == 1
        assert sent[-2]["body"] == b"data: upstream broke\n\n" and sent[-1] == {
            "type": "http.response.body", "body": b"", "more_body": False}

    asyncio.run(go())


def test_settings_are_read_once_from_the_environment() -> None:
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env({"REDIS_URL": "redis://r:6379/1", "REDIS_PREFIX": "p", "REDIS_TIMEOUT_MS": "20",
                           "LLM_ROUTER_MAX_CONNECTIONS": "50", "LLM_ROUTER_TELEMETRY": "off",
                           "LLM_ROUTER_MAX_BODY_BYTES": "1024"})
    assert (s.redis_url, s.redis_prefix, s.redis_timeout, s.max_connections, s.telemetry, s.max_body_bytes) == (
        "redis://r:6379/1", "p", 0.02, 50, False, 1024)
    assert Settings().max_body_bytes == DEFAULT_MAX_BODY_BYTES
    with pytest.raises(ValueError, match="REDIS_TIMEOUT_MS"):
        Settings.from_env({"REDIS_TIMEOUT_MS": "soon"})


def test_the_openapi_document_is_valid_and_has_the_doors() -> None:
    async def go() -> None:
        async with app() as a:
            doc = (await a.client.get("/schema/openapi.json")).json()
            validate(doc)
            op = doc["paths"]["/v1/messages"]["post"]
            assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("MessagesRequest")
            ok = op["responses"]["200"]["content"]
            assert ok["application/json"]["schema"]["$ref"].endswith("MessageResponse")
            assert ok["text/event-stream"]["schema"]["required"] == ["data"]
            assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("AnthropicErrorBody")
            tasks = doc["paths"]["/v1/tasks"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
            assert tasks["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/Event"}
            assert {"TaskRequest", "Answer", "Event", "ChatCompletion", "OpenAIErrorBody"} <= set(doc["components"]["schemas"])

    asyncio.run(go())


def test_every_exception_maps_to_one_router_error() -> None:
    from litestar.exceptions import MethodNotAllowedException, NotFoundException, ServiceUnavailableException

    from router.app import to_router_error
    from router.errors import UnknownTask
    from router.stores import StoreError

    known = UnknownTask("x", ["a"])
    assert to_router_error(known) is known
    e = to_router_error(MethodNotAllowedException())
    assert (e.status, e.type) == (405, "method_not_allowed")
    e = to_router_error(NotFoundException("no route"))
    assert (e.status, e.type, e.message) == (404, "not_found_error", "no route")
    e = to_router_error(ServiceUnavailableException("secret detail"))
    assert (e.status, e.type, e.message) == (503, "internal_error", "internal error")
    e = to_router_error(StoreError("redis: TimeoutError"))
    assert (e.status, e.type) == (503, "store_unavailable")
    e = to_router_error(ZeroDivisionError("secret"))
    assert (e.status, e.message) == (500, "internal error")


def test_a_finished_watch_leaves_no_cycle_behind() -> None:
    """The watch lets go of its tasks as it ends: what the request held is freed by reference
    counting when it ends, not by a later full collection (a cycle through the cancelled watcher's
    traceback kept every finished request's objects alive until then)."""
    async def go() -> int:
        forever = asyncio.Event()

        async def receive() -> dict[str, str]:
            await forever.wait()
            return {"type": "http.disconnect"}

        async def request() -> None:
            async with CallerWatch(receive):
                await asyncio.sleep(0)

        await request()
        for _ in range(3):
            await asyncio.sleep(0)  # the watcher takes its cancellation and ends
        return gc.collect()

    gc.collect()
    gc.disable()
    try:
        assert asyncio.run(go()) == 0
    finally:
        gc.enable()
