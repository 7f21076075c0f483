"""The response cache (``router.cache``): hits replayed event for event, what is and is not stored,
coalescing of identical requests (in one process through a future, across replicas through the
store's lock and polling), and a store that fails or holds garbage, which never fails a request.
Through the app in process, and on ``ResponseCache`` itself where another replica is needed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import msgspec
import pytest

from router.cache import CacheEntry, ResponseCache, replay
from router.clock import FakeClock
from router.config import CachePolicy
from router.emulator.wire import signature_for
from router.events import End, Event, Start, TextDelta, Usage
from router.run import Run
from router.stores import MemoryStore, StoreError
from tests.unit._app import YAML, InProcess, app, say, sse

CLAUDE = "claude-sonnet-5-5"
CACHE_YAML = YAML + """
  short_wait:
    chain: [claude/claude-sonnet-5-5]
    cache: {ttl: 60, coalesce_wait: 1}
  small:
    chain: [claude/claude-sonnet-5-5]
    cache: {ttl: 60, max_bytes: 2000}
"""


def run(test: Callable[[InProcess], Awaitable[None]], **kw: Any) -> None:
    async def go() -> None:
        async with app(CACHE_YAML, **kw) as a:
            await test(a)

    asyncio.run(go())


def upstream_calls(a: InProcess) -> int:
    return a.emulator.stats[CLAUDE]["requests"] if CLAUDE in a.emulator.stats else 0


class Recording(MemoryStore):
    """A memory store that remembers every cache key looked up."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.keys: list[str] = []

    async def cache_get_or_lock(self, key: str, ttl: float) -> tuple[bytes | None, bool]:
        self.keys.append(key)
        return await super().cache_get_or_lock(key, ttl)


class CacheDown(MemoryStore):
    """A store whose cache and lock calls all fail (limits and circuits still answer)."""

    async def _down(self, *_: Any) -> Any:
        raise StoreError("cache down")

    cache_get = cache_set = cache_get_or_lock = cache_set_unlock = lock = unlock = _down  # type: ignore[assignment]


# -- through the app ----------------------------------------------------------------------------
def test_a_hit_replays_reasoning_signatures_and_tool_calls_at_no_cost() -> None:
    spec = {"*": {"reasoning": "ponder", "text": "Use the tool.", "input_tokens": 100, "output_tokens": 20,
                  "tool_calls": [{"id": "toolu_c", "name": "lookup", "arguments": {"q": "x"}}]}}
    body = {"task": "cached", "messages": say(spec)}

    async def t(a: InProcess) -> None:
        first = (await a.client.post("/v1/tasks", json=body)).json()
        assert first["cached"] is False and first["usage"]["cost_usd"] > 0
        r = await a.client.post("/v1/tasks", json={**body, "stream": True})
        evs = sse(r.text)
        assert evs[0]["type"] == "start" and evs[0]["cached"] is True and evs[0]["attempt"] == 0
        assert evs[0]["provider"] == "claude" and evs[0]["model"] == CLAUDE
        assert [e["seq"] for e in evs] == list(range(len(evs)))
        reasoning = [e for e in evs if e["type"] == "reasoning.delta"]
        assert "".join(e.get("text", "") for e in reasoning) == "ponder"
        assert [e["signature"] for e in reasoning if "signature" in e] == [signature_for("ponder")]
        ends = [e for e in evs if e["type"] == "tool_call.end"]
        assert [(e["id"], e["name"]) for e in ends] == [("toolu_c", "lookup")]
        usage = next(e for e in evs if e["type"] == "usage")
        assert usage["cost_usd"] == 0 and usage["input_tokens"] == 100 and usage["output_tokens"] == 20
        assert evs[-1] == {"type": "end", "finish_reason": "tool_calls", "seq": len(evs) - 1}
        folded = (await a.client.post("/v1/tasks", json=body)).json()
        assert folded["cached"] is True and folded["text"] == first["text"]
        assert folded["reasoning_signature"] == first["reasoning_signature"] == signature_for("ponder")
        assert folded["tool_calls"] == first["tool_calls"] and folded["usage"]["cost_usd"] == 0
        oa = (await a.client.post("/v1/chat/completions", json={"model": "cached", "messages": body["messages"]})).json()
        assert oa["router"]["cached"] is True and oa["usage"]["cost_usd"] == 0
        assert upstream_calls(a) == 1

    run(t)


