"""The routes besides the doors (``router.routes``) and the app around them (``router.app``): models,
health, readiness, routing, usage, experiments, feedback and metrics; tenants and admin keys;
caller limits (``router.limits``) and what a failing store does to each; the per-request record
(``router.run``) as telemetry sees it; and the lifespan with a ``load`` callable (reload on
SIGHUP, a rejected edit), a Redis store and transports of its own."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.app import create_app, to_router_error
from router.auth import hash_key
from router.errors import RateLimited
from router.loading import load_config, parse_config
from router.settings import Settings
from router.stores import LimitResult, LimitSpec, MemoryStore, StoreError
from router.telemetry import Telemetry
from tests.unit._app import YAML, say, sse
from tests.unit._local import Local, served, settle

GLM, CLAUDE = "glm-4.6", "claude-sonnet-5-5"


def providers(yaml_text: str, extra: str) -> str:
    return yaml_text.replace("providers:\n", "providers:\n" + extra, 1)


ROUTES_YAML = providers(YAML, """  shadowp:
    protocol: anthropic
    base_url: http://emulator
    api_key: k
    models:
      claude-shadow: {context_window: 100000, limits: {rpm: 1}}
  nokey:
    protocol: openai
    base_url: http://emulator/v1
    api_key: ${LLMR_TEST_NEVER_SET}
    models:
      m: {context_window: 1000}
""") + """  ab:
    chain: [glm/glm-4.6]
    experiment:
      variants:
        g: {chain: [glm/glm-4.6], weight: 1}
        c: {chain: [claude/claude-sonnet-5-5], weight: 1}
  shadowed:
    chain: [glm/glm-4.6]
    shadow: {target: shadowp/claude-shadow, sample: 1}
"""

TENANT_KEY, SMALL_KEY, ADMIN_KEY = "sk-acme-1", "sk-small-1", "sk-admin-1"
TENANTS_YAML = ROUTES_YAML + f"""
tenants:
  acme:
    keys: ["{hash_key(TENANT_KEY)}"]
  small:
    keys: ["{hash_key(SMALL_KEY)}"]
    tasks: [chat]
    limits: {{rpm: 1}}
