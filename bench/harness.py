"""Start the emulator and a router for a benchmark, as processes on loopback, and stop them."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from router.emulator import free_port

__all__ = ["Running", "bench_config", "running", "twenty_words"]


def bench_config(emu: str, timeouts: str = "", stream_upstream: bool = True) -> str:
    """routing.yaml with one task, ``bench``, on one GLM-style target at the emulator ``emu``
    (``stream_upstream``: the provider's setting, whether a non-streamed caller's call streams)."""
    return f"""
version: 1
providers:
  emu:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: bench
    stream_upstream: {"true" if stream_upstream else "false"}
    {"timeouts: " + timeouts if timeouts else ""}
    models: {{glm-4.6: {{context_window: 200000, price: {{input: 0.6, output: 2.2}}}}}}
tasks:
  bench: {{chain: [emu/glm-4.6]}}
"""


def twenty_words(n: int = 20, **behaviour: object) -> list[dict[str, str]]:
    """One user message scripting the emulator to answer ``n`` words (``n`` stream chunks)."""
    import json

    spec = {"text": " ".join(f"w{i}" for i in range(n)), **behaviour}
    return [{"role": "user", "content": "bench\nemulate: " + json.dumps({"*": spec})}]


class Running:
    """``emulator``/``router``: base URLs; ``router_pid``: the process to watch for CPU."""

    def __init__(self, emulator: str, router: str, router_pid: int) -> None:
        self.emulator, self.router, self.router_pid = emulator, router, router_pid


def _wait(url: str) -> None:
    for _ in range(600):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


@contextmanager
def running(routing_yaml: Callable[[str], str], workers: int = 1,
            env: dict[str, str] | Callable[[str], dict[str, str]] | None = None) -> Iterator[Running]:
    """Run ``llm-router emulate`` and ``llm-router serve`` on free ports; ``routing_yaml(emulator
    base URL)`` gives the router's config; ``env`` (or ``env(emulator base URL)``) is added to the
    router's environment (e.g. ``REDIS_URL``; without it the router runs with no REDIS_URL). Logs go
    to a temporary directory."""
    tmp = Path(tempfile.mkdtemp(prefix="llm-router-bench-"))
    eport, rport = free_port(), free_port()
    emu, url = f"http://127.0.0.1:{eport}", f"http://127.0.0.1:{rport}"
    (tmp / "routing.yaml").write_text(routing_yaml(emu))

    base_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}

    def start(args: list[str], log: str, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "router", *args], stdout=open(tmp / log, "wb"),  # noqa: SIM115
                                stderr=subprocess.STDOUT, start_new_session=True, env={**base_env, **(extra or {})})

    procs = [start(["emulate", "--port", str(eport)], "emulator.log"),
             start(["serve", "--config", str(tmp / "routing.yaml"), "--port", str(rport),
                    "--workers", str(workers)], "router.log", env(emu) if callable(env) else env)]
    try:
        _wait(emu + "/health")
        _wait(url + "/healthz")
        yield Running(emu, url, procs[1].pid)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