def test_no_store_and_no_cache_request_headers() -> None:
    body = {"task": "cached", "messages": say({"*": {"text": "fresh"}})}

    async def t(a: InProcess) -> None:
        async def ask(cc: str | None = None) -> bool:
            r = await a.client.post("/v1/tasks", json=body, headers={"cache-control": cc} if cc else {})
            assert r.status_code == 200 and r.json()["text"] == "fresh"
            return bool(r.json()["cached"])

        assert await ask("no-store") is False  # answered, not kept
        assert await ask() is False and upstream_calls(a) == 2  # so this one missed, and stored
        assert await ask("No-Cache") is False and upstream_calls(a) == 3  # bypasses the stored answer
        assert await ask() is True and upstream_calls(a) == 3
        assert await ask("no-store") is True  # no-store alone still reads

    run(t)


def test_identical_concurrent_requests_are_coalesced() -> None:
    body = {"task": "cached", "messages": say({"*": {"text": "once", "delay_ms": 2000}})}

    async def t(a: InProcess) -> None:
        t0 = a.clock.now()
        done: list[float] = []

        async def ask() -> dict[str, Any]:
            r = await a.client.post("/v1/tasks", json=body)
            done.append(a.clock.now() - t0)
            return dict(r.json())

        answers = await asyncio.gather(ask(), ask(), ask())
        assert [x["text"] for x in answers] == ["once"] * 3
        assert sorted(x["cached"] for x in answers) == [False, True, True]
        assert upstream_calls(a) == 1
        assert all(d == pytest.approx(2.0, abs=0.01) for d in done)  # the followers waited for the leader only

    run(t)


def test_a_follower_stops_waiting_after_coalesce_wait_and_goes_upstream_itself() -> None:
    body = {"task": "short_wait", "messages": say({"*": {"text": "slow", "delay_ms": 5000}})}

    async def t(a: InProcess) -> None:
        t0 = a.clock.now()

        async def ask() -> tuple[float, bool]:
            r = await a.client.post("/v1/tasks", json=body)
            assert r.status_code == 200 and r.json()["text"] == "slow"
            return a.clock.now() - t0, bool(r.json()["cached"])

        got = sorted(await asyncio.gather(ask(), ask()))
        assert got == [(pytest.approx(5.0, abs=0.01), False), (pytest.approx(6.0, abs=0.01), False)]
        assert upstream_calls(a) == 2
        r = await a.client.post("/v1/tasks", json=body)
        assert r.json()["cached"] is True and upstream_calls(a) == 2

    run(t)


def test_failed_and_cut_answers_are_not_stored() -> None:
    async def t(a: InProcess) -> None:
        failing = {"task": "cached", "messages": say({"*": {"status": 400, "times": 1, "text": "second try"}})}
        r = await a.client.post("/v1/tasks", json=failing)
        assert r.status_code == 502
        r = await a.client.post("/v1/tasks", json=failing)
        assert r.status_code == 200 and r.json()["cached"] is False and r.json()["text"] == "second try"
        r = await a.client.post("/v1/tasks", json=failing)
        assert r.json()["cached"] is True and upstream_calls(a) == 2
        cut = {"task": "cached", "stream": True, "messages": say({"*": {"text": "a b c d", "cut_after": 5}})}
        for _ in range(2):
            evs = sse((await a.client.post("/v1/tasks", json=cut)).text)
            assert evs[0]["cached"] is False and evs[-1]["type"] == "error"
        assert upstream_calls(a) == 4

    run(t)