admin_keys: ["{hash_key(ADMIN_KEY)}"]
"""


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def run(test: Callable[[Local], Awaitable[None]], yaml_text: str = ROUTES_YAML, **kw: Any) -> None:
    async def go() -> None:
        async with served(yaml_text, **kw) as a:
            await test(a)

    asyncio.run(go())


class Down(MemoryStore):
    """A store that fails every call (its ping says so), as an unreachable Redis does."""

    kind = "redis"

    async def _down(self, *_: Any) -> Any:
        raise StoreError("store down")

    breaker_admit = breaker_success = breaker_failure = breaker_states = _down  # type: ignore[assignment]
    limit_acquire = limit_adjust = cache_get = cache_set = cache_get_or_lock = _down  # type: ignore[assignment]
    cache_set_unlock = lock = unlock = stats_add = stats_get = stats_get_many = kv_set = kv_get = _down  # type: ignore[assignment]
    log_push = log_get = _down  # type: ignore[assignment]

    async def ping(self) -> bool:
        return False


# -- models, health, readiness, routes ---------------------------------------------------------
def test_models_health_and_readiness() -> None:
    async def t(a: Local) -> None:
        r = await a.client.get("/v1/models")
        body = r.json()
        assert body["object"] == "list"
        ids = [m["id"] for m in body["data"]]
        tasks = list(a.router.config.tasks)
        assert ids[:len(tasks)] == tasks and "ab" in tasks
        targets = {"shadowp/claude-shadow", "nokey/m", "glm/glm-4.6", "claude/claude-sonnet-5-5"}
        assert set(ids[len(tasks):]) == targets | {t.split("/")[1] for t in targets}  # model ids, and pinned
        owners = {m["id"]: m["owned_by"] for m in body["data"]}
        assert owners["chat"] == "llm-router" and owners["glm/glm-4.6"] == "glm" and owners["nokey/m"] == "nokey"
        assert all(m["object"] == "model" for m in body["data"])
        r = await a.client.get("/health")
        assert r.json()["status"] == "healthy" and r.json()["zai_client_initialized"] is True
        assert r.json()["timestamp"][:4].isdigit()
        assert (await a.client.get("/healthz")).json() == {"status": "ok"}
        r = await a.client.get("/readyz")
        ready = r.json()
        assert r.status_code == 200 and ready["status"] == "ready" and ready["pid"] == os.getpid()
        assert ready["stores"] == {"kind": "memory", "status": "ok"}
        assert ready["config"]["version"] == a.router.config.digest and ready["config"]["rejected"] is None

    run(t)


def test_routes_show_the_effective_routing_without_secrets() -> None:
    async def t(a: Local) -> None:
        r = await a.client.get("/v1/routes")
        view = r.json()
        assert r.status_code == 200 and view["config"]["version"] == a.router.config.digest
        chat = view["tasks"]["chat"]
        assert chat["chain"] == ["glm/glm-4.6"] and chat["midstream"] == "error" and chat["cache"] is None
        assert set(chat["policies"]) == {"glm/glm-4.6"}
        assert view["tasks"]["cached"]["cache"]["ttl"] == 60
        glm = view["providers"]["glm"]
        assert glm["api_key"] == "set" and glm["usable"] is True and "unusable_reason" not in glm
        assert glm["protocol"] == "openai" and "glm-4.6" in glm["models"]
        nokey = view["providers"]["nokey"]
        assert nokey["api_key"] == "unset" and nokey["usable"] is False
        assert "LLMR_TEST_NEVER_SET" in nokey["unusable_reason"]
        assert view["limits"]["tasks"] == {"limited": {"rpm": 2, "tpm": None}}
        assert view["limits"]["models"] == {"shadowp/claude-shadow": {"rpm": 1, "tpm": None}}
        assert view["limits"]["on_store_error"] == "allow"
        assert view["targets"]["glm/glm-4.6"]["state"] == "closed"
        assert '"k"' not in r.text and ": \"k\"" not in r.text  # the providers' api_key value is never shown
        # three retryable failures in a row open glm's circuit, and the view says so
        r = await a.client.post("/v1/tasks", json={"task": "chat", "messages": say({"*": {"status": 503}})})
        assert r.status_code == 502
        targets = (await a.client.get("/v1/routes")).json()["targets"]
        assert targets["glm/glm-4.6"]["state"] == "open" and targets["glm/glm-4.6"]["trips"] == 1
        assert targets["claude/claude-sonnet-5-5"]["state"] == "closed"

    run(t)


# -- tenants and admin keys --------------------------------------------------------------------
def test_tenants_keys_and_admin_endpoints() -> None:
    async def t(a: Local) -> None:
        c = a.client
        assert (await c.get("/v1/models")).status_code == 401
        r = await c.get("/v1/models", headers={"x-api-key": TENANT_KEY})
        assert r.status_code == 200 and r.json()["data"]
        assert (await c.get("/v1/models", headers=bearer("sk-nobody"))).status_code == 401
        for path in ("/v1/routes", "/v1/usage", "/v1/experiments/ab"):
            r = await c.get(path)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", path
            r = await c.get(path, headers=bearer(TENANT_KEY))
            assert r.status_code == 403 and r.json()["error"]["message"] == "this endpoint needs an admin key", path
            assert (await c.get(path, headers=bearer(ADMIN_KEY))).status_code == 200, path
        view = (await c.get("/v1/routes", headers=bearer(ADMIN_KEY))).json()
        assert view["tenants"]["small"] == {"keys": 1, "tasks": ["chat"], "limits": {"rpm": 1, "tpm": None}}
        assert view["tenants"]["acme"]["tasks"] is None
        text = (await c.get("/v1/routes", headers=bearer(ADMIN_KEY))).text
        assert hash_key(TENANT_KEY) not in text and hash_key(ADMIN_KEY) not in text
        # the admin key is not a tenant's: it cannot call a door
        r = await c.post("/v1/tasks", json={"task": "chat", "messages": say()}, headers=bearer(ADMIN_KEY))
        assert r.status_code == 401
        # a tenant's own limits replace the per-caller ones; its task list is enforced
        ok = await c.post("/v1/tasks", json={"task": "chat", "messages": say()}, headers=bearer(SMALL_KEY))
        assert ok.status_code == 200 and ok.headers["x-ratelimit-limit"] == "1"
        r = await c.post("/v1/tasks", json={"task": "chat", "messages": say()}, headers=bearer(SMALL_KEY))
        assert r.status_code == 429 and r.json()["error"]["message"] == "caller 'small' is over its rate limit"
        r = await c.post("/v1/tasks", json={"task": "t", "messages": say()}, headers=bearer(SMALL_KEY))
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        r = await c.post("/v1/tasks", json={"task": "chat", "messages": say()}, headers=bearer(TENANT_KEY))
        assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers  # acme: no limits at all

    run(t, TENANTS_YAML)


# -- usage, metrics, and the per-request record -------------------------------------------------
def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def test_usage_totals_per_tenant_task_and_model_with_since_forms() -> None:
    tel = Telemetry(ledger_flush_seconds=0)

    async def t(a: Local) -> None:
        c = a.client
        spec = {"*": {"text": "counted", "input_tokens": 1000, "output_tokens": 100}}
        for key, task in ((TENANT_KEY, "chat"), (TENANT_KEY, "chat"), (TENANT_KEY, "cached"), (SMALL_KEY, "chat")):
            r = await c.post("/v1/tasks", json={"task": task, "messages": say(spec)}, headers=bearer(key))
            assert r.status_code == 200
        admin = bearer(ADMIN_KEY)

        async def usage(**params: str) -> dict[str, Any]:
            r = await c.get("/v1/usage", params=params, headers=admin)
            assert r.status_code == 200, r.text
            return dict(r.json())

        async def counted() -> bool:
            return bool((await usage())["total"]["requests"] == 4)

        for _ in range(200):
            if await counted():
                break
            await asyncio.sleep(0)
        body = await usage()
        assert body["total"]["requests"] == 4 and body["total"]["input_tokens"] == 4000
        assert body["total"]["cost_usd"] == pytest.approx(3 * (1000 * 0.6 + 100 * 2.2) / 1e6 + (1000 * 3 + 100 * 15) / 1e6)
        rows = {(r["tenant"], r["task"], r["model"]): r for r in body["rows"]}
        assert rows[("acme", "chat", "glm/glm-4.6")]["requests"] == 2
        assert rows[("acme", "cached", "claude/claude-sonnet-5-5")]["output_tokens"] == 100
        assert rows[("small", "chat", "glm/glm-4.6")]["requests"] == 1
        assert [r["tenant"] for r in (await usage(tenant="small"))["rows"]] == ["small"]
        assert {r["task"] for r in (await usage(task="cached"))["rows"]} == {"cached"}
        assert (await usage(since=_today()))["total"]["requests"] == 4
        an_hour_ago = time.time() - 3600  # the UTC day of that moment (yesterday just after midnight)
        assert (await usage(since=str(an_hour_ago)))["since"] == time.strftime("%Y-%m-%d", time.gmtime(an_hour_ago))
        assert (await usage(since="2999-01-01"))["rows"] == []
        r = await c.get("/v1/usage", params={"since": "last tuesday"}, headers=admin)
        assert r.status_code == 400 and r.json()["error"]["path"] == "since"
        # a cached answer is not billed again
        r = await c.post("/v1/tasks", json={"task": "cached", "messages": say(spec)}, headers=bearer(TENANT_KEY))
        assert r.json()["cached"] is True
        for _ in range(50):
            await asyncio.sleep(0)
        assert (await usage())["total"]["requests"] == 4

    run(t, TENANTS_YAML, telemetry=tel)


def test_metrics_and_the_request_log_from_each_requests_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_router.request")
    tel = Telemetry(ledger_flush_seconds=0)

    async def t(a: Local) -> None:
        c = a.client
        r = await c.post("/v1/tasks", json={"task": "chat", "messages": say({"*": {"text": "logged words"}}, "secret prompt")})
        assert r.status_code == 200
        r = await c.post("/v1/tasks", json={"task": "chat", "stream": True,
                                            "messages": say({"*": {"text": "a b c d e f", "cut_after": 3}}, "cut")})
        evs = sse(r.text)
        assert evs[-1]["type"] == "error"
        streamed = "".join(e["text"] for e in evs if e["type"] == "text.delta")
        r = await c.post("/v1/tasks", json={"task": "limited", "messages": say()}, headers={"x-caller": "m1"})
        r = await c.post("/v1/tasks", json={"task": "limited", "messages": say()}, headers={"x-caller": "m1"})
        r = await c.post("/v1/tasks", json={"task": "limited", "messages": say()}, headers={"x-caller": "m1"})
        assert r.status_code == 429

        def logged() -> list[dict[str, Any]]:
            return [rec.msg for rec in caplog.records if isinstance(rec.msg, dict) and rec.msg.get("event") == "request"]

        await settle(lambda: len(logged()) == 4)
        ok, cut = logged()[0], logged()[1]
        assert ok["outcome"] == "ok" and ok["status"] == 200 and ok["target"] == "glm/glm-4.6"
        assert ok["prompt"].startswith("secret prompt") and ok["output"] == "logged words"  # log_content: true
        assert ok["attempts"] == ["glm/glm-4.6:ok"] and ok["usage_estimated"] is False
        assert cut["outcome"] == "error" and cut["error"] == "stream_truncated" and cut["status"] == 502
        assert cut["usage_estimated"] is True and cut["output_tokens"] == len(streamed) // 4
        assert cut["input_tokens"] > 0 and cut["cost_usd"] > 0
        r = await c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert 'llm_router_requests_total{model="glm-4.6",outcome="ok",provider="glm",task="chat",variant=""} 1.0' in text
        assert 'outcome="error",provider="glm",task="chat"' in text
        assert 'llm_router_rate_limited_total{scope="caller",task="limited"} 1.0' in text

    run(t, ROUTES_YAML + "\nlog_content: true\n", telemetry=tel)


# -- experiments, shadow traffic, feedback ------------------------------------------------------
def test_experiment_report_and_feedback_attributed_to_the_variant() -> None:
    async def t(a: Local) -> None:
        c = a.client
        r = await c.get("/v1/experiments/chat")
        assert r.status_code == 404 and r.json()["error"]["message"].endswith("tasks that do: ab, shadowed")
        assert (await c.get("/v1/experiments/nope")).status_code == 404
        ids = []
        for i in range(6):
            r = await c.post("/v1/tasks", json={"task": "ab", "messages": say(), "metadata": {"user": f"u{i}"}})
            assert r.status_code == 200
            ids.append((r.json()["id"], r.json()["variant"]))
        await settle_store(a, [f"resp:{rid}" for rid, _ in ids])
        rid, variant = ids[0]
        r = await c.post("/v1/feedback", json={"id": rid, "score": 0.5, "label": "helpful"})
        assert r.status_code == 200 and r.json() == {"id": rid, "task": "ab", "variant": variant, "recorded": True}
        r = await c.post("/v1/feedback", json={"id": rid, "score": 1.0})
        report = (await c.get("/v1/experiments/ab")).json()
        assert report["task"] == "ab" and report["sticky_by"] == "metadata.user"
        assert set(report["variants"]) == {"g", "c"}
        assert sum(v["requests"] for v in report["variants"].values()) == 6
        for name, v in report["variants"].items():
            assert v["requests"] == sum(1 for _, var in ids if var == name) and v["errors"] == 0
            assert v["chain"] == (["glm/glm-4.6"] if name == "g" else ["claude/claude-sonnet-5-5"])
        assert report["variants"][variant]["feedback"] == {"count": 2, "mean_score": 0.75, "labels": {"helpful": 1}}
        r = await c.post("/v1/feedback", json={"id": "req_unknown", "score": 1})
        assert r.status_code == 404 and "req_unknown" in r.json()["error"]["message"]
        r = await c.post("/v1/feedback", json={"id": rid})
        assert r.status_code == 400 and r.json()["error"]["path"] == "score"
        r = await c.post("/v1/feedback", json={"id": rid, "score": 1, "label": "no spaces allowed"})
        assert r.status_code == 400 and r.json()["error"]["path"] == "label"

    run(t)


async def settle_store(a: Local, keys: list[str]) -> None:
    for _ in range(2000):
        if all([await a.store.kv_get(k) is not None for k in keys]):
            return
        await asyncio.sleep(0)
    raise AssertionError("the outcomes were never written")


def test_shadow_traffic_is_reported_and_respects_the_targets_quota() -> None:
    async def t(a: Local) -> None:
        c = a.client
        first = await c.post("/v1/tasks", json={"task": "shadowed", "messages": say({"*": {"text": "same words"}})})
        assert first.status_code == 200 and first.json()["provider"] == "glm"

        async def report() -> dict[str, Any]:
            return dict((await c.get("/v1/experiments/shadowed")).json())

        for _ in range(500):
            if (await report())["shadow"]["recent"]:
                break
            await asyncio.sleep(0)
        rep = await report()
        assert "sticky_by" not in rep and rep["variants"]["primary"]["chain"] == ["glm/glm-4.6"]
        shadow = rep["shadow"]
        assert shadow["target"] == "shadowp/claude-shadow" and shadow["sample"] == 1 and shadow["requests"] == 1
        (entry,) = shadow["recent"]
        assert entry["id"] == first.json()["id"] and entry["target"] == "shadowp/claude-shadow"
        assert entry["output"] == entry["primary_output"] == "same words" and entry["finish_reason"] == "stop"
        assert a.emulator.stats["claude-shadow"]["requests"] == 1
        second = await c.post("/v1/tasks", json={"task": "shadowed", "messages": say({"*": {"text": "again"}})})
        assert second.status_code == 200
        for _ in range(500):
            rep = await report()
            if rep["shadow"]["dropped"] and rep["variants"]["primary"]["requests"] == 2:
                break
            await asyncio.sleep(0)
        rep = await report()
        assert rep["shadow"]["dropped"] == 1 and rep["shadow"]["requests"] == 1  # over the model's rpm: dropped
        assert a.emulator.stats["claude-shadow"]["requests"] == 1 and rep["variants"]["primary"]["requests"] == 2

    run(t)


# -- a failing store ---------------------------------------------------------------------------
def test_a_failing_store_degrades_readiness_and_the_store_backed_routes_answer_503() -> None:
    async def t(a: Local) -> None:
        c = a.client
        r = await c.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        assert r.json()["stores"] == {"kind": "redis", "status": "unreachable"}
        r = await c.post("/v1/tasks", json={"task": "chat", "messages": say({"*": {"text": "served anyway"}})})
        assert r.status_code == 200 and r.json()["text"] == "served anyway"  # on_store_error: allow
        assert "x-ratelimit-limit" not in r.headers
        targets = (await c.get("/v1/routes")).json()["targets"]
        assert targets and all(v == {"state": "unknown"} for v in targets.values())
        for method, path, body in (("GET", "/v1/usage", None), ("POST", "/v1/feedback", {"id": "req_x", "score": 1})):
            r = await c.request(method, path, json=body)
            assert r.status_code == 503, path
            assert r.json() == {"error": {"type": "store_unavailable", "message": "the store (Redis) did not answer"}}
        r = await c.get("/v1/experiments/ab")
        assert r.status_code == 200 and r.json()["store"].startswith("unreachable")

    run(t, store=Down())


def test_store_errors_are_503_and_other_exceptions_say_only_internal_error() -> None:
    err = to_router_error(StoreError("boom"))
    assert (err.status, err.type, err.message) == (503, "store_unavailable", "the store (Redis) did not answer")
    assert to_router_error(ValueError("secret")).message == "internal error"
    limited = RateLimited("x", retry_after=1, headers={})
    assert to_router_error(limited) is limited


# -- caller limits -----------------------------------------------------------------------------
LIMITS_YAML = YAML + """
limits:
  per_caller: {rpm: 100, tpm: 20000}
