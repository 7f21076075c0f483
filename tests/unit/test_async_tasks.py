"""Async tasks and batches in process: submission (202, Location, Prefer, idempotency), the worker
pool on the fake clock, quota-aware waiting within ``queue_share``, cancellation, batches, signed
callbacks retried with backoff; and the queue contract on the in-memory queue and a real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from router.queue import MemoryQueue, RedisQueue, TaskRecord
from router.stores.redis import RedisStore
from tests.unit._app import InProcess, app
from tests.unit._local import settle

YAML = """
version: 1
providers:
  glm:
    protocol: openai
    base_url: http://emulator/api/paas/v4
    api_key: k
    retry: {attempts: 1}
    limits: {rpm: 4}
    queue_share: 0.5
    models:
      glm-4.6: {context_window: 200000}
  bulk:
    protocol: openai
    base_url: http://emulator/api/paas/v4
    api_key: k
    models:
      glm-4.6: {context_window: 200000}
tasks:
  chat:
    chain: [glm/glm-4.6]
  bulk:
    chain: [bulk/glm-4.6]
  typed:
    chain: [glm/glm-4.6]
    user: "{{ text }}"
    input_schema: {type: object, properties: {text: {type: string}}, required: [text]}
tenants:
  svc:
    keys: ["%s"]
    callback_secret: s3cret