def test_entries_over_max_bytes_are_not_stored() -> None:
    async def t(a: InProcess) -> None:
        long = {"task": "small", "messages": say({"*": {"text": "word " * 1000}})}
        short = {"task": "small", "messages": say({"*": {"text": "brief"}})}
        for body, cached in ((long, False), (long, False), (short, False), (short, True)):
            r = await a.client.post("/v1/tasks", json=body)
            assert r.status_code == 200 and r.json()["cached"] is cached
        assert upstream_calls(a) == 3

    run(t)


def test_an_entry_lives_for_its_ttl() -> None:
    now = [time.time()]
    store = MemoryStore(clock=lambda: now[0])
    body = {"task": "cached", "messages": say({"*": {"text": "ttl"}})}

    async def t(a: InProcess) -> None:
        assert (await a.client.post("/v1/tasks", json=body)).json()["cached"] is False
        now[0] += 59
        assert (await a.client.post("/v1/tasks", json=body)).json()["cached"] is True
        now[0] += 2  # 61 s after it was written: the task's ttl is 60
        assert (await a.client.post("/v1/tasks", json=body)).json()["cached"] is False
        assert upstream_calls(a) == 2

    run(t, store=store)


def test_a_corrupt_entry_is_a_miss_and_is_overwritten() -> None:
    store = Recording()
    body = {"task": "cached", "messages": say({"*": {"text": "good"}})}

    async def t(a: InProcess) -> None:
        assert (await a.client.post("/v1/tasks", json=body)).json()["cached"] is False
        (key,) = set(store.keys)
        await store.cache_set(key, b"\xc1 not msgpack", 60)
        r = await a.client.post("/v1/tasks", json={**body, "stream": True})
        evs = sse(r.text)
        assert evs[0]["cached"] is False and evs[-1]["type"] == "end"
        assert upstream_calls(a) == 2
        assert (await a.client.post("/v1/tasks", json=body)).json()["cached"] is True
        assert upstream_calls(a) == 2 and set(store.keys) == {key}

    run(t, store=store)


def test_a_failing_store_bypasses_the_cache_and_never_fails_a_request() -> None:
    body = {"task": "cached", "messages": say({"*": {"text": "still here"}})}

    async def t(a: InProcess) -> None:
        for _ in range(2):
            r = await a.client.post("/v1/tasks", json=body)
            assert r.status_code == 200 and r.json()["cached"] is False and r.json()["text"] == "still here"
        evs = sse((await a.client.post("/v1/tasks", json={**body, "stream": True})).text)
        assert evs[0]["cached"] is False and evs[-1]["type"] == "end"
        answers = await asyncio.gather(*(a.client.post("/v1/tasks", json=body) for _ in range(2)))
        assert all(r.status_code == 200 for r in answers)
        assert upstream_calls(a) == 5

    run(t, store=CacheDown())


# -- ResponseCache itself ------------------------------------------------------------------------
POLICY = CachePolicy(ttl=60, coalesce_wait=1.0)


def entry(text: str = "hi") -> CacheEntry:
    return CacheEntry(provider="p", model="m", created_at=0.0,
                      events=[TextDelta(text=text), Usage(input_tokens=3, output_tokens=1, cost_usd=0.5), End()])


def on_clock(test: Callable[[ResponseCache, MemoryStore, FakeClock], Awaitable[None]],
             store: MemoryStore | None = None) -> None:
    async def go() -> None:
        clock = FakeClock()
        jumper = asyncio.ensure_future(clock.autojump())
        st = store or MemoryStore()
        try:
            await test(ResponseCache(st, clock), st, clock)
        finally:
            jumper.cancel()

    asyncio.run(go())