"""


def test_x_caller_names_the_caller_and_must_be_well_formed() -> None:
    async def t(a: Local) -> None:
        c = a.client
        r = await c.post("/v1/tasks", json={"task": "limited", "messages": say()}, headers={"x-caller": "bad caller!"})
        assert r.status_code == 400 and r.json()["error"]["path"] == "headers.x-caller"
        for caller in ("svc-a", "svc-a", "svc-b", "svc-b"):
            r = await c.post("/v1/tasks", json={"task": "limited", "messages": say()}, headers={"x-caller": caller})
            assert r.status_code == 200, caller  # each caller has its own 2 per minute
        r = await c.post("/v1/tasks", json={"task": "limited", "messages": say()}, headers={"x-caller": "svc-a"})
        assert r.status_code == 429 and r.json()["error"]["message"] == "caller 'svc-a' is over its rate limit"

    run(t, YAML)


def test_tokens_per_minute_are_charged_by_estimate_then_settled_to_the_real_usage() -> None:
    async def t(a: Local) -> None:
        c = a.client
        body = {"task": "chat", "max_tokens": 1000, "messages": say({"*": {"input_tokens": 10, "output_tokens": 5}})}
        r1 = await c.post("/v1/tasks", json=body, headers={"x-caller": "tpm"})
        assert r1.status_code == 200 and r1.headers["x-ratelimit-limit-tokens"] == "20000"
        first = int(r1.headers["x-ratelimit-remaining-tokens"])
        estimate = 20000 - first
        assert estimate > 1000
        r2 = await c.post("/v1/tasks", json=body, headers={"x-caller": "tpm"})
        second = int(r2.headers["x-ratelimit-remaining-tokens"])
        # the first request's charge was settled down to its 15 tokens (10 in, 5 out), so after the
        # second's estimate 20000 - 15 - estimate remain (plus what refilled meanwhile), not 20000 - 2 * estimate
        assert first - 15 <= second <= first - 15 + 200
        r = await c.post("/v1/tasks", json={**body, "max_tokens": 50000}, headers={"x-caller": "tpm"})
        assert r.status_code == 429
        assert r.json()["error"]["message"].startswith("this request needs ~") and "the limit is 20000 per minute" in r.text
        assert r.headers["x-ratelimit-limit-tokens"] == "20000" and r.headers["retry-after"]

    run(t, LIMITS_YAML)


class LimitsDown(MemoryStore):
    async def limit_acquire(self, specs: list[LimitSpec]) -> LimitResult:
        raise StoreError("down")


class AdjustDown(MemoryStore):
    adjusted = 0

    async def limit_adjust(self, key: str, limit: int, delta: int) -> None:
        AdjustDown.adjusted += 1
        raise StoreError("down")


def test_on_store_error_allow_lets_requests_through_uncounted() -> None:
    async def t(a: Local) -> None:
        for _ in range(3):  # "limited" is 2 per minute: uncounted, all pass
            r = await a.client.post("/v1/tasks", json={"task": "limited", "messages": say()})
            assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers

    run(t, YAML, store=LimitsDown())


def test_on_store_error_deny_refuses_with_429() -> None:
    async def t(a: Local) -> None:
        r = await a.client.post("/v1/tasks", json={"task": "limited", "messages": say()})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["message"] == "the rate-limit store is unavailable and on_store_error is deny"
        r = await a.client.post("/v1/tasks", json={"task": "chat", "messages": say()})
        assert r.status_code == 200  # no limit applies to chat: nothing to ask the store

    run(t, YAML + "\non_store_error: deny\n", store=LimitsDown())


def test_a_refund_the_store_refuses_does_not_change_the_answer() -> None:
    AdjustDown.adjusted = 0

    async def t(a: Local) -> None:
        r = await a.client.post("/v1/tasks", json={"task": "limited", "messages": say({"*": {"status": 400}})})
        assert r.status_code == 502 and r.json()["error"]["type"] == "all_targets_failed"
        assert AdjustDown.adjusted == 1  # the unserved request's slot was to be refunded

    run(t, YAML, store=AdjustDown())


# -- the app's lifespan ------------------------------------------------------------------------
def test_before_the_lifespan_the_app_is_starting() -> None:
    async def go() -> None:
        application = create_app(parse_config(YAML, {}), Settings(), store=MemoryStore())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(application), base_url="http://r") as c:
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json() == {"status": "starting"}
            assert (await c.get("/health")).json()["zai_client_initialized"] is False

    asyncio.run(go())


FILE_YAML = """
version: 1
providers:
  glm:
    protocol: openai
    base_url: http://127.0.0.1:9/api/paas/v4
    api_key: k
    models:
      glm-4.6: {context_window: 200000}
  unkeyed:
    protocol: anthropic
    base_url: http://127.0.0.1:9
    api_key: ${LLMR_TEST_UNSET_KEY}
    models:
      c: {context_window: 1000}
