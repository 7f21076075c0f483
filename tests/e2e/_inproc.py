"""A router served in this process (uvicorn in a thread, real HTTP on loopback), so tests can
inject its sleep and wall clock and read its store."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from router.app import create_app
from router.clock import LoopClock
from router.emulator import free_port
from router.loading import parse_config


class FakeTime:
    """``sleep`` records the waits asked and returns at once; ``wall`` is advanced by hand."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.now = 1_800_000_000.0

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def wall(self) -> float:
        return self.now


class _Clock(LoopClock):
    """Real deadlines (these tests cross real sockets), injected waits and wall time."""

    def __init__(self, sleep: Any, wall: Any) -> None:
        self._sleep, self._wall = sleep, wall

    async def sleep(self, seconds: float) -> None:
        await (self._sleep or super().sleep)(seconds)

    def wall(self) -> float:
        return float(self._wall()) if self._wall else super().wall()


@contextmanager
def serve(yaml_text: str, env: dict[str, str] | None = None, *, sleep: Any = None, wall: Any = None,
          **options: Any) -> Iterator[str]:
    """Serve a router for ``yaml_text`` until the block ends; yields its base URL. ``sleep`` and
    ``wall`` replace the router clock's waits and wall time."""
    config = parse_config(yaml_text, env or {})
    if sleep is not None or wall is not None:
        options["clock"] = _Clock(sleep, wall)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config, **options), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("router did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
