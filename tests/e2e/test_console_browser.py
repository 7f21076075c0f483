"""The console in a real browser: Debian's headless Chromium driven by Playwright against a router
served on loopback (its upstreams the session's emulator process).

With ``LLM_ROUTER_SCREENSHOTS=<dir>`` set, the page test saves a screenshot of every page there
(the README's come from ``LLM_ROUTER_SCREENSHOTS=docs/console``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.stores import MemoryStore
from router.telemetry import Telemetry
from tests.e2e._inproc import serve

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ADMIN_KEY, TENANT_KEY = "console-admin-key", "console-tenant-key"


def _yaml(upstream: str, auth: bool = False) -> str:
    text = f"""
version: 1
providers:
  glm:
    protocol: openai
    base_url: {upstream}/api/paas/v4
    api_key: k
    retry: {{attempts: 1}}
    limits: {{rpm: 600, tpm: 2000000}}
    models:
      glm-4.6: {{context_window: 200000, price: {{input: 0.60, output: 2.20}}}}
  brittle:
    protocol: openai
    base_url: {upstream}/api/paas/v4
    api_key: k
    retry: {{attempts: 1}}
    cooldown: {{failures: 1, window: 60, duration: 300}}
    models:
      glm-4.5-air: {{context_window: 128000, price: {{input: 0.20, output: 1.10}}}}
  claude:
    protocol: anthropic
    base_url: {upstream}
    api_key: k
    retry: {{attempts: 1}}
    models:
      claude-sonnet-5-5: {{context_window: 200000, price: {{input: 3.00, output: 15.00}}}}
tasks:
  summarize:
    chain: [glm/glm-4.6, claude/claude-sonnet-5-5]
    budget: {{daily_usd: 5}}
    shadow: {{target: claude/claude-sonnet-5-5, sample: 1.0}}
  brittle_task:
    chain: [brittle/glm-4.5-air, glm/glm-4.6]
  ab:
    chain: [glm/glm-4.6]
    experiment:
      variants:
        glm_first: {{chain: [glm/glm-4.6, claude/claude-sonnet-5-5], weight: 50}}
        claude_first: {{chain: [claude/claude-sonnet-5-5, glm/glm-4.6], weight: 50}}
"""
    if auth:
        text += f"""tenants:
  svc: {{keys: ["sha256:{hashlib.sha256(TENANT_KEY.encode()).hexdigest()}"]}}
admin_keys: ["sha256:{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}"]
"""
    return text


def _seeded(n: int, errors: int, lat_mean: float, lat_sd: float, feedback: float) -> dict[str, float]:
    """A variant's counters as the outcome tracker writes them."""
    ok = n - errors
    return {"requests": n, "errors": errors, "latency_ms_sum": n * lat_mean, "latency_sq_n": n,
            "latency_ms_sq": (n - 1) * lat_sd ** 2 + n * lat_mean ** 2, "latency_le_1000": n,
            "ttft_n": ok, "ttft_ms_sum": ok * lat_mean / 4, "ttft_sq_n": ok,
            "ttft_ms_sq": (ok - 1) * 400 + ok * (lat_mean / 4) ** 2,
            "cost_n": ok, "cost_usd": ok * 0.002, "cost_answer_usd": ok * 0.002,
            "cost_usd_sq": (ok - 1) * 1e-8 + ok * 0.002 ** 2,
            "feedback_count": 50, "feedback_sum": 50 * feedback, "feedback_sq_n": 50,
            "feedback_sq": 49 * 0.25 + 50 * feedback ** 2}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def console(emulator: str) -> Iterator[tuple[str, MemoryStore]]:
    """A router with the console open (no tenants), its store seeded with experiment outcomes."""
    store = MemoryStore()
    with serve(_yaml(emulator), store=store, telemetry=Telemetry(ledger_flush_seconds=0.1)) as url:
        async def seed() -> None:
            await store.stats_add("exp:ab:glm_first", _seeded(400, 8, 480.0, 90.0, 0.82))
            await store.stats_add("exp:ab:claude_first", _seeded(410, 41, 520.0, 95.0, 0.80))

        asyncio.run(seed())
        yield url, store


