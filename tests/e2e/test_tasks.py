"""POST /v1/tasks end to end: router and emulator as real processes, real HTTP on loopback. (The
pipeline's task tests run in process in tests/unit/test_tasks.py; what stays here is what only the
router process shows: its health endpoints over a real socket and a log that never holds a key.)"""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import SECRET_ANTHROPIC, SECRET_ZAI

pytestmark = pytest.mark.e2e


def test_health_ready_routes_and_no_secret(client: httpx.Client, router_proc) -> None:  # type: ignore[no-untyped-def]
    router, proc = router_proc
    assert client.get(router + "/healthz").json() == {"status": "ok"}
    ready = client.get(router + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["stores"]["kind"] == "memory"
    routes = client.get(router + "/v1/routes")
    view = routes.json()
    assert view["tasks"]["quick_summary"]["chain"][0] == "nokey/claude-haiku-5-5"
    assert view["providers"]["glm"]["api_key"] == "set"
    assert view["providers"]["nokey"]["usable"] is False
    for text in (routes.text, ready.text, proc.output()):
        assert SECRET_ZAI not in text and SECRET_ANTHROPIC not in text
    assert client.get(router + "/nope").json()["error"]["type"] == "not_found_error"
    assert client.get(router + "/v1/tasks").status_code == 405
