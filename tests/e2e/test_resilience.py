"""What of resilience crosses a real socket: a caller that disconnects mid-stream cancels the
upstream call and gets no fallback. The emulator is a real process, the router is served over
real HTTP. (Fallback, retries, cooldowns and timeouts run in process on the fake clock:
tests/unit/test_resilience.py.)"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from router.emulator import free_port
from tests.e2e._client import ask
from tests.e2e._inproc import FakeTime, serve
from tests.unit.test_resilience import config as unit_config

pytestmark = pytest.mark.e2e


def config(emu: str, **kw: Any) -> str:
    """The in-process resilience tests' config, with the emulator process as the upstream."""
    return unit_config(emu=emu, dead=f"http://127.0.0.1:{free_port()}/v1", **kw)


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def emu(emulator: str) -> str:
    httpx.post(emulator + "/_emulator/reset")
    return emulator


def stats(emu: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(emu + "/_emulator/stats").json()


def unique() -> str:
    return uuid.uuid4().hex  # a fresh prompt: the emulator's `times` counts identical requests


def post(url: str, task: str, spec: dict, *, stream: bool = False, **extra) -> httpx.Response:  # type: ignore[no-untyped-def,type-arg]
    return httpx.post(url + "/v1/tasks", json={"task": task, "messages": ask(unique(), spec),
                                                "stream": stream, **extra}, timeout=30)


def test_caller_disconnect_cancels_upstream_without_fallback(emu: str, fake: FakeTime) -> None:
    spec = {"glm-a": {"text": " ".join(["w"] * 40), "chunk_delay_ms": 50}}
    with serve(config(emu), sleep=fake.sleep, wall=fake.wall) as url, httpx.Client(timeout=10) as c:
        with connect_sse(c, "POST", url + "/v1/tasks",
                         json={"task": "t", "stream": True, "messages": ask(unique(), spec)}) as es:
            seen = []
            for sse in es.iter_sse():
                seen.append(json.loads(sse.data)["type"])
                if len(seen) == 3:
                    break
        deadline = time.monotonic() + 5
        while stats(emu)["glm-a"]["aborted"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert seen == ["start", "text.delta", "text.delta"]
    s = stats(emu)
    assert s["glm-a"]["aborted"] == 1 and s["glm-a"]["completed"] == 0
    assert "claude-a" not in s  # no fallback for a caller that left