def test_another_replicas_answer_is_polled_for() -> None:
    async def t(cache: ResponseCache, store: MemoryStore, clock: FakeClock) -> None:
        key = uuid.uuid4().hex
        assert await store.lock(key, 30)  # another replica leads

        async def other_replica() -> None:
            await clock.sleep(0.3)
            await store.cache_set(key, cache_bytes(entry("theirs")), 60)

        t0 = clock.now()
        writer = asyncio.ensure_future(other_replica())
        got, lead = await cache.lookup(key, 1.0)
        await writer
        assert lead is False and got is not None and got.events[0] == TextDelta(text="theirs")
        assert 0.3 <= clock.now() - t0 < 0.4

    on_clock(t)


def test_polling_gives_up_after_the_wait_and_goes_upstream_without_the_lock() -> None:
    async def t(cache: ResponseCache, store: MemoryStore, clock: FakeClock) -> None:
        key = uuid.uuid4().hex
        assert await store.lock(key, 30)
        t0 = clock.now()
        got, lead = await cache.lookup(key, 0.5)
        # no entry and not leading: go upstream, and release nothing (the lock is the other's)
        assert (got, lead) == (None, False) and clock.now() - t0 == pytest.approx(0.5, abs=0.03)
        assert await store.lock(key, 30) is False  # still the other replica's

    on_clock(t)


def test_a_follower_on_another_replica_leads_as_soon_as_the_leader_gives_up_its_lock() -> None:
    """The leader on another replica fails (or is cut, or its caller leaves) and releases its
    lock without an entry: the follower leads at once instead of waiting all of coalesce_wait."""
    async def t(cache: ResponseCache, store: MemoryStore, clock: FakeClock) -> None:
        key = uuid.uuid4().hex
        assert await store.lock(key, 30)

        async def failing_leader() -> None:
            await clock.sleep(0.3)
            await store.unlock(key)

        t0 = clock.now()
        leader = asyncio.ensure_future(failing_leader())
        got, lead = await cache.lookup(key, 30.0)
        await leader
        assert (got, lead) == (None, True) and 0.3 <= clock.now() - t0 < 0.45
        assert await store.lock(key, 30) is False  # the follower holds the lock now

    on_clock(t)


def test_a_corrupt_entry_leads_even_when_the_lock_call_fails() -> None:
    class LockDown(MemoryStore):
        async def lock(self, key: str, ttl: float) -> bool:
            raise StoreError("down")

    async def t(cache: ResponseCache, store: MemoryStore, clock: FakeClock) -> None:
        await store.cache_set("k", b"\xc1", 60)
        assert await cache.get("k") is None
        assert await cache.lookup("k", 1.0) == (None, True)
        assert await cache.finish("k", entry("fixed"), 60, 10_000) is True
        assert (await cache.get("k")) == entry("fixed")

    on_clock(t, LockDown())


def test_put_stores_only_whole_entries_that_fit() -> None:
    async def t(cache: ResponseCache, store: MemoryStore, clock: FakeClock) -> None:
        partial = CacheEntry(provider="p", model="m", created_at=0.0, events=[TextDelta(text="half")])
        assert await cache.put("a", partial, 60, 10_000) is False
        assert await cache.put("a", CacheEntry(provider="p", model="m", created_at=0.0, events=[]), 60, 10_000) is False
        assert await cache.put("a", entry("x" * 500), 60, 100) is False
        assert await store.cache_get("a") is None
        assert await cache.put("a", entry(), 60, 10_000) is True and await cache.get("a") == entry()

    on_clock(t)


def test_put_and_get_survive_a_failing_store() -> None:
    async def t(cache: ResponseCache, store: MemoryStore, clock: FakeClock) -> None:
        assert await cache.put("a", entry(), 60, 10_000) is False
        assert await cache.get("a") is None
        assert await cache.finish("a", entry(), 60, 10_000) is False

    on_clock(t, CacheDown())


