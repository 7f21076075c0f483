"""A variant of ``tests.unit._app.app`` for the door, cache and route tests: the same in-process
router over the emulator on an autojumping ``FakeClock``, with what ``_app.app`` does not offer
(an emulator ``fixtures`` directory for ``replay``, ``Settings``, a ``load`` callable), and the
Litestar app itself reachable (``application``), for its state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from litestar import Litestar

from router.clock import FakeClock
from router.config import RoutingConfig
from router.settings import Settings
from router.stores import Store
from router.telemetry import Telemetry
from tests.unit._app import YAML, InProcess, app


class Local(InProcess):
    """``InProcess`` and the Litestar app it serves."""

    def __init__(self, client: httpx.AsyncClient, emulator: Any, clock: FakeClock, store: Store,
                 application: Litestar) -> None:
        super().__init__(client, emulator, clock, store)
        self.application = application

    @property
    def router(self) -> Any:
        return self.application.state.live.router


@asynccontextmanager
async def served(yaml_text: str = YAML, *, fixtures: str | Path | None = None, store: Store | None = None,
                 telemetry: Telemetry | None = None, settings: Settings | None = None,
                 load: Callable[[], RoutingConfig] | None = None, env: dict[str, str] | None = None,
                 ) -> AsyncIterator[Local]:
    """``tests.unit._app.app`` with these options, as a ``Local``."""
    async with app(yaml_text, store=store, telemetry=telemetry, fixtures=fixtures, settings=settings, load=load,
                   **(env or {})) as a:
        yield Local(a.client, a.emulator, a.clock, a.store, a.app)


def data_lines(body: str) -> list[Any]:
    """The JSON of every ``data:`` line of an OpenAI-style stream (``[DONE]`` kept as the string)."""
    out: list[Any] = []
    for block in body.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                raw = line.removeprefix("data: ")
                out.append(raw if raw == "[DONE]" else json.loads(raw))
    return out


async def settle(pred: Callable[[], Any], turns: int = 2000) -> None:
    """Let the loop run (no clock time passes) until ``pred()`` holds."""
    for _ in range(turns):
        if pred():
            return
        await asyncio.sleep(0)
    raise AssertionError("never settled")