tasks:
  chat:
    chain: [glm/glm-4.6]
"""


def test_lifespan_with_load_reloads_on_sighup_and_keeps_serving_after_a_rejected_edit(
        tmp_path: Path, redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMR_TEST_UNSET_KEY", raising=False)
    caplog.set_level(logging.WARNING, logger="llm_router")
    path = tmp_path / "routing.yaml"
    path.write_text(FILE_YAML)
    config = load_config(str(path))
    settings = Settings(redis_url=redis_url, redis_prefix=redis_prefix, redis_timeout=1.0, telemetry=False)

    async def go() -> None:
        application = create_app(config, settings, notes=["a startup note"], load=lambda: load_config(str(path)))
        async with application.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(application),
                                                             base_url="http://r") as c:
            live = application.state.live
            r = await c.get("/readyz")
            assert r.json()["status"] == "ready" and r.json()["stores"] == {"kind": "redis", "status": "ok"}
            assert r.json()["config"]["source"] == str(path)
            assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
            before = live.router
            path.write_text(FILE_YAML + "  added:\n    chain: [glm/glm-4.6]\n")
            os.kill(os.getpid(), signal.SIGHUP)
            await settle(lambda: "added" in live.router.config.tasks)
            assert live.router is not before
            assert "added" in [m["id"] for m in (await c.get("/v1/models")).json()["data"]]
            path.write_text(FILE_YAML + "  broken:\n    chain: [nowhere/x]\n")
            os.kill(os.getpid(), signal.SIGHUP)
            await settle(lambda: live.rejected is not None)
            rejected = (await c.get("/readyz")).json()["config"]["rejected"]
            assert rejected["reason"] in ("SIGHUP", "file changed", "file changed (poll)")
            assert any("tasks.broken.chain[0]" in e for e in rejected["errors"])
            assert "added" in live.router.config.tasks  # the last good config keeps serving
        assert not hasattr(application.state, "live")

    asyncio.run(go())
    warnings = [r.getMessage() for r in caplog.records if r.name == "llm_router"]
    assert "a startup note" in warnings
    assert any(w.startswith("provider unkeyed is unusable: ") and "LLMR_TEST_UNSET_KEY" in w for w in warnings)
    assert "stores: redis (reachable)" in warnings
    assert any(w.startswith("auth: off") for w in warnings)
    assert any(w.startswith(("config reloaded (SIGHUP)", "config reloaded (file changed")) for w in warnings)


def test_an_unreachable_redis_is_logged_at_startup(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="llm_router")
    settings = Settings(redis_url="redis://127.0.0.1:1/0", redis_prefix="llmr-" + uuid.uuid4().hex[:8],
                        redis_timeout=0.05, telemetry=False)

    async def go() -> None:
        application = create_app(parse_config(YAML, {}), settings)
        async with application.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(application),
                                                             base_url="http://r") as c:
            r = await c.get("/readyz")
            assert r.json()["status"] == "degraded" and r.json()["stores"]["status"] == "unreachable"

    asyncio.run(go())
    assert "stores: redis (NOT reachable yet: degraded until it answers)" in [r.getMessage() for r in caplog.records]