admin_keys: ["%s"]
queue: {workers: 2, visibility_timeout: 30}
""" % ("sha256:" + hashlib.sha256(b"key-1").hexdigest(), "sha256:" + hashlib.sha256(b"admin-1").hexdigest())

AUTH = {"authorization": "Bearer key-1"}


def run(test: Callable[[InProcess], Any], yaml_text: str = YAML, **kw: Any) -> None:
    async def go() -> None:
        async with app(yaml_text, **kw) as a:
            await test(a)

    asyncio.run(go())


def ask(text: str = "hi", **kw: Any) -> dict[str, Any]:
    return {"task": "chat", "mode": "async", "messages": [{"role": "user", "content": text}], **kw}


async def finished(a: InProcess, task_id: str) -> dict[str, Any]:
    """The task once it is no longer queued or running (the loop runs; fake time may jump)."""
    for _ in range(2000):
        got = (await a.client.get(f"/v1/tasks/{task_id}", headers=AUTH)).json()
        if got["status"] not in ("queued", "running"):
            return got  # type: ignore[no-any-return]
        await asyncio.sleep(0)
    raise AssertionError(f"task {task_id} never finished: {got}")


def test_submit_is_202_with_location_and_the_worker_answers() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", json=ask("Summarize: the sky.\nemulate: " + json.dumps({"*": {"text": "Blue."}})),
                                headers=AUTH)
        assert r.status_code == 202 and r.headers["location"] == f"/v1/tasks/{r.json()['id']}"
        assert r.json()["status"] == "queued" and r.json()["object"] == "task"
        done = await finished(a, r.json()["id"])
        assert done["status"] == "succeeded" and done["answer"]["text"] == "Blue." and done["runs"] == 1
        assert done["attempts"][0]["target"] == "glm/glm-4.6" and "request" not in done
        p = await a.client.post("/v1/tasks", json={"task": "typed", "input": {"text": "x"}}, headers={**AUTH, "prefer": "respond-async"})
        assert p.status_code == 202 and (await finished(a, p.json()["id"]))["status"] == "succeeded"
        queue = (await a.client.get("/v1/routes", headers={"authorization": "Bearer admin-1"})).json()["queue"]
        assert queue["kind"] == "memory" and queue["workers"] == 2 and queue["workers_here"] == {"total": 2, "busy": 0}
        assert queue["queued"] == {"high": 0, "normal": 0, "low": 0} and queue["callback_secret"] == "unset"
        metrics = (await a.client.get("/metrics")).text
        assert 'llm_router_queue_tasks_total{status="succeeded"} 2.0' in metrics

    run(t)


def test_bad_async_requests_are_400s_and_unknown_ids_404() -> None:
    async def t(a: InProcess) -> None:
        bad = await a.client.post("/v1/tasks", json={"task": "typed", "mode": "async", "input": {}}, headers=AUTH)
        assert bad.status_code == 400 and bad.json()["error"]["path"] == "input"  # checked before it is queued
        unknown = await a.client.post("/v1/tasks", json=ask(task="nope"), headers=AUTH)
        assert unknown.status_code == 404
        cb = await a.client.post("/v1/tasks", json=ask(callback_url="ftp://x"), headers=AUTH)
        assert cb.status_code == 400 and cb.json()["error"]["path"] == "callback_url"
        assert (await a.client.get("/v1/tasks/task_nope", headers=AUTH)).status_code == 404

    run(t)


def test_an_idempotency_key_returns_the_same_task() -> None:
    async def t(a: InProcess) -> None:
        one = await a.client.post("/v1/tasks", json=ask(idempotency_key="nightly-2026-12-01"), headers=AUTH)
        two = await a.client.post("/v1/tasks", json=ask(idempotency_key="nightly-2026-12-01"), headers=AUTH)
        assert one.status_code == two.status_code == 202 and one.json()["id"] == two.json()["id"]
        assert two.headers["x-llm-router-idempotent-replay"] == "true" and "x-llm-router-idempotent-replay" not in one.headers
        await finished(a, one.json()["id"])
        assert a.emulator.stats["glm-4.6"]["requests"] == 1

    run(t)


def test_cancel_a_queued_task_on_an_api_only_replica() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", json=ask(), headers=AUTH)
        c = await a.client.delete(f"/v1/tasks/{r.json()['id']}", headers=AUTH)
        assert c.status_code == 200 and c.json()["status"] == "cancelled"
        again = await a.client.delete(f"/v1/tasks/{r.json()['id']}", headers=AUTH)
        assert again.status_code == 409
        assert "glm-4.6" not in a.emulator.stats  # never ran

    run(t, YAML.replace("workers: 2", "workers: 0"))


def test_a_running_task_is_cancelled() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", json=ask("emulate: " + json.dumps({"*": {"delay_ms": 50_000}})), headers=AUTH)
        tid = r.json()["id"]
        await settle(lambda: a.emulator.stats.get("glm-4.6", {}).get("requests", 0) == 1)
        assert (await a.client.delete(f"/v1/tasks/{tid}", headers=AUTH)).status_code == 200
        done = await finished(a, tid)
        assert done["status"] == "cancelled" and done.get("answer") is None

    run(t)


def test_async_work_waits_for_quota_within_its_share_and_interactive_keeps_the_rest() -> None:
    """rpm 4 with queue_share 0.5: the queue gets 2 per minute, paced 30 s apart; interactive
    requests meanwhile are answered, none refused."""
    async def t(a: InProcess) -> None:
        t0 = a.clock.wall()
        ids = [(await a.client.post("/v1/tasks", json=ask(f"job {i}"), headers=AUTH)).json()["id"] for i in range(5)]
        first = await finished(a, ids[0])
        interactive = [await a.client.post("/v1/tasks", json={"task": "chat", "messages": [{"role": "user", "content": "now"}]},
                                           headers=AUTH) for _ in range(2)]
        assert [r.status_code for r in interactive] == [200, 200]
        done = [first] + [await finished(a, i) for i in ids[1:]]
        assert all(d["status"] == "succeeded" for d in done)  # none failed for the rate limit
        starts = sorted(d["finished_at"] for d in done)
        gaps = [b - c for b, c in zip(starts[1:], starts, strict=False)]
        assert min(gaps) >= 29.9 and starts[-1] - t0 >= 119  # paced: 2 per minute, the queue's share of 4
        assert a.emulator.stats["glm-4.6"]["requests"] == 7

    run(t)


def test_a_batch_runs_every_good_line_and_reports_bad_ones_in_order() -> None:
    lines = [{"custom_id": "a", "task": "chat", "messages": [{"role": "user", "content": "one"}]},
             {"custom_id": "b", "task": "nope", "messages": [{"role": "user", "content": "x"}]},
             "{not json",
             {"task": "chat", "messages": [{"role": "user", "content": "no id"}]},
             {"custom_id": "c", "task": "typed", "input": {"text": "two"}},
             {"custom_id": "a", "task": "chat", "messages": [{"role": "user", "content": "dup"}]}]
    body = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)

    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/batches", content=body, headers=AUTH)
        assert r.status_code == 202, r.text
        assert (r.json()["lines"], r.json()["invalid_lines"]) == (6, 4)
        bid = r.json()["id"]
        for _ in range(2000):
            got = (await a.client.get(f"/v1/batches/{bid}", headers=AUTH)).json()
            if got["status"] == "completed":
                break
            await asyncio.sleep(0)
        assert got["counts"]["succeeded"] == 2 and got["progress"] == 1.0
        rows = [json.loads(x) for x in (await a.client.get(f"/v1/batches/{bid}/results", headers=AUTH)).text.splitlines()]
        assert [(x["line"], x["custom_id"], x["status"]) for x in rows] == [
            (1, "a", "succeeded"), (2, "b", "invalid"), (3, None, "invalid"), (4, None, "invalid"),
            (5, "c", "succeeded"), (6, "a", "invalid")]
        assert rows[1]["error"]["status"] == 404 and rows[3]["error"]["path"] == "custom_id"
        assert rows[4]["answer"]["text"]
        other = await a.client.get(f"/v1/batches/{bid}")  # no key: auth is on
        assert other.status_code == 401

    run(t)


def test_a_batch_of_500_lines_with_10_bad_ones() -> None:
    bad = {7, 50, 99, 123, 200, 250, 311, 400, 432, 499}
    lines = ["{broken" if i in bad else json.dumps({"custom_id": f"c{i}", "task": "bulk", "priority": "low",
                                                    "messages": [{"role": "user", "content": f"line {i}"}]})
             for i in range(500)]

    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/batches", content="\n".join(lines), headers=AUTH)
        assert r.status_code == 202 and (r.json()["lines"], r.json()["invalid_lines"]) == (500, 10)
        bid = r.json()["id"]
        for _ in range(20_000):
            got = (await a.client.get(f"/v1/batches/{bid}", headers=AUTH)).json()
            if got["status"] == "completed":
                break
            await asyncio.sleep(0)
        assert got["counts"]["succeeded"] == 490, got
        rows = [json.loads(x) for x in (await a.client.get(f"/v1/batches/{bid}/results", headers=AUTH)).text.splitlines()]
        assert [x["line"] for x in rows] == list(range(1, 501))
        assert {x["line"] - 1 for x in rows if x["status"] == "invalid"} == bad
        assert all(x["answer"]["text"] for x in rows if x["status"] == "succeeded")

    run(t, YAML.replace("workers: 2", "workers: 8"))


def test_a_callback_that_fails_twice_is_retried_with_backoff_and_signed() -> None:
    seen: list[tuple[dict[str, str], bytes]] = []

    async def receiver(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        seen.append(({k.decode(): v.decode() for k, v in scope["headers"]}, body))
        status = 500 if len(seen) <= 2 else 204
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = httpx.AsyncClient(transport=httpx.ASGITransport(receiver))

    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", json=ask(callback_url="https://hooks.example/done"), headers=AUTH)
        tid = r.json()["id"]
        for _ in range(5000):
            got = (await a.client.get(f"/v1/tasks/{tid}", headers=AUTH)).json()
            if got.get("callback", {}).get("state") == "delivered":
                break
            await asyncio.sleep(0)
        cb = got["callback"]
        assert (cb["state"], cb["attempts"], cb["last_status"]) == ("delivered", 3, 204)
        assert len(seen) == 3
        headers, body = seen[-1]
        t_, mac = dict(p.split("=", 1) for p in headers["x-llm-router-signature"].split(","))["t"], \
            dict(p.split("=", 1) for p in headers["x-llm-router-signature"].split(","))["v1"]
        assert hmac.compare_digest(mac, hmac.new(b"s3cret", t_.encode() + b"." + body, hashlib.sha256).hexdigest())
        assert json.loads(body)["id"] == tid and json.loads(body)["status"] == "succeeded"
        assert headers["x-llm-router-task"] == tid

    run(t, callback_client=client)


# -- the queue contract, on both queues ---------------------------------------------------------

@pytest.fixture(params=["memory", "redis", "cluster"])
def make_queue(request: pytest.FixtureRequest) -> Callable[[list[float]], Any]:
    if request.param == "memory":
        return lambda now: MemoryQueue(clock=lambda: now[0])
    if request.param == "cluster":  # a real Redis Cluster: every queue key under one hash tag
        url, prefix = request.getfixturevalue("redis_cluster").url, "llmr-c-" + uuid.uuid4().hex[:8]
        return lambda now: RedisQueue(RedisStore(url, prefix=prefix).client, prefix)
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return lambda now: RedisQueue(RedisStore(url, prefix=prefix).client, prefix)


def record(tid: str, priority: str = "normal", key: str | None = None) -> TaskRecord:
    return TaskRecord(id=tid, task="chat", status="queued", priority=priority, created_at=0, updated_at=0,  # type: ignore[arg-type]
                      request={"task": "chat"}, idempotency_key=key)


def test_queue_contract(make_queue: Callable[[list[float]], Any]) -> None:
    async def go() -> None:
        now = [1000.0]
        q = make_queue(now)
        try:
            await q.submit(record("t1"), 60)
            await q.submit(record("t2", "high"), 60)
            assert (await q.submit(record("t3", key="k"), 60)).id == "t3"
            assert (await q.submit(record("t4", key="k"), 60)).id == "t3"  # idempotent
            c1 = await q.claim("w1", 30)
            assert c1.task_id == "t2"  # the highest priority first
            c2 = await q.claim("w1", 30)
            assert c2.task_id == "t1"
            depth = await q.depth(now[0])
            assert depth["running"] == 2 and depth["queued"]["normal"] == 1
            await q.ack(c1)
            rec = await q.get("t1")
            rec.status = "succeeded"
            assert await q.save(rec, 60) and not await q.save(rec, 60)  # the second completion is refused
            c3 = await q.claim("w2", 30)
            assert c3.task_id == "t3"
            if isinstance(q, MemoryQueue):
                now[0] += 31  # w1's claim on t1 lapsed
                lapsed = await q.claim("w2", 30)
            else:
                lapsed = await q.claim("w2", 0)  # any idle claim lapses at a visibility of 0
            assert lapsed is not None and lapsed.task_id in ("t1", "t3")
            await q.schedule_callback("t1", now[0] - 1)
            assert await q.due_callbacks(now[0], 30, 10) == ["t1"]
            assert await q.due_callbacks(now[0], 30, 10) == []  # leased
            await q.done_callback("t1")
        finally:
            if isinstance(q, RedisQueue):
                await q.client.aclose()

    asyncio.run(go())


def test_redis_takes_over_a_dead_workers_entry_behind_many_live_ones(redis_url: str, redis_prefix: str) -> None:
    """XAUTOCLAIM scans about 10 pending entries per call: the claim follows its cursor."""
    async def go() -> None:
        q = RedisQueue(RedisStore(redis_url, prefix=redis_prefix).client, redis_prefix)
        try:
            for i in range(15):
                await q.submit(record(f"t{i:02d}"), 60)
            claims = [await q.claim("w1", 30) for _ in range(15)]
            dead = claims[-1]
            await q.client.xclaim(q.streams["normal"], "workers", "w1", 0, [dead.entry], idle=60_000, justid=True)
            taken = await q.claim("w2", 30)  # the 14 others are fresh
            assert taken is not None and taken.task_id == dead.task_id and taken.consumer == "w2"
        finally:
            await q.client.aclose()

    asyncio.run(go())


def test_an_async_task_that_can_never_fit_its_limit_fails_instead_of_waiting_forever() -> None:
    yaml_text = YAML.replace("  svc:\n    keys:", "  svc:\n    limits: {tpm: 100}\n    keys:")

    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", json=ask(max_tokens=5000), headers=AUTH)
        done = await finished(a, r.json()["id"])
        assert done["status"] == "failed" and done["error"]["status"] == 429 and "limit is 100" in done["error"]["message"]

    run(t, yaml_text)


def test_async_tasks_run_on_a_redis_cluster_and_an_unformed_cluster_degrades_instead_of_aborting(
        redis_cluster: Any, tmp_path: Any) -> None:
    import shutil
    import subprocess

    from tests.conftest import _cluster_ports

    async def on_cluster() -> None:
        store = RedisStore(redis_cluster.url, prefix="llmr-c-" + uuid.uuid4().hex[:8], timeout=2.0)
        try:
            async with app(YAML, store=store) as a:
                r = await a.client.post("/v1/tasks", json=ask("on a cluster"), headers=AUTH)
                assert (await finished(a, r.json()["id"]))["status"] == "succeeded"
        finally:
            await store.close()

    asyncio.run(on_cluster())
    port = _cluster_ports(1)[0]  # one cluster-enabled node with no slots: "All slots are not covered"
    node = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--cluster-enabled",
                             "yes", "--save", "", "--appendonly", "no"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time

        import redis as sync_redis
        deadline = time.monotonic() + 10
        while True:
            try:
                sync_redis.Redis(port=port).ping()
                break
            except sync_redis.RedisError:
                assert time.monotonic() < deadline
                time.sleep(0.02)

        async def unformed() -> None:
            store = RedisStore(f"redis://127.0.0.1:{port}/0?cluster=true", prefix="x", timeout=0.5)
            try:
                async with app(YAML, store=store) as a:  # the lifespan starts: degraded, not aborted
                    ready = await a.client.get("/readyz")
                    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
                    r = await a.client.post("/v1/tasks", json={"task": "chat", "messages": [{"role": "user", "content": "x"}]},
                                            headers=AUTH)
                    assert r.status_code == 200  # on_store_error: allow
            finally:
                await store.close()

        asyncio.run(unformed())
    finally:
        node.kill()
        node.wait()
