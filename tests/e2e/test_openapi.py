"""The OpenAPI document: valid 3.1, every route in it, and schemathesis against it.

The router is served over a real socket (uvicorn in a thread) with the upstream emulator in
process behind it; schemathesis generates a bounded number of requests per operation from the
document and checks that no answer is a server error and every answer (status, content type,
headers, body) conforms to the document."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from router.app import create_app
from router.emulator import create_emulator, free_port
from router.inproc import ASGITransport
from router.loading import parse_config
from router.settings import Settings
from router.stores import MemoryStore
from tests.unit._app import YAML

pytestmark = pytest.mark.e2e
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    config = parse_config(YAML, {})
    transport = ASGITransport(create_emulator())
    app = create_app(config, Settings(telemetry=False), transports={p: transport for p in config.providers},
                     store=MemoryStore())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "router did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def document(base_url: str) -> dict[str, object]:
    r = httpx.get(base_url + "/schema/openapi.json")
    assert r.status_code == 200
    doc: dict[str, object] = r.json()
    return doc


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> object:
    return schemathesis.openapi.from_url(base_url + "/schema/openapi.json")


def test_the_document_is_valid_openapi_31_with_every_route(document: dict[str, object], base_url: str) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    assert isinstance(paths, dict)
    assert {"/v1/tasks", "/v1/chat/completions", "/v1/messages", "/api/chat", "/v1/models", "/v1/routes",
            "/v1/usage", "/v1/feedback", "/v1/experiments/{task}", "/metrics", "/healthz", "/readyz"} <= set(paths)
    tasks = paths["/v1/tasks"]["post"]
    assert tasks["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TaskRequest"}
    assert "X-Request-ID" in tasks["responses"]["200"]["headers"] and "Retry-After" in tasks["responses"]["429"]["headers"]
    assert httpx.get(base_url + "/schema").text.lstrip().startswith("<!DOCTYPE html>")


def test_every_operation_conforms(api_schema: object) -> None:
    """Each operation: up to 25 requests (derandomized: the same ones every run), valid and invalid
    by the document, and the document's own examples."""
    calls: dict[str, int] = {}
    for result in api_schema.get_all_operations():  # type: ignore[attr-defined]
        operation = result.ok()
        strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE),
                      *operation.get_strategies_from_examples()]

        @given(case=st.one_of(strategies))
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def conforms(case: schemathesis.Case) -> None:
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            case.call_and_validate(checks=CHECKS, timeout=10)

        conforms()
    assert len(calls) >= 13 and sum(calls.values()) >= 60, calls
