"""The console's data, in process: the feed from run records, its rollups and recent list on both
stores, limits in use, edit checks with lines and a chain diff, experiment intervals and
significance, compare reports, and the admin key on every JSON route."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from router.config import RoutingConfig
from router.console.check import check_edit
from router.console.feed import ConsoleFeed, recent, traffic
from router.events import AttemptRecord
from router.experiments import significance, summarize
from router.ledger import WriteBehind
from router.limits import Limiter
from router.loading import ConfigError, parse_config
from router.reload import LiveConfig
from router.run import RequestRecord
from router.settings import Settings
from router.stores import MemoryStore, StoreError
from router.stores.redis import RedisStore
from router.telemetry import Telemetry
from tests.unit._app import YAML, app, say


def _rec(i: int, **kw: Any) -> RequestRecord:
    base: dict[str, Any] = {"request_id": f"req_{i}", "task": "t", "caller": "svc", "provider": "glm", "model": "glm-4.6",
                                "start_ns": time.time_ns(), "duration": 0.040, "ttft": 0.012, "input_tokens": 10, "output_tokens": 5,
                                "cost_usd": 0.001, "attempts": [AttemptRecord(target="glm/glm-4.6", outcome="ok")]}
    base.update(kw)
    return RequestRecord(**base)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryStore()
    return RedisStore(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"), timeout=1.0)


def test_the_feed_rolls_requests_up_per_minute_and_keeps_the_newest(store: Any) -> None:
    """Requests, errors, fallbacks counted against the target fallen away from, hedges, cache
    hits, percentiles within their buckets; the recent list newest first with its trace id and no
    content (content logging off)."""
    async def body() -> tuple[dict[str, Any], list[Any]]:
        batch = WriteBehind(store, 60)
        feed = ConsoleFeed(batch)
        for i in range(18):
            feed.add(_rec(i, duration=0.030 + i / 1000))
        feed.add(_rec(18, outcome="error", error_code="timeout", status=504, provider="", model="", ttft=None))
        feed.add(_rec(19, provider="claude", model="claude-sonnet-5-5", hedge="won", duration=0.9,
                      fallbacks=[("glm/glm-4.6", "claude/claude-sonnet-5-5", "timeout")], cooldown_trips=["glm/glm-4.6"]),
                 trace_id="ab" * 16)
        feed.add(_rec(20, cache="hit", outcome="cached", cost_usd=0.0))
        await batch.flush()
        try:
            return await traffic(store, time.time(), 5), await recent(store, 3)
        finally:
            await store.close()

    t, newest = asyncio.run(body())
    rows = {(r["task"], r["target"]): r for r in t["rows"]}
    glm, claude, none = rows[("t", "glm/glm-4.6")], rows[("t", "claude/claude-sonnet-5-5")], rows[("t", "none")]
    assert glm["requests"] == 19 and glm["fallbacks_from"] == 1 and glm["trips"] == 1 and glm["cache_hits"] == 1
    assert 20 <= glm["latency_p50_ms"] <= 50 and 10 <= glm["ttft_p50_ms"] <= 20  # within the 10-20 ms bucket
    assert claude["requests"] == 1 and claude["hedges"] == 1 and claude["hedges_won"] == 1 and claude["latency_p95_ms"] > 500
    assert none["errors"] == 1 and none["error_rate"] == 1.0
    assert t["total"]["requests"] == 21 and sum(t["series"]["t"]["requests"]) == 21
    assert [r.id for r in newest] == ["req_20", "req_19", "req_18"]
    assert newest[1].trace_id == "ab" * 16 and newest[1].fallbacks == 1 and newest[1].attempts == ["glm/glm-4.6:ok"]
    assert newest[0].prompt is None and newest[0].output is None


def test_a_failing_store_keeps_the_feed_pending_and_the_recent_list_capped() -> None:
    class Down(MemoryStore):
        down = True

        async def stats_add(self, key: str, fields: dict[str, float], ttl: float | None = None) -> None:
            if self.down:
                raise StoreError("down")
            await super().stats_add(key, fields, ttl)

    async def body() -> tuple[int, list[str]]:
        s = Down()
        batch = WriteBehind(s, 60)
        feed = ConsoleFeed(batch)
        for i in range(600):
            feed.add(_rec(i))
        await batch.flush()  # refused: everything stays pending
        s.down = False
        await batch.flush()
        t = await traffic(s, time.time(), 1)
        return t["total"]["requests"], [r.id for r in await recent(s, 1000)]

    n, ids = asyncio.run(body())
    assert n == 600 and len(ids) == 500 and ids[0] == "req_599"


def test_telemetry_feeds_the_console_with_the_callers_trace_id() -> None:
    async def body() -> list[Any]:
        s = MemoryStore()
        tel = Telemetry(store=s)
        tel.record(_rec(1, trace={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}))
        tel.record(_rec(2, trace={"traceparent": "00-javascript:alert(1)//aaaaaaaaaaaaaaa-00f067aa0ba902b7-01"}))
        await tel.flush()
        return await recent(s, 5)

    got = asyncio.run(body())
    assert got[1].trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and got[0].trace_id is None  # not hex: no id


def test_the_write_behind_buffer_loses_nothing_at_close_and_keeps_the_newest() -> None:
    """close() waits for a flush under way (the store closes after it); entries a failed push
    puts back are older than those pushed meanwhile; counters whose ttl ran out are dropped."""
    class Slow(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()
            self.fail = False

        async def stats_add(self, key: str, fields: dict[str, float], ttl: float | None = None) -> None:
            await self.gate.wait()
            await super().stats_add(key, fields, ttl)

        async def log_push(self, key: str, values: list[bytes], keep: int) -> None:
            if self.fail:
                raise StoreError("down")
            await super().log_push(key, values, keep)

    async def body() -> None:
        s = Slow()
        now = [0.0]
        b = WriteBehind(s, 60, clock=lambda: now[0])
        for i in range(10):
            b.merge(f"k{i}", {"n": 1})
        flushing = asyncio.ensure_future(b.flush())
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0)
        s.gate.set()
        await closing
        assert flushing.done() and [await s.stats_get(f"k{i}") for i in range(10)] == [{"n": 1.0}] * 10
        # a failed push: the older entries go back before the ones pushed since; the cap keeps the newest
        s.fail = True
        for i in range(5):
            b.push("log", str(i).encode(), 5)
        flush = asyncio.ensure_future(b.flush())
        for i in range(5, 8):
            b.push("log", str(i).encode(), 5)
        await flush
        s.fail = False
        await b.flush()
        assert await s.log_get("log", 10) == [b"7", b"6", b"5", b"4", b"3"]
        # a counter with a ttl that runs out while the store is away is dropped, not rewritten
        s.gate.clear()
        b.merge("minute", {"n": 1}, ttl=30)
        b.merge("day", {"n": 1})

        async def refuse(key: str, fields: dict[str, float], ttl: float | None = None) -> None:
            raise StoreError("down")

        s.stats_add = refuse  # type: ignore[method-assign]
        await b.flush()
        now[0] = 31.0
        del s.stats_add
        s.gate.set()
        await b.flush()
        await b.flush()
        assert await s.stats_get("minute") == {} and await s.stats_get("day") == {"n": 1.0}

    asyncio.run(body())


def test_limits_in_use_read_without_charging(store: Any) -> None:
    cfg = parse_config(YAML.replace("    retry: {initial_wait: 0.5}\n", "    retry: {initial_wait: 0.5}\n    limits: {rpm: 10, tpm: 1000}\n", 1), {})

    async def body() -> tuple[dict[str, Any], dict[str, Any]]:
        limiter = Limiter(cfg, store)
        for _ in range(3):
            assert not isinstance(await limiter.admit_target("glm", "glm-4.6", 100), float)
        first = await limiter.in_use()
        second = await limiter.in_use()  # reading twice charges nothing
        await store.close()
        return first, second

    first, second = asyncio.run(body())
    assert first["provider:glm"]["rpm"] == {"limit": 10, "used": 3}
    assert first["provider:glm"]["tpm"] == {"limit": 1000, "used": 300}
    assert second == first


EDIT = YAML + """  ab:
    chain: [glm/glm-4.6]
    experiment:
      variants:
        a: {chain: [glm/glm-4.6, claude/claude-sonnet-5-5], weight: 50}
        b: {chain: [claude/claude-sonnet-5-5, glm/glm-4.6], weight: 50}