class Page:
    """A browser page that remembers every console error and uncaught exception."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1300, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    p = Page(browser)
    yield p
    p.close()


def _traffic(url: str, n: int = 6) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(n):
            r = c.post("/v1/tasks", json={"task": "summarize", "metadata": {"user": f"u{i}"},
                                          "messages": [{"role": "user", "content": f"Summarize item {i}."}]})
            assert r.status_code == 200, r.text
        fallback = 'emulate: {"glm-4.6": {"status": 500}, "*": {"text": "from claude"}}'
        assert c.post("/v1/tasks", json={"task": "summarize", "messages": [
            {"role": "user", "content": f"Fall back.\n{fallback}"}]}).status_code == 200


def test_every_page_loads_without_console_errors(console: tuple[str, MemoryStore], page: Page) -> None:
    url, _ = console
    _traffic(url)
    shots = os.environ.get("LLM_ROUTER_SCREENSHOTS")
    waits = {"now": "#chains tbody tr", "traffic": "#traffic-rows tbody tr", "experiments": "[data-experiment=ab] table.variants",
             "check": "#check-text", "requests": "#requests tbody tr"}
    for name, selector in waits.items():
        page.page.goto(f"{url}/ui/#{name}")
        page.page.wait_for_selector(selector, timeout=10_000)
        if name == "check":
            page.page.fill("#check-text", _yaml("http://127.0.0.1:1").replace("chain: [brittle/glm-4.5-air", "chain: [brittel/glm-4.5-air"))
            page.page.click("#check-run")
            page.page.wait_for_selector("#check-problems li")
        if name == "experiments":  # the shadow's answers beside the primary's
            page.page.wait_for_selector("[data-experiment=summarize] .pairs pre", timeout=10_000)
        if name == "traffic":
            page.page.wait_for_function("() => Chart.getChart('chart-requests')?.data.datasets.length > 0")
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            page.page.screenshot(path=str(Path(shots) / f"{name}.png"), full_page=True)
    assert page.errors == []
    text = page.page.inner_text("#requests")
    assert "summarize" in text and "glm/glm-4.6:error" in text  # the fallback's attempts


def test_a_tripped_circuit_shows_within_two_seconds(console: tuple[str, MemoryStore], page: Page) -> None:
    url, _ = console
    page.page.goto(f"{url}/ui/#now")
    row = 'tr[data-target="brittle/glm-4.5-air"]'
    page.page.wait_for_selector(f'{row} [data-circuit="closed"]', timeout=10_000)
    with httpx.Client(base_url=url, timeout=30) as c:
        failing = 'emulate: {"glm-4.5-air": {"status": 500}, "*": {"text": "fine"}}'
        r = c.post("/v1/tasks", json={"task": "brittle_task", "messages": [{"role": "user", "content": f"x\n{failing}"}]})
        assert r.status_code == 200 and r.headers["x-llm-router-target"] == "glm/glm-4.6"
    tripped = time.monotonic()
    page.page.wait_for_selector(f'{row} [data-circuit="open"]', timeout=2_000)
    assert time.monotonic() - tripped < 2.0
    assert "until" in page.page.inner_text(row)
    assert page.errors == []


def test_an_experiments_intervals_render_from_seeded_outcomes(console: tuple[str, MemoryStore], page: Page) -> None:
    url, _ = console
    page.page.goto(f"{url}/ui/#experiments")
    page.page.wait_for_selector('[data-experiment=ab] [data-variant="claude_first"]', timeout=10_000)
    report = next(t for t in httpx.get(f"{url}/ui/api/experiments").json()["tasks"] if t["task"] == "ab")
    expected = report["variants"]["claude_first"]["ci95"]["error_rate"]["ci95"]
    drawn = page.page.evaluate("() => Chart.getChart('ci-ab-error_rate').data.datasets[0].data")
    assert drawn[1] == expected and drawn[0][0] < 0.02 < drawn[0][1]  # glm_first: 8 of 400
    cells = page.page.inner_text('[data-variant="claude_first"]')
    assert "10.0%" in cells and f"[{100 * expected[0]:.1f}%, {100 * expected[1]:.1f}%]" in cells
    statement = page.page.inner_text('[data-experiment=ab] li[data-significant="true"]')
    assert statement.startswith("error rate: claude_first is higher than glm_first") and "significant at 95%" in statement
    assert page.page.locator('[data-experiment=ab] li[data-significant="false"]').count() >= 1  # latency, say
    assert page.errors == []


def test_a_broken_edit_reports_its_location(console: tuple[str, MemoryStore], page: Page) -> None:
    url, _ = console
    broken = _yaml("http://127.0.0.1:1").replace("    retry: {attempts: 1}\n", "    retry: {attempts: one}\n", 1)
    line = broken.splitlines().index("    retry: {attempts: one}") + 1
    page.page.goto(f"{url}/ui/#check")
    page.page.fill("#check-text", broken)
    page.page.click("#check-run")
    page.page.wait_for_selector("#check-problems li")
    problem = page.page.inner_text("#check-problems li")
    assert problem.startswith(f"line {line}: providers.glm.retry.attempts:")
    assert page.page.inner_text("#check-gutter span.badline").strip() == str(line)
    assert "problem" in page.page.inner_text("#check-verdict")
    page.page.fill("#check-text", _yaml("http://127.0.0.1:1").replace("[glm/glm-4.6, claude/claude-sonnet-5-5]\n    budget",
                                                                     "[claude/claude-sonnet-5-5, glm/glm-4.6]\n    budget"))
    page.page.click("#check-run")
    page.page.wait_for_selector('#check-diff tr[data-change="changed"]')
    assert "claude/claude-sonnet-5-5 → glm/glm-4.6" in page.page.inner_text('#check-diff tr[data-change="changed"]')
    assert page.errors == []


def test_the_console_refuses_without_the_admin_key(emulator: str, page: Page) -> None:
    with serve(_yaml(emulator, auth=True), telemetry=Telemetry()) as url:
        page.page.goto(f"{url}/ui/#now")
        page.page.wait_for_selector("#login:not([hidden])")
        assert "admin API key is required" in page.page.inner_text("#login-why")
        assert page.page.locator("#chains").count() == 0
        page.page.fill("#login-key", TENANT_KEY)
        page.page.click("#login-form button")
        page.page.wait_for_function("() => document.getElementById('login-why').textContent.includes('needs an admin key')")
        assert page.page.locator("#chains").count() == 0
        page.page.fill("#login-key", ADMIN_KEY)
        page.page.click("#login-form button")
        page.page.wait_for_selector("#chains tbody tr")
        assert page.page.is_hidden("#login")
    # the refusals are the API's 401/403 answers, which the browser logs as failed loads; nothing else
    assert [e for e in page.errors if "status of 401" not in e and "status of 403" not in e] == []
    assert any("status of 401" in e for e in page.errors) and any("status of 403" in e for e in page.errors)
