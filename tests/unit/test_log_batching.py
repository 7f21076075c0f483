"""Request log lines are written in batches from the event loop; warnings at once."""

from __future__ import annotations

import asyncio
import logging

from router.logs import BatchingStreamHandler, JsonFormatter


class CountingStream:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, s: str) -> None:
        self.writes.append(s)

    def flush(self) -> None:
        pass


def _logger(stream: CountingStream, delay: float) -> logging.Logger:
    handler = BatchingStreamHandler(stream, delay=delay)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"test-batching-{id(stream)}")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def test_info_lines_of_one_loop_turn_go_out_in_one_write() -> None:
    stream = CountingStream()
    log = _logger(stream, delay=0)

    async def go() -> tuple[int, int]:
        for i in range(3):
            log.info({"event": "request", "n": i})
        before = len(stream.writes)  # nothing yet: the flush is scheduled on the loop
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return before, len(stream.writes)

    before, after = asyncio.run(go())
    assert (before, after) == (0, 1)
    assert [line.count('"event":"request"') for line in stream.writes[0].splitlines()] == [1, 1, 1]


def test_warnings_and_lines_off_the_loop_are_written_at_once() -> None:
    stream = CountingStream()
    log = _logger(stream, delay=60)

    async def go() -> list[str]:
        log.info({"event": "request"})
        log.warning("store unreachable")  # takes the pending request line with it
        return list(stream.writes)

    written = asyncio.run(go())
    assert len(written) == 1 and written[0].count("\n") == 2 and "store unreachable" in written[0]
    log.info("no loop here")
    assert len(stream.writes) == 2


def test_flush_at_shutdown_writes_what_is_pending() -> None:
    stream = CountingStream()
    log = _logger(stream, delay=60)

    async def go() -> None:
        log.info({"event": "request"})

    asyncio.run(go())
    assert stream.writes == []
    log.handlers[0].flush()  # what logging.shutdown does at exit
    assert len(stream.writes) == 1