def test_a_leader_that_fails_releases_the_lock_and_its_followers() -> None:
    async def t(cache: ResponseCache, store: MemoryStore, clock: FakeClock) -> None:
        key = uuid.uuid4().hex
        run = Run(clock.now, 0, keep_events=True)

        async def broken() -> AsyncGenerator[Event, None]:
            yield TextDelta(text="par")
            await clock.sleep(0.2)
            raise RuntimeError("upstream adapter bug")

        async def lead() -> list[Event]:
            got = []
            async for ev in cache.serve(key, POLICY, broken, run, store=True, start=lambda e: replay(e, "r", "t")):
                run.see(ev)
                got.append(ev)
            return got

        leader = asyncio.ensure_future(lead())
        await asyncio.sleep(0)
        follower = asyncio.ensure_future(cache.lookup(key, 5.0))
        with pytest.raises(RuntimeError):
            await leader
        assert await follower == (None, True)  # handed nothing: it leads now
        assert await store.cache_get(key) is None

    on_clock(t)


def test_a_follower_handed_nothing_while_another_replica_locks_goes_upstream_and_stores() -> None:
    async def t(cache: ResponseCache, store: MemoryStore, clock: FakeClock) -> None:
        key = uuid.uuid4().hex

        def produce(text: str) -> Callable[[], AsyncGenerator[Event, None]]:
            async def gen() -> AsyncGenerator[Event, None]:
                await clock.sleep(0.5)
                yield Start(id="r", task="t", provider="p", model="m")
                for ev in entry(text).events:
                    yield ev
            return gen

        async def serve(text: str, *, store_it: bool, then_lock: bool = False) -> list[Event]:
            r = Run(clock.now, 0, keep_events=store_it)
            out = []
            async for ev in cache.serve(key, POLICY, produce(text), r, store=store_it,
                                        start=lambda e: replay(e, "r", "t")):
                r.see(ev)
                out.append(ev)
            if then_lock:  # before the follower wakes: another replica takes the lock
                assert await store.lock(key, 30)
            return out

        leader = asyncio.ensure_future(serve("leader", store_it=False, then_lock=True))  # a no-store caller
        await asyncio.sleep(0)
        follower = asyncio.ensure_future(serve("follower", store_it=True))
        got = await leader, await follower
        assert got[0][1] == TextDelta(text="leader") and got[1][1] == TextDelta(text="follower")
        assert not got[1][0].cached  # type: ignore[union-attr]
        stored = await cache.get(key)  # written without the lock, which the other replica holds
        assert stored is not None and stored.events[0] == TextDelta(text="follower")
        assert await store.lock(key, 30) is False

    on_clock(t)


def test_a_leaders_whole_answer_is_stored_and_replayed_with_a_fresh_start() -> None:
    async def t(cache: ResponseCache, store: MemoryStore, clock: FakeClock) -> None:
        key = uuid.uuid4().hex
        run = Run(clock.now, 0, keep_events=True)

        async def produce() -> AsyncGenerator[Event, None]:
            yield Start(id="r0", task="t", provider="p", model="m")
            for ev in entry("answer").events:
                yield ev

        def start(e: CacheEntry) -> list[Event]:
            return replay(e, "r1", "t", "v")

        async def consume(r: Run) -> list[Event]:
            out = []
            async for ev in cache.serve(key, POLICY, produce, r, store=True, start=start):
                r.see(ev)
                out.append(ev)
            return out

        first = await consume(run)
        assert [type(e) for e in first] == [Start, TextDelta, Usage, End]
        second = await consume(Run(clock.now, 0))
        assert second[0] == Start(id="r1", task="t", provider="p", model="m", attempt=0, cached=True, variant="v")
        assert second[1:] == [TextDelta(text="answer"), Usage(input_tokens=3, output_tokens=1, cost_usd=0.0), End()]

    on_clock(t)


def cache_bytes(e: CacheEntry) -> bytes:
    return msgspec.msgpack.encode(e)
