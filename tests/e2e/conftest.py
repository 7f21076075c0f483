"""Real processes on loopback: the upstream emulator and the router, started once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from router.emulator import free_port
from tests.wire._sse import WIRE

SECRET_ZAI = "zk-test-SECRET-7f3a9c"
SECRET_ANTHROPIC = "sk-ant-test-SECRET-51b0e2"


class Proc:
    """A child process with its output in a file (read it to check what was logged)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen([sys.executable, "-m", "router", *args], stdout=self._out,
                                  stderr=subprocess.STDOUT,
                                  # no drain on SIGTERM unless a test asks: stopping takes no 5 s grace
                                  env={**os.environ, "LLM_ROUTER_DRAIN_GRACE": "0", **(env or {})},
                                  start_new_session=True)

    def wait_http(self, url: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"process exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"{url} did not answer: {self.log.read_text()[-2000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._out.close()


def routing_yaml(upstream: str) -> str:
    """A config whose providers are all the emulator: GLM style, Anthropic style, OpenAI style,
    and one whose key variable is unset."""
    return f"""
version: 1
providers:
  glm:
    protocol: openai
    base_url: {upstream}/api/paas/v4
    api_key: ${{TEST_ZAI_KEY}}
    retry: {{initial_wait: 0.001}}
    cooldown: {{failures: 1000}}        # tests share this router; test_resilience covers cooldowns
    models:
      glm-4.6: {{context_window: 200000, price: {{input: 0.60, output: 2.20}}}}
      glm-4.5-air: {{context_window: 128000, price: {{input: 0.20, output: 1.10}}}}
  claude:
    protocol: anthropic
    base_url: {upstream}
    api_key: ${{TEST_ANTHROPIC_KEY}}
    retry: {{initial_wait: 0.001}}
    cooldown: {{failures: 1000}}
    models:
      claude-sonnet-5-5: {{context_window: 200000, price: {{input: 3.00, output: 15.00}}, vision: true}}
  oai:
    protocol: openai
    base_url: {upstream}/v1
    api_key: ${{TEST_ZAI_KEY}}
    models:
      gpt-4o: {{context_window: 128000}}
  flaky:                             # cooldowns on: the recovery test's own provider
    protocol: openai
    base_url: {upstream}/api/paas/v4
    api_key: ${{TEST_ZAI_KEY}}
    retry: {{attempts: 1}}
    cooldown: {{failures: 2, window: 60, duration: 0.3}}
    models:
      glm-flaky: {{context_window: 200000}}
  nokey:
    protocol: anthropic
    base_url: {upstream}
    api_key: ${{TEST_UNSET_KEY_VARIABLE}}
    models:
      claude-haiku-5-5: {{context_window: 200000, price: {{input: 1.00, output: 5.00}}}}
tasks:
  glm_task:
    chain: [glm/glm-4.6]
    params: {{max_tokens: 256, temperature: 0.3}}
  claude_task:
    chain: [claude/claude-sonnet-5-5]
    params: {{max_tokens: 256}}
  oai_task:
    chain: [oai/gpt-4o]
  quick_summary:
    chain: [nokey/claude-haiku-5-5, glm/glm-4.5-air, claude/claude-sonnet-5-5]
    params: {{max_tokens: 128}}
  nothing_usable:
    chain: [nokey/claude-haiku-5-5]
  chat:
    chain: [glm/glm-4.6]
  one_per_minute:
    chain: [glm/glm-4.6]
    limits: {{rpm: 1}}
  failover:                          # the failover issue's behaviours over real processes
    chain: [glm/glm-4.6, claude/claude-sonnet-5-5]
    params: {{max_tokens: 64}}
    timeouts: {{first_token: 0.25}}
  recovering:
    chain: [flaky/glm-flaky, claude/claude-sonnet-5-5]
    params: {{max_tokens: 64}}
  hedged:
    chain: [glm/glm-4.6, claude/claude-sonnet-5-5]
    params: {{max_tokens: 64}}
    hedge: {{after: 0.15}}
"""


READ_TIMEOUT = 0.25  # seconds: the session router's header and body read timeout


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = Proc(["emulate", "--port", str(port), "--fixtures", str(WIRE)],
                tmp_path_factory.mktemp("emulator") / "emulator.log")
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url + "/health")
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def router_proc(emulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Proc]]:
    d = tmp_path_factory.mktemp("router")
    (d / "routing.yaml").write_text(routing_yaml(emulator))
    port = free_port()
    env = {"TEST_ZAI_KEY": SECRET_ZAI, "TEST_ANTHROPIC_KEY": SECRET_ANTHROPIC,
           "LLM_ROUTER_READ_TIMEOUT": str(READ_TIMEOUT)}  # short, so the slow-client tests are quick
    env.pop("TEST_UNSET_KEY_VARIABLE", None)
    proc = Proc(["serve", "--config", str(d / "routing.yaml"), "--port", str(port)], d / "router.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url + "/healthz")
        yield url, proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def router(router_proc: tuple[str, Proc]) -> str:
    return router_proc[0]


@pytest.fixture
def oai(router: str) -> Iterator[openai.OpenAI]:
    """The official openai SDK, its base URL the session router."""
    with openai.OpenAI(base_url=router + "/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
def ant(router: str) -> Iterator[anthropic.Anthropic]:
    """The official anthropic SDK, its base URL the session router."""
    with anthropic.Anthropic(base_url=router, api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c
