"""A/B in process: a shadow that hangs never slows the caller, is bounded by max_in_flight, and
its first-token timeout is recorded, on the fake clock (no 5-second wait). Variants across
replicas stay in tests/e2e/test_ab.py."""

from __future__ import annotations

import asyncio
import time
import uuid

from router.outcomes import Tracker
from tests.unit._app import InProcess, app, say

YAML = """
version: 1
providers:
  glm:
    protocol: openai
    base_url: http://emulator/api/paas/v4
    api_key: k
    retry: {attempts: 1}
    cooldown: {failures: 1000}
    timeouts: {first_token: 5, total: 10}
    models:
      glm-ab: {context_window: 200000, price: {input: 1, output: 2}}
      glm-shadow: {context_window: 200000, price: {input: 1, output: 1}}
tasks:
  shadowed:
    chain: [glm/glm-ab]
    shadow: {target: glm/glm-shadow, sample: 1.0, max_in_flight: 2}
"""


def _tracker(a: InProcess) -> Tracker:
    return a.app.state.live.router.tracker  # type: ignore[no-any-return]


def test_hanging_shadow_never_slows_the_caller() -> None:
    async def go() -> None:
        async with app(YAML) as a:
            spec = {"glm-shadow": {"hang": True}, "glm-ab": {"text": "primary answer"}}
            c0, t0 = a.clock.now(), time.perf_counter()
            answers = [await a.client.post("/v1/tasks", json={"task": "shadowed", "messages": say(spec, uuid.uuid4().hex)})
                       for _ in range(4)]
            took = a.clock.now() - c0
            assert all(r.status_code == 200 and r.json()["text"] == "primary answer" for r in answers)
            assert took < 2  # the shadow target hangs for its 5 s first-token timeout
            report = (await a.client.get("/v1/experiments/shadowed")).json()
            assert report["shadow"]["dropped"] == 2  # max_in_flight 2: the others were dropped, not queued
            tracker = _tracker(a)
            for _ in range(10_000):  # the shadows end at their 5 s timeout: fake time, no real wait
                if not tracker._tasks:
                    break
                await asyncio.sleep(0)
            assert a.clock.now() - c0 >= 5
            report = (await a.client.get("/v1/experiments/shadowed")).json()
            assert report["shadow"]["errors"] == 2 and report["shadow"]["recent"][0]["error"] == "first_token_timeout"
            assert report["variants"]["primary"]["requests"] == 4
            assert time.perf_counter() - t0 < 5

    asyncio.run(go())