"""


def test_an_edit_is_checked_with_lines_and_diffed_against_the_live_chains() -> None:
    live = parse_config(YAML, {})
    bad = YAML.replace("  chat:\n    chain: [glm/glm-4.6]", "  chat:\n    chain: [nope/glm-4.6]")
    line = bad.splitlines().index("    chain: [nope/glm-4.6]") + 1
    r = check_edit(bad, live, {})
    assert not r["valid"] and r["problems"] == [{"location": "tasks.chat.chain[0]", "line": line,
                                                "message": "unknown provider 'nope'"}]
    typo = YAML.replace("    midstream: restart", "    midstream: restart\n    retyr: {attempts: 2}")
    r = check_edit(typo, live, {})
    assert r["problems"][0]["line"] == typo.splitlines().index("    retyr: {attempts: 2}") + 1
    syntax = YAML + "  broken: [\n"
    r = check_edit(syntax, live, {})
    assert not r["valid"] and r["problems"][0]["line"] is not None and r["problems"][0]["location"].startswith("line ")
    # a valid edit: the reordered chain, the changed retry and the new task are in the diff
    edit = EDIT.replace("  quick_summary:\n    chain: [glm/glm-4.6, claude/claude-sonnet-5-5]",
                        "  quick_summary:\n    chain: [claude/claude-sonnet-5-5, glm/glm-4.6]").replace(
        "    retry: {initial_wait: 0.5}", "    retry: {initial_wait: 0.5, attempts: 2}")
    r = check_edit(edit, live, {})
    diff = {t["task"]: t for t in r["diff"]["tasks"]}
    assert r["valid"] and diff["ab"]["change"] == "added" and diff["cached"]["change"] == "same"
    assert 'chain: ["glm/glm-4.6","claude/claude-sonnet-5-5"] -> ["claude/claude-sonnet-5-5","glm/glm-4.6"]' in diff["quick_summary"]["changes"]
    assert "policies.glm/glm-4.6.retry.attempts: 3 -> 2" in diff["t"]["changes"]


def test_an_edit_check_never_shows_a_secret() -> None:
    live = parse_config(YAML, {})
    text = YAML.replace("api_key: k", "api_key: ${ZAI_SECRET}", 1).replace("tasks:\n", "tasks:\n  x: {chain: [glm/none]}\n", 1)
    r = check_edit(text, live, {"ZAI_SECRET": "sk-very-secret-123"})
    assert "sk-very-secret-123" not in json.dumps(r) and not r["valid"]
    # a valid edit that puts the variable where the diff shows settings: shown as the variable
    echo = YAML.replace("  chat:\n    chain: [glm/glm-4.6]", "  chat:\n    chain: [glm/glm-4.6]\n    params: {stop: [\"${ZAI_SECRET}\"]}")
    r = check_edit(echo, live, {"ZAI_SECRET": "sk-very-secret-123"})
    assert r["valid"] and "sk-very-secret-123" not in json.dumps(r)
    assert any("${ZAI_SECRET}" in c for t in r["diff"]["tasks"] for c in t["changes"])
    # and a secret the live file names, on the live side of the diff
    live2 = parse_config(echo, {"ZAI_SECRET": "sk-very-secret-123"})
    r = check_edit(YAML, live2, {"ZAI_SECRET": "sk-very-secret-123"}, live_text=echo)
    assert r["valid"] and "sk-very-secret-123" not in json.dumps(r)


def test_a_rejected_reload_keeps_its_problems_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(YAML)

    def load() -> RoutingConfig:
        return parse_config(path.read_text(), {}, source=str(path))

    live = LiveConfig(str(path), load, lambda c: type("R", (), {"config": c})(), type("R", (), {"config": load()})())
    path.write_text(YAML.replace("    limits: {rpm: 2}", "    limits: {rpm: lots}"))
    assert not asyncio.run(live.reload("test"))
    problems = live.status()["rejected"]["problems"]
    assert problems[0]["location"] == "tasks.limited.limits.rpm"
    assert problems[0]["line"] == path.read_text().splitlines().index("    limits: {rpm: lots}") + 1
    with pytest.raises(ConfigError):
        load()


def _seeded(n: int, errors: int, lat_mean: float, lat_sd: float) -> dict[str, float]:
    """Counters as the tracker writes them, for ``n`` requests with a given latency spread."""
    return {"requests": n, "errors": errors, "latency_ms_sum": n * lat_mean, "latency_sq_n": n,
            "latency_ms_sq": n * (lat_sd ** 2 * (n - 1) / n + lat_mean ** 2), "latency_le_1000": n,
            "ttft_n": n, "ttft_ms_sum": n * 100.0, "ttft_sq_n": n, "ttft_ms_sq": n * (100.0 ** 2 + 25.0),
            "cost_n": n - errors, "cost_usd": (n - errors) * 0.002, "cost_answer_usd": (n - errors) * 0.002,
            "cost_usd_sq": (n - errors) * (0.002 ** 2 + 1e-8)}


def test_experiment_intervals_and_plain_significance() -> None:
    a, b = _seeded(400, 8, 500.0, 80.0), _seeded(400, 40, 510.0, 80.0)
    s = summarize(a)["ci95"]
    assert s["error_rate"]["rate"] == 0.02 and s["error_rate"]["ci95"][0] < 0.02 < s["error_rate"]["ci95"][1]
    lo, hi = s["latency_ms"]["ci95"]
    assert lo == pytest.approx(500 - 1.96 * 80 / 20, abs=0.1) and hi == pytest.approx(500 + 1.96 * 80 / 20, abs=0.1)
    found = {x["measure"]: x for x in significance({"a": a, "b": b})}
    err, lat = found["error_rate"], found["latency_ms"]
    assert err["significant"] and err["p"] < 0.001 and "b is higher than a" in err["statement"]
    assert not lat["significant"] and lat["needed_per_variant"] > 400
    assert f"about {lat['needed_per_variant']} per variant" in lat["statement"]
    assert "feedback" not in found  # no feedback yet: nothing to test
    small = significance({"a": _seeded(5, 0, 500, 80), "b": _seeded(5, 1, 520, 80)})
    assert all(not x["significant"] for x in small)
    # counters from before squares were kept, then 10 new requests: means, but no interval and no test
    old = {"requests": 1010, "errors": 0, "latency_ms_sum": 800.0 * 1010, "latency_sq_n": 10,
           "latency_ms_sq": 10 * 800.0 ** 2, "cost_usd": 1000 * 0.1 + 10 * 0.001, "cost_n": 10,
           "cost_answer_usd": 10 * 0.001, "cost_usd_sq": 10 * 0.001 ** 2}
    m = summarize(old)["ci95"]
    assert m["latency_ms"]["mean"] == 800.0 and m["latency_ms"]["ci95"] is None
    assert m["cost_usd"]["mean"] == pytest.approx(0.001) and m["cost_usd"]["n"] == 10
    tested = {x["measure"]: x for x in significance({"a": old, "b": old})}
    assert list(tested) == ["error_rate", "latency_ms", "cost_usd"] and tested["latency_ms"]["p"] is None
    assert "not testable yet" in tested["latency_ms"]["statement"] and not tested["latency_ms"]["significant"]


ADMIN_KEY, TENANT_KEY = "admin-key-1", "tenant-key-1"
AUTH_YAML = YAML + f"""tenants:
  svc: {{keys: ["sha256:{hashlib.sha256(TENANT_KEY.encode()).hexdigest()}"]}}
