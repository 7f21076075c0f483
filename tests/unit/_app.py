"""The whole router in this process and this event loop: the Litestar app (its lifespan run here,
requests through httpx's ASGI transport) over the in-process transport to the upstream emulator,
on a ``FakeClock`` that jumps ahead whenever everything waits on it. No socket, no real
wait: a 30-second timeout takes microseconds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from router.app import create_app
from router.clock import FakeClock
from router.config import RoutingConfig
from router.emulator import create_emulator
from router.inproc import ASGITransport
from router.loading import parse_config
from router.settings import Settings
from router.stores import MemoryStore, Store
from router.telemetry import Telemetry
from router.transport import Transport

YAML = """
version: 1
providers:
  glm:
    protocol: openai
    base_url: http://emulator/api/paas/v4
    api_key: k
    retry: {initial_wait: 0.5}
    timeouts: {first_token: 30, idle: 10, total: 120}
    models:
      glm-4.6: {context_window: 200000, price: {input: 0.60, output: 2.20}}
  claude:
    protocol: anthropic
    base_url: http://emulator
    api_key: k
    timeouts: {first_token: 30, idle: 10, total: 120}
    models:
      claude-sonnet-5-5: {context_window: 200000, price: {input: 3.00, output: 15.00}}
tasks:
  t:
    chain: [glm/glm-4.6, claude/claude-sonnet-5-5]
  chat:
    chain: [glm/glm-4.6]
  quick_summary:
    chain: [glm/glm-4.6, claude/claude-sonnet-5-5]
  cached:
    chain: [claude/claude-sonnet-5-5]
    cache: {ttl: 60}
  limited:
    chain: [glm/glm-4.6]
    limits: {rpm: 2}
  restart:
    chain: [glm/glm-4.6, claude/claude-sonnet-5-5]
    midstream: restart
"""


def say(spec: dict[str, Any] | None = None, text: str = "hello") -> list[dict[str, Any]]:
    """One user message, scripting the emulator with ``spec``."""
    return [{"role": "user", "content": text + ("\nemulate: " + json.dumps(spec) if spec else "")}]


def sse(body: str) -> list[dict[str, Any]]:
    """The data of every SSE message of a native stream (``event`` checked against ``type``)."""
    out = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        out.append(data)
    return out


class InProcess:
    """A client of the app, its emulator's stats, its clock, its store and the app itself."""

    def __init__(self, client: httpx.AsyncClient, emulator: Any, clock: FakeClock, store: Store,
                 app: Any = None) -> None:
        self.client, self.emulator, self.clock, self.store, self.app = client, emulator, clock, store, app


@asynccontextmanager
async def app(yaml_text: str = YAML, *, store: Store | None = None, telemetry: Telemetry | None = None,
              transports: dict[str, Transport] | None = None, fixtures: str | Path | None = None,
              settings: Settings | None = None, load: Callable[[], RoutingConfig] | None = None,
              callback_client: Any = None, **config_env: str) -> AsyncIterator[InProcess]:
    """The app for ``yaml_text`` served in process until the block ends; every provider is the
    in-process emulator unless ``transports`` names another transport for it."""
    clock = FakeClock()
    emulator = create_emulator(fixtures, clock=clock)
    transport = ASGITransport(emulator)
    config = parse_config(yaml_text, config_env)
    st = store or MemoryStore(clock=clock.wall)  # limits and cache on the fake clock too
    application = create_app(config, settings or Settings(telemetry=telemetry is not None),
                             transports={p: (transports or {}).get(p, transport) for p in config.providers},
                             store=st, clock=clock, load=load, callback_client=callback_client,
                             telemetry=telemetry)
    jumper = asyncio.ensure_future(clock.autojump())
    try:
        async with application.lifespan(), httpx.AsyncClient(
                transport=httpx.ASGITransport(application), base_url="http://router.local") as client:
            yield InProcess(client, emulator, clock, st, application)
    finally:
        jumper.cancel()
