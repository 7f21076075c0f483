"""Failover against faults the first wave did not script (the failover issue), in process on the
fake transport and clock: silent targets, complete streams without their terminator, who answered,
recovery of a cooled-down target, content filters, restarts that cannot be told, and when to
come back."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from router.telemetry import Telemetry
from tests.unit._app import InProcess, app
from tests.unit._metrics import metric
from tests.unit.test_resilience import config, post, settle, stats


def run(test: Any, yaml_text: str | None = None, telemetry: Telemetry | None = None) -> None:
    async def go() -> None:
        async with app(yaml_text or config(), telemetry=telemetry) as a:
            await test(a)

    asyncio.run(go())


def openai_chunks(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.split("\n") if line.startswith("data: {")]


# -- 1 and 3: a silent target is not retried, and non-streamed callers are protected too -------

def test_a_silent_target_is_not_retried_streamed_or_not() -> None:
    """``first_token: 0.4`` and 3 attempts: a hung primary costs one first-token timeout, then
    the fallback answers; the same for a non-streamed caller (the upstream call streams)."""
    async def t(a: InProcess) -> None:
        for stream in (True, False):
            c0 = a.clock.now()
            r = await post(a, "t", {"glm-a": {"hang": True}, "claude-a": {"text": "fallback"}}, stream=stream)
            assert r.status_code == 200
            assert 0.4 - 1e-9 <= a.clock.now() - c0 < 0.5  # one timeout, no retry, no backoff sleep
            if not stream:
                body = r.json()
                assert body["text"] == "fallback" and body["model"] == "claude-a"
                assert (body["attempts"][0]["code"], body["attempts"][0]["retries"]) == ("first_token_timeout", 0)
        assert a.clock.sleeps == []
        await settle(lambda: stats(a)["glm-a"]["aborted"] == 2)  # one call each, closed

    run(t)


def test_connect_timeout_moves_on_without_a_retry() -> None:
    from router.inproc import Reply, ScriptedTransport

    calls: list[str] = []

    def slow(request: Any) -> Reply:
        calls.append(request.url)
        return Reply(body=[TimeoutError()])  # what aiohttp raises when `connect` runs out

    async def go() -> None:
        async with app(config(), transports={"dead": ScriptedTransport(slow)}) as a:
            r = await post(a, "dead_first", {})
            assert r.status_code == 200 and r.json()["model"] == "glm-a"
            assert r.json()["attempts"][0]["code"] == "connect_timeout" and len(calls) == 1

    asyncio.run(go())


def test_a_non_streamed_caller_is_asked_for_a_stream_upstream_unless_the_provider_opts_out() -> None:
    async def t(a: InProcess) -> None:
        r = await post(a, "only_glm", {"glm-a": {"text": "one two three"}})
        assert r.status_code == 200 and r.json()["text"] == "one two three"
        assert a.emulator.last["glm-a"]["body"]["stream"] is True

    async def opted_out(a: InProcess) -> None:
        r = await post(a, "only_glm", {"glm-a": {"text": "one two three"}})
        assert r.status_code == 200 and r.json()["text"] == "one two three"
        assert a.emulator.last["glm-a"]["body"].get("stream") in (None, False)

    run(t)
    run(opted_out, config().replace("    retry: {attempts: 3", "    stream_upstream: false\n    retry: {attempts: 3", 1))


# -- 5: complete means complete ------------------------------------------------------------

def test_a_stream_without_its_terminator_after_its_finish_is_complete() -> None:
    async def t(a: InProcess) -> None:
        for target, task in (("glm-a", "only_glm"), ("claude-a", "t")):
            spec = {target: {"text": "all of it", "no_terminator": True, "input_tokens": 5, "output_tokens": 3},
                    "glm-a" if target == "claude-a" else "x": {"status": 503}}
            r = await post(a, task, spec, stream=True)
            assert r.status_code == 200 and '"type":"end"' in r.text and '"type":"error"' not in r.text
            done = await post(a, task, spec)
            assert done.status_code == 200 and done.json()["text"] == "all of it"
            assert done.json()["usage"]["input_tokens"] == 5 and done.json()["usage"]["output_tokens"] == 3

    run(t)


# -- 6: report who answered ----------------------------------------------------------------

def test_every_door_names_the_model_that_answered() -> None:
    spec = {"glm-a": {"status": 400}, "claude-a": {"text": "from claude"}}
    msgs = [{"role": "user", "content": "hi\nemulate: " + json.dumps(spec)}]

    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/chat/completions", json={"model": "t", "messages": msgs, "stream": True})
        chunks = openai_chunks(r.text)
        assert chunks and {c["model"] for c in chunks} == {"claude-a"}
        r = await a.client.post("/v1/chat/completions", json={"model": "t", "messages": msgs})
        assert r.json()["model"] == "claude-a"
        r = await a.client.post("/v1/messages", json={"model": "t", "messages": msgs, "max_tokens": 50})
        assert r.json()["model"] == "claude-a"
        r = await a.client.post("/v1/messages", json={"model": "t", "messages": msgs, "max_tokens": 50, "stream": True})
        start = next(json.loads(line[6:]) for line in r.text.split("\n") if '"message_start"' in line)
        assert start["message"]["model"] == "claude-a"
        r = await a.client.post("/v1/tasks", json={"task": "t", "messages": msgs})
        assert r.json()["task"] == "t" and r.json()["model"] == "claude-a"

    run(t)


# -- 7: recovery ---------------------------------------------------------------------------

def test_a_recovered_target_gets_traffic_back_within_the_cooldown() -> None:
    """Trip the primary, let its probe fail, then recover it: the probe after one more
    ``duration`` (10 s, not 20) serves, and the primary takes the next requests."""
    async def t(a: InProcess) -> None:
        down = {"glm-a": {"status": 503}, "claude-a": {"text": "fallback"}}
        await post(a, "t", down)  # 3 tries, 3 failures: tripped
        assert (await a.client.get("/v1/routes")).json()["targets"]["glm/glm-a"]["state"] == "open"
        a.clock.advance(10.5)
        probe = await post(a, "t", down)  # the probe fails: open again for `duration`
        assert probe.json()["attempts"][0]["outcome"] == "error" and probe.json()["model"] == "claude-a"
        a.clock.advance(10.5)
        healed = await post(a, "t", {"claude-a": {"text": "fallback"}})
        assert healed.json()["model"] == "glm-a"
        after = [(await post(a, "t", {})).json()["model"] for _ in range(3)]
        assert after == ["glm-a"] * 3

    run(t, config(retry="{attempts: 3, initial_wait: 0.1, max_wait: 1, max_total_wait: 8}"))


def test_a_probe_that_ends_without_a_verdict_releases_its_lease() -> None:
    """A probe answered with a non-retryable 400 neither closes nor re-opens the circuit; the
    next request probes at once instead of waiting ``timeouts.total``."""
    async def t(a: InProcess) -> None:
        await post(a, "t", {"glm-a": {"status": 503}})
        a.clock.advance(10.5)
        first = await post(a, "t", {"glm-a": {"status": 400}})
        assert first.json()["attempts"][0]["code"] == "400"
        second = await post(a, "t", {})
        assert second.json()["model"] == "glm-a"  # probed at once, and it served

    run(t, config(retry="{attempts: 3, initial_wait: 0.1, max_wait: 1, max_total_wait: 8}"))


def test_a_success_resets_the_failure_count() -> None:
    """Three failures each followed by a success never trip ``failures: 3``."""
    async def t(a: InProcess) -> None:
        for _ in range(3):
            assert (await post(a, "only_glm", {"glm-a": {"status": 500}})).status_code == 502
            assert (await post(a, "only_glm", {})).status_code == 200
        assert (await a.client.get("/v1/routes")).json()["targets"]["glm/glm-a"]["state"] == "closed"

    run(t, config(retry="{attempts: 1}"))


# -- 8: content filters --------------------------------------------------------------------

def test_a_content_filter_refusal_goes_back_to_the_caller_unless_the_task_opts_in() -> None:
    spec = {"glm-a": {"status": 400, "error_code": "1301"}, "claude-a": {"text": "someone else's answer"}}

    async def t(a: InProcess) -> None:
        r = await post(a, "t", spec)
        assert r.status_code == 400 and r.json()["error"]["code"] == "1301"
        assert r.json()["error"]["type"] == "content_filter"
        s = await post(a, "t", spec, stream=True)
        assert '"code":"1301"' in s.text and "someone else" not in s.text
        assert "claude-a" not in stats(a)

    async def opted_in(a: InProcess) -> None:
        r = await post(a, "t", spec)
        assert r.status_code == 200 and r.json()["text"] == "someone else's answer"

    run(t)
    run(opted_in, config().replace("    midstream: error\n", "    midstream: error\n    fallback_on: [content_filter]\n", 1))


# -- 9: a restart only where the door can tell ---------------------------------------------

def test_midstream_restart_never_splices_two_answers() -> None:
    spec = {"glm-a": {"text": "one two three four five six", "cut_after": 3}, "claude-a": {"text": "whole answer"}}
    msgs = [{"role": "user", "content": "hi\nemulate: " + json.dumps(spec)}]

    async def t(a: InProcess) -> None:
        streamed = await a.client.post("/v1/chat/completions", json={"model": "t", "messages": msgs, "stream": True})
        assert '"code":"stream_truncated"' in streamed.text and "whole answer" not in streamed.text
        assert "claude-a" not in stats(a)
        whole = await a.client.post("/v1/chat/completions", json={"model": "t", "messages": msgs})
        assert whole.status_code == 200
        assert whole.json()["choices"][0]["message"]["content"] == "whole answer"  # the second answer only
        native = await a.client.post("/v1/tasks", json={"task": "t", "messages": msgs})
        assert native.json()["text"] == "whole answer"

    run(t, config(midstream="restart"))


# -- 16: come back later, and when ---------------------------------------------------------

def test_every_target_cooling_down_is_503_with_retry_after() -> None:
    async def t(a: InProcess) -> None:
        await post(a, "two_glm", {"glm-a": {"status": 503}, "glm-b": {"status": 503}})
        a.clock.advance(4)
        r = await post(a, "two_glm", {})
        assert r.status_code == 503 and r.json()["error"]["type"] == "all_targets_failed"
        assert r.headers["retry-after"] == "6"  # the breaker re-opens 10 s after it tripped

    run(t, config(retry="{attempts: 3, initial_wait: 0.1, max_wait: 1, max_total_wait: 8}",
                  cooldown="{failures: 3, window: 60, duration: 10, max_duration: 40}"))


def test_a_rate_limit_beside_a_cooldown_is_429_with_the_earliest_retry_after() -> None:
    async def t(a: InProcess) -> None:
        await post(a, "only_glm", {"glm-a": {"status": 503}})  # glm-a cools down for 10 s
        r = await post(a, "t", {"claude-a": {"status": 429, "retry_after": 3}})
        assert r.status_code == 429 and r.headers["retry-after"] == "3"

    run(t, config(retry="{attempts: 3, initial_wait: 0.1, max_wait: 1, max_total_wait: 1}"))


# -- 2: response headers wait for the commit -----------------------------------------------

def test_a_streams_headers_wait_for_the_commit_and_name_who_served() -> None:
    async def t(a: InProcess) -> None:
        r = await post(a, "t", {"glm-a": {"status": 503}, "claude-a": {"text": "fallback"}}, stream=True)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert (r.headers["x-llm-router-target"], r.headers["x-llm-router-task"]) == ("claude/claude-a", "t")
        assert '"type":"fallback"' in r.text  # the events before the commit still reach the caller
        whole = await post(a, "t", {})
        assert whole.headers["x-llm-router-target"] == "glm/glm-a" and whole.headers["x-llm-router-task"] == "t"
        failed = await post(a, "t", {"glm-a": {"status": 503}, "claude-a": {"status": 503}}, stream=True)
        assert failed.status_code == 502 and failed.json()["error"]["type"] == "all_targets_failed"
        oai = await a.client.post("/v1/chat/completions", json={"model": "t", "stream": True, "messages": [
            {"role": "user", "content": "x\nemulate: " + json.dumps({"*": {"status": 429, "retry_after": 4}})}]})
        assert oai.status_code == 429 and oai.json()["error"]["type"] == "rate_limit_error"
        assert oai.headers["retry-after"] == "4"

    run(t, config(retry="{attempts: 1}"))


# -- 12: a caller who leaves stops the upstream work -------------------------------------------

class Leaving:
    """One ``POST /v1/tasks`` sent straight to the app over ASGI by a caller who disconnects when
    ``leave()`` is called; ``sent`` is what the app answered."""

    def __init__(self, a: InProcess, task: str, spec: dict[str, Any]) -> None:
        body = json.dumps({"task": task, "messages": [
            {"role": "user", "content": "x\nemulate: " + json.dumps(spec)}]}).encode()
        self.incoming = [{"type": "http.request", "body": body, "more_body": False}]
        self.gone = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/tasks", "raw_path": b"/v1/tasks", "query_string": b"",
                 "root_path": "", "headers": [(b"host", b"router"), (b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 5000), "server": ("router", 80), "state": {}}
        self.call = asyncio.ensure_future(a.app(scope, self.receive, self.send))

    async def receive(self) -> dict[str, Any]:
        if self.incoming:
            return self.incoming.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def leave(self) -> None:
        self.gone.set()
        await self.call


def test_a_non_streamed_caller_who_leaves_cancels_its_upstream_call() -> None:
    async def t(a: InProcess) -> None:
        caller = Leaving(a, "only_glm", {"glm-a": {"hang": True}})
        await settle(lambda: stats(a).get("glm-a", {}).get("requests") == 1)
        await caller.leave()
        await settle(lambda: stats(a)["glm-a"]["aborted"] == 1)  # the upstream saw its call closed
        assert caller.sent == []  # nothing is answered to a caller who is gone

    run(t, config(timeouts="{first_token: 300, idle: 300, total: 600}"))


# -- 4: hedged first token -----------------------------------------------------------------

HEDGED = config(timeouts="{first_token: 60, idle: 30, total: 120}").replace(
    "  only_glm:\n", "  hedged:\n    chain: [glm/glm-a, claude/claude-a]\n    hedge: {after: 5}\n  only_glm:\n", 1)


def test_a_slow_first_token_is_hedged_by_the_next_target() -> None:
    """A 20 s first token with ``hedge: {after: 5}``: the next target is started at 5 s and
    answers (its own TTFT: 0.2 s); the slow call is cancelled; the attempts show both."""
    async def t(a: InProcess) -> None:
        c0 = a.clock.now()
        r = await post(a, "hedged", {"glm-a": {"delay_ms": 20000, "text": "slow"},
                                     "claude-a": {"delay_ms": 200, "text": "hedge"}}, stream=True)
        took = a.clock.now() - c0
        assert r.status_code == 200 and r.headers["x-llm-router-target"] == "claude/claude-a"
        assert 5.2 - 1e-6 <= took < 5.3
        assert '"type":"fallback","from":"glm/glm-a","to":"claude/claude-a","reason":"hedge","seq":0' in r.text
        end = await post(a, "hedged", {"glm-a": {"delay_ms": 20000}, "claude-a": {"text": "again"}})
        attempts = [(x["target"], x["outcome"], x["code"]) for x in end.json()["attempts"]]
        assert attempts == [("glm/glm-a", "cancelled", "hedged"), ("claude/claude-a", "ok", None)]
        await settle(lambda: stats(a)["glm-a"]["aborted"] == 2)  # the slow calls were closed
        await asyncio.sleep(0)  # telemetry is recorded on the loop's next turn
        metrics = (await a.client.get("/metrics")).text
        assert metric(metrics, "llm_router_hedges_total", task="hedged", outcome="won") == 2

    run(t, HEDGED, Telemetry())


def test_a_fast_target_never_hedges_and_a_primary_that_answers_first_wins() -> None:
    async def t(a: InProcess) -> None:
        fast = await post(a, "hedged", {"glm-a": {"delay_ms": 100, "text": "fast"}})
        assert fast.json()["model"] == "glm-a" and len(fast.json()["attempts"]) == 1
        assert "claude-a" not in stats(a)
        # the primary answers at 6 s, the hedge (started at 5 s) would take 3 s: the primary wins
        late = await post(a, "hedged", {"glm-a": {"delay_ms": 6000, "text": "primary"},
                                        "claude-a": {"delay_ms": 3000, "text": "hedge"}})
        assert late.json()["text"] == "primary"
        assert [(x["target"], x["outcome"]) for x in late.json()["attempts"]] == \
            [("claude/claude-a", "cancelled"), ("glm/glm-a", "ok")]
        await settle(lambda: stats(a)["claude-a"]["aborted"] == 1)
        await asyncio.sleep(0)
        metrics = (await a.client.get("/metrics")).text
        assert metric(metrics, "llm_router_hedges_total", task="hedged", outcome="lost") == 1
        assert metric(metrics, "llm_router_hedges_total", task="hedged", outcome="won") == 0

    run(t, HEDGED, Telemetry())


def test_a_hedges_quota_is_settled_at_once_by_what_it_used() -> None:
    """With an upstream RPM of 2 on claude, a lost hedge gives its slot back: two more requests
    that need claude both fit."""
    async def t(a: InProcess) -> None:
        await post(a, "hedged", {"glm-a": {"delay_ms": 6000, "text": "primary"}, "claude-a": {"delay_ms": 3000}})
        for _ in range(2):
            r = await post(a, "hedged", {"glm-a": {"status": 400}, "claude-a": {"text": "ok"}})
            assert r.status_code == 200 and r.json()["model"] == "claude-a"

    run(t, HEDGED.replace("      claude-a: {context_window: 200000}",
                          "      claude-a: {context_window: 200000, limits: {rpm: 2}}", 1))


# -- 14: Z.ai's codes from the current list ------------------------------------------------

def test_a_spent_quota_skips_the_target_without_a_retry_and_cools_it_until_the_reset() -> None:
    """1310 with "reset at" one hour ahead (the fake wall clock starts at 2027-01-15 08:00 UTC;
    the message's time is Z.ai's, UTC+8): no retry, the fallback answers, the target is skipped
    until the reset and tried again after it."""
    msg = "Weekly/Monthly Limit Exhausted. Your limit will reset at 2027-01-15 17:00:00"
    spent = {"glm-a": {"status": 429, "error_code": "1310", "error_message": msg}, "claude-a": {"text": "fallback"}}

    async def t(a: InProcess) -> None:
        r = await post(a, "t", spent)
        assert r.json()["model"] == "claude-a" and a.clock.sleeps == []
        assert (r.json()["attempts"][0]["code"], r.json()["attempts"][0]["retries"]) == ("1310", 0)
        assert stats(a)["glm-a"]["requests"] == 1
        skipped = await post(a, "t", {})
        assert skipped.json()["attempts"][0]["code"] == "cooldown" and stats(a)["glm-a"]["requests"] == 1
        only = await post(a, "only_glm", {})
        assert only.status_code == 503 and 3595 <= int(only.headers["retry-after"]) <= 3600
        a.clock.advance(3601)
        assert (await post(a, "t", {})).json()["model"] == "glm-a"

    run(t)


def test_zai_codes_by_kind_and_business_errors_in_a_200_body() -> None:
    async def t(a: InProcess) -> None:
        for code, retried in (("1302", True), ("1303", True), ("1305", True), ("1312", True),
                              ("1113", False), ("1304", False), ("1308", False), ("1309", False),
                              ("1311", False), ("1313", False), ("1316", False), ("1321", False)):
            r = await post(a, "two_glm", {"glm-a": {"status": 429, "error_code": code}, "glm-b": {"text": "b"}})
            assert r.json()["model"] == "glm-b", code
            assert (r.json()["attempts"][0]["retries"] > 0) is retried, code
        ok200 = await post(a, "two_glm", {"glm-a": {"status": 200, "error_code": "1305"}, "glm-b": {"text": "b"}})
        assert ok200.json()["model"] == "glm-b" and ok200.json()["attempts"][0]["code"] == "1305"
        assert ok200.json()["attempts"][0]["retries"] == 2  # a 1305 in a 200 body is retried like one in a 429

    run(t, config(retry="{attempts: 3, initial_wait: 0.1, max_wait: 1, max_total_wait: 60}",
                  cooldown="{failures: 100, window: 60, duration: 10, max_duration: 40}"))


def test_anthropic_billing_error_skips_without_a_retry() -> None:
    async def t(a: InProcess) -> None:
        r = await post(a, "t", {"glm-a": {"status": 400}, "claude-a": {"status": 402, "error_code": "billing_error"}})
        assert r.status_code == 502 and a.clock.sleeps == []
        assert [(x["code"], x["retries"]) for x in r.json()["error"]["attempts"]] == [("400", 0), ("billing_error", 0)]

    run(t, config(retry="{attempts: 3, initial_wait: 0.1, max_wait: 1, max_total_wait: 60}"))


# -- 15: secrets in provider headers ---------------------------------------------------------

def test_secret_header_values_are_redacted_in_validate_show_and_the_emulators_record() -> None:
    from router.validate import redacted

    yaml_text = config().replace("    api_key: k\n    retry: {attempts: 3",
                                 '    api_key: k\n    headers: {x-org-token: "${ORG_TOKEN}"}\n    retry: {attempts: 3', 1)

    async def go() -> None:
        async with app(yaml_text, ORG_TOKEN="org-sekrit-123") as a:
            r = await post(a, "only_glm", {})
            assert r.status_code == 200
            seen = a.emulator.last["glm-a"]["headers"]
            assert seen["x-org-token"] == "<redacted>" and "org-sekrit-123" not in json.dumps(a.emulator.last)
            config_shown = json.dumps(redacted(a.app.state.live.router.config))
            assert "org-sekrit-123" not in config_shown and '"x-org-token": "<set>"' in config_shown
            routes = (await a.client.get("/v1/routes")).text
            assert "org-sekrit-123" not in routes

    asyncio.run(go())


# -- 11: one store deadline per request ----------------------------------------------------

def test_a_frozen_redis_costs_a_request_one_store_timeout_not_one_per_call(redis_proc: Any) -> None:
    """A real Redis frozen with SIGSTOP: a request that would make several store calls (caller
    limit, cache lookup and lock, settlement) waits one 200 ms timeout in all, then the
    ``on_store_error`` policy (allow) lets it through (without the shared budget: 0.6 s)."""
    import gc
    import signal
    import time

    from router.stores.redis import RedisStore

    yaml_text = config().replace("tasks:\n", "limits: {per_caller: {rpm: 1000}}\ntasks:\n", 1).replace(
        "  only_glm:\n    chain: [glm/glm-a]\n", "  only_glm:\n    chain: [glm/glm-a]\n    cache: {ttl: 60}\n", 1)

    class Watched(RedisStore):
        """Records how long each store call of the frozen request waited."""

        waits: ClassVar[list[float]] = []

        async def _call(self, coro: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await super()._call(coro)
            finally:
                self.waits.append(time.perf_counter() - t0)

    async def go() -> None:
        store = Watched(redis_proc.url, prefix="frozen", timeout=0.2)
        async with app(yaml_text, store=store) as a:
            assert (await post(a, "only_glm", {})).status_code == 200  # connections made while it answers
            assert redis_proc.p is not None
            store.waits.clear()
            gc.collect()
            gc.disable()  # a full collection of this suite's heap would be counted as waiting
            redis_proc.p.send_signal(signal.SIGSTOP)
            try:
                t0 = time.perf_counter()
                r = await post(a, "only_glm", {})
                took = time.perf_counter() - t0
            finally:
                redis_proc.p.send_signal(signal.SIGCONT)
                gc.enable()
            assert r.status_code == 200 and r.json()["model"] == "glm-a"
            waited = [round(w, 3) for w in store.waits]
            assert len(waited) >= 3 and sum(w > 0.05 for w in waited) == 1, waited  # one call waited; the rest failed at once
            assert 0.2 <= took < 0.45, (took, waited)
        await store.close()

    asyncio.run(go())


# -- 8: the prompt fitting no target is the caller's error --------------------------------------

def test_a_prompt_that_fits_no_target_is_a_400_with_the_estimate() -> None:
    """glm-a says the prompt is too long (OpenAI's context_length_exceeded, though our estimate
    let it through); glm-b's window is no larger, so it is skipped; claude-a's is too small: 400."""
    yaml_text = config(windows=(4000, 4000)).replace("claude-a: {context_window: 200000}", "claude-a: {context_window: 3000}")

    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", json={"task": "small_first", "max_tokens": 100, "messages": [
            {"role": "user", "content": "x " * 5000 + "\nemulate: " + json.dumps(
                {"glm-a": {"status": 400, "error_code": "context_length_exceeded"}})}]})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["message"].startswith("the prompt fits no target of the chain: about 2") and "plus max_tokens 100" in err["message"]
        assert err["message"].endswith("the largest context window is 4000")
        assert [x["code"] for x in err["attempts"]] == ["context_length_exceeded", "context_window", "context_window"]

    run(t, yaml_text)


def test_a_caller_who_leaves_during_a_hedge_race_stops_both_calls() -> None:
    """Both targets slow, the hedge started, then the caller goes: both upstream calls are
    closed (the hedge is the walk's to close, however the race ends)."""
    async def t(a: InProcess) -> None:
        caller = Leaving(a, "hedged", {"glm-a": {"delay_ms": 60000}, "claude-a": {"delay_ms": 60000}})
        await settle(lambda: stats(a).get("glm-a", {}).get("requests") == 1)
        a.clock.advance(5.1)  # past hedge.after: the hedge starts
        await settle(lambda: stats(a).get("claude-a", {}).get("requests") == 1)
        await caller.leave()
        await settle(lambda: stats(a)["glm-a"]["aborted"] == 1 and stats(a)["claude-a"]["aborted"] == 1)
        assert caller.sent == []

    run(t, HEDGED)