admin_keys: ["sha256:{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}"]
"""
ROUTES = ["/ui/api/now", "/ui/api/traffic", "/ui/api/spend", "/ui/api/experiments", "/ui/api/requests", "/ui/api/reports"]


def test_every_console_route_needs_the_admin_key_and_the_page_runs_only_its_own_files() -> None:
    async def body() -> None:
        async with app(AUTH_YAML, telemetry=Telemetry()) as a:
            for path in ROUTES:
                assert (await a.client.get(path)).status_code == 401, path
                assert (await a.client.get(path, headers={"authorization": f"Bearer {TENANT_KEY}"})).status_code == 403
                assert (await a.client.get(path, headers={"x-api-key": ADMIN_KEY})).status_code == 200, path
            r = await a.client.post("/ui/api/check", content=YAML)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            page = await a.client.get("/ui/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert "script-src 'self'" in page.headers["content-security-policy"] and "unsafe-inline" not in page.text
            for asset in ("console.js", "console.css", "vendor/chart.umd.min.js"):
                assert (await a.client.get(f"/ui/{asset}")).status_code == 200

    asyncio.run(body())


def test_the_console_routes_over_a_served_router(tmp_path: Path) -> None:
    """Requests show in the traffic and the recent list; an edit is checked; a compare run is
    read by name from the reports directory (and never outside it)."""
    run_dir = tmp_path / "run-1"
    run_dir.mkdir()
    rows = [{"task_id": "a", "line": 1, "target": t, "repeat": 0, "latency_ms": ms, "output": "x", "input_tokens": 1,
             "output_tokens": 1, "cost_usd": 0.001} for t, ms in (("glm/glm-4.6", 10.0), ("claude/claude-sonnet-5-5", 30.0))]
    (run_dir / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "secret.txt").write_text("nope")

    async def body() -> None:
        tel = Telemetry()
        async with app(YAML, telemetry=tel, settings=Settings(reports_dir=str(tmp_path))) as a:
            for _ in range(3):
                assert (await a.client.post("/v1/tasks", json={"task": "t", "messages": say()})).status_code == 200
            failing = {"glm-4.6": {"status": 500}, "*": {"text": "ok"}}
            assert (await a.client.post("/v1/tasks", json={"task": "t", "messages": say(failing)})).status_code == 200
            await asyncio.sleep(0)
            await tel.flush()
            got = (await a.client.get("/ui/api/requests", params={"target": "claude/claude-sonnet-5-5"})).json()
            assert len(got["requests"]) == 1 and got["requests"][0]["attempts"][0].startswith("glm/glm-4.6:error")
            assert len((await a.client.get("/ui/api/requests", params={"q": got["requests"][0]["id"][-8:]})).json()["requests"]) == 1
            now = (await a.client.get("/ui/api/now")).json()
            glm = next(r for r in now["tasks"]["t"]["targets"] if r["target"] == "glm/glm-4.6")
            assert glm["requests_5m"] == 3 and glm["fallbacks_5m"] == 1 and now["store"]["status"] == "ok"
            r = await a.client.post("/ui/api/check", content=YAML.replace("glm/glm-4.6]", "glm/glm-9]", 1))
            assert r.status_code == 200 and r.json()["problems"][0]["line"] is not None
            assert (await a.client.post("/ui/api/check", content=b"\xff\xfe")).json()["error"]["path"] == "body"
            listed = (await a.client.get("/ui/api/reports")).json()["reports"]
            assert [x["name"] for x in listed] == ["run-1"]
            rep = (await a.client.get("/ui/api/report", params={"name": "run-1"})).json()
            assert rep["per_target"]["glm/glm-4.6"]["latency_p50_ms"] == 10.0 and rep["lines"][0]["verdict"] == "agree"
            for name in ("../secret.txt", "..", ".hidden"):
                assert (await a.client.get("/ui/api/report", params={"name": name})).status_code in (400, 404)
            up = await a.client.post("/ui/api/report", json={"results": "\n".join(json.dumps(r) for r in rows)})
            assert up.status_code == 200 and up.json()["targets"] == ["glm/glm-4.6", "claude/claude-sonnet-5-5"]
            bad = await a.client.post("/ui/api/report", json={"results": "{not json"})
            assert bad.status_code == 400 and bad.json()["error"]["path"] == "results[1]"
            short = json.dumps({"task_id": "a", "target": "x"})  # no latency_ms
            bad = await a.client.post("/ui/api/report", json={"results": json.dumps(rows[0]) + "\n" + short})
            assert bad.status_code == 400 and bad.json()["error"]["path"] == "results[2]"
            bad = await a.client.post("/ui/api/report", json={"results": json.dumps(rows[0]), "judgements": {"judge": 1}})
            assert bad.status_code == 400 and bad.json()["error"]["path"] == "judgements"
            assert (await a.client.get("/ui/api/report", params={"name": "a\x00b"})).status_code == 400
            for q in ("/ui/api/traffic?minutes=abc", "/ui/api/traffic?minutes=9999", "/ui/api/spend?days=x",
                      "/ui/api/requests?limit=0"):
                r = await a.client.get(q)
                assert r.status_code == 400 and r.json()["error"]["path"] == q.split("?")[1].split("=")[0], q

    asyncio.run(body())


def test_content_kept_while_log_content_was_on_is_not_shown_once_it_is_off() -> None:
    async def body() -> list[Any]:
        store = MemoryStore()
        batch = WriteBehind(store, 60)
        ConsoleFeed(batch).add(_rec(1, prompt="the prompt", output="the answer"))
        await batch.flush()
        async with app(YAML, store=store, telemetry=Telemetry()) as a:  # log_content off
            return (await a.client.get("/ui/api/requests")).json()["requests"]  # type: ignore[no-any-return]

    got = asyncio.run(body())
    assert got[0]["id"] == "req_1" and "prompt" not in got[0] and "output" not in got[0]


def test_the_vendored_chart_library_is_the_release_recorded() -> None:
    """Chart.js is shipped as released: the file matches the version and checksum its README records."""
    vendor = Path(__file__).parents[2] / "router" / "console" / "static" / "vendor"
    data = (vendor / "chart.umd.min.js").read_bytes()
    row = next(line for line in (vendor / "README.md").read_text().splitlines() if line.startswith("| `chart.umd.min.js`"))
    version, digest = row.split("|")[3].strip(), row.split("|")[5].strip().strip("`")
    assert hashlib.sha256(data).hexdigest() == digest and f"Chart.js v{version}".encode() in data[:200]
    assert (vendor / "chart.js-LICENSE.md").read_text().startswith("The MIT License")


def test_the_memory_store_drops_expired_counters_it_is_never_asked_for() -> None:
    """A minute's rollup is written for 6 h and never read again: the in-memory store frees it."""
    now = [1_000_000.0]
    s = MemoryStore(clock=lambda: now[0])

    async def body() -> int:
        for minute in range(3000):
            now[0] += 60
            await s.stats_add(f"console:m:{minute}", {"requests": 1}, ttl=6 * 3600)
        return len(s._stats)

    assert asyncio.run(body()) <= 6 * 60 + 2
