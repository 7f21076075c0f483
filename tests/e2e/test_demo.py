"""`llm-router serve --demo` on the repo's routing.yaml with no API keys and no Redis."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from router.emulator import free_port
from tests.e2e._client import ask, stream_events
from tests.e2e.conftest import Proc

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_demo_serves_a_streamed_quick_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ZAI_API_KEY", "ANTHROPIC_API_KEY", "REDIS_URL", "ROUTER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    port = free_port()
    proc = Proc(["serve", "--demo", "--config", str(ROOT / "routing.yaml"), "--port", str(port)],
                tmp_path / "demo.log")
    try:
        url = f"http://127.0.0.1:{port}"
        proc.wait_http(url + "/healthz")
        with httpx.Client(timeout=10) as c:
            events = stream_events(c, url, {"task": "quick_summary", "messages": ask("Summarize: the sky is blue.")})
            assert events[0]["type"] == "start" and events[0]["provider"] == "glm"
            assert "".join(e["text"] for e in events if e["type"] == "text.delta")
            assert events[-1] == {"type": "end", "seq": len(events) - 1, "finish_reason": "stop"}
            deep = c.post(url + "/v1/tasks", json={"task": "deep_analysis", "messages": ask("Why?")})
            assert deep.status_code == 200 and deep.json()["provider"] == "claude"
        # the GLM integration guide's script, unchanged: Anthropic(base_url=...), model="glm-4.6"
        import anthropic

        with anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0) as client:
            msg = client.messages.create(model="glm-4.6", max_tokens=64,
                                         messages=[{"role": "user", "content": "Hello, GLM"}])
            assert msg.model == "glm-4.6" and msg.content[0].text  # type: ignore[union-attr]
    finally:
        proc.stop()
    log = proc.output()
    assert "built-in upstream emulator" in log and "in-memory" in log
