"""One contract, two stores: the in-memory store and Redis (a real server) behave alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from router.policy import EffectiveCooldown as Cooldown
from router.stores import LimitSpec, MemoryStore, StoreError
from router.stores.redis import RedisStore


@pytest.fixture(params=["memory", "redis", "cluster"])
def make_store(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """The same contract on the in-memory store, one Redis and a Redis Cluster (3 primaries with
    replicas, started by the session fixture)."""
    if request.param == "memory":
        return MemoryStore
    if request.param == "cluster":
        url, prefix = request.getfixturevalue("redis_cluster").url, "llmr-c-" + uuid.uuid4().hex[:8]
        return lambda: RedisStore(url, prefix=prefix, timeout=2.0)
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return lambda: RedisStore(url, prefix=prefix, timeout=1.0)


def run(make_store: Callable[[], Any], body: Callable[[Any], Any]) -> Any:
    async def go() -> Any:
        store = make_store()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(go())


def test_burst_admits_exactly_the_limit(make_store) -> None:  # type: ignore[no-untyped-def]
    async def body(s):  # type: ignore[no-untyped-def]
        results = [await s.limit_acquire([LimitSpec("{c:a}:rpm", 10, 1)]) for _ in range(15)]
        return results

    results = run(make_store, body)
    assert [r.allowed for r in results] == [True] * 10 + [False] * 5
    assert [r.remaining[0] for r in results[:10]] == list(range(9, -1, -1))
    denied = results[-1]
    assert 5.5 < denied.retry_after <= 6.0  # one unit every 6 s at 10 per minute
    assert 59 < results[9].reset[0] <= 60


def test_all_or_nothing_over_several_keys(make_store) -> None:  # type: ignore[no-untyped-def]
    async def body(s):  # type: ignore[no-untyped-def]
        a = await s.limit_acquire([LimitSpec("{c:b}:rpm", 100, 1), LimitSpec("{c:b}:tpm", 1000, 900)])
        b = await s.limit_acquire([LimitSpec("{c:b}:rpm", 100, 1), LimitSpec("{c:b}:tpm", 1000, 200)])
        c = await s.limit_acquire([LimitSpec("{c:b}:rpm", 100, 1), LimitSpec("{c:b}:tpm", 1000, 100)])
        return a, b, c

    a, b, c = run(make_store, body)
    assert a.allowed and not b.allowed and c.allowed
    assert c.remaining[0] == 98  # the denied request charged nothing
    assert c.remaining[1] == 0


def test_refund_and_extra_charge(make_store) -> None:  # type: ignore[no-untyped-def]
    async def body(s):  # type: ignore[no-untyped-def]
        await s.limit_acquire([LimitSpec("{c:d}:tpm", 1000, 800)])
        full = await s.limit_acquire([LimitSpec("{c:d}:tpm", 1000, 300)])
        await s.limit_adjust("{c:d}:tpm", 1000, -500)  # used 300 of the 800 estimated
        after_refund = await s.limit_acquire([LimitSpec("{c:d}:tpm", 1000, 300)])
        await s.limit_adjust("{c:d}:tpm", 1000, 400)  # used 400 more than estimated
        after_extra = await s.limit_acquire([LimitSpec("{c:d}:tpm", 1000, 1)])
        return full, after_refund, after_extra

    full, after_refund, after_extra = run(make_store, body)
    assert not full.allowed and after_refund.allowed and not after_extra.allowed


def test_a_cost_over_the_limit_is_never_admitted(make_store) -> None:  # type: ignore[no-untyped-def]
    r = run(make_store, lambda s: s.limit_acquire([LimitSpec("{c:e}:tpm", 100, 101)]))
    assert not r.allowed and r.retry_after > 0


def test_cache_and_locks(make_store) -> None:  # type: ignore[no-untyped-def]
    async def body(s):  # type: ignore[no-untyped-def]
        assert await s.cache_get("k1") is None
        await s.cache_set("k1", b"\x00\x01value", 60)
        got = await s.cache_get("k1")
        assert await s.lock("k1", 5) is True
        assert await s.lock("k1", 5) is False
        await s.unlock("k1")
        assert await s.lock("k1", 5) is True
        await s.cache_set("k2", b"short", 0.05)
        await asyncio.sleep(0.1)
        return got, await s.cache_get("k2"), await s.ping()

    got, expired, ping = run(make_store, body)
    assert got == b"\x00\x01value" and expired is None and ping is True


def test_cache_get_or_lock_and_set_unlock(make_store) -> None:  # type: ignore[no-untyped-def]
    """The one-round-trip lookup: a miss takes the lock once; the leader's write releases it."""
    async def body(s):  # type: ignore[no-untyped-def]
        first = await s.cache_get_or_lock("k3", 5)  # miss, and this caller leads
        second = await s.cache_get_or_lock("k3", 5)  # miss, someone else leads
        await s.cache_set_unlock("k3", b"answer", 60)
        third = await s.cache_get_or_lock("k3", 5)  # hit
        relock = await s.lock("k3", 5)  # the write released the lock
        return first, second, third, relock

    assert run(make_store, body) == ((None, True), (None, False), (b"answer", False), True)


def test_breaker(make_store) -> None:  # type: ignore[no-untyped-def]
    cfg = Cooldown(failures=2, window=30, duration=10, max_duration=25, backoff=2)

    async def body(s):  # type: ignore[no-untyped-def]
        out = [await s.breaker_admit("glm/x", 1000, 5), await s.breaker_failure("glm/x", 1000, cfg),
               await s.breaker_admit("glm/x", 1000.5, 5),  # failures counted: a success must report
               await s.breaker_failure("glm/x", 1001, cfg), await s.breaker_admit("glm/x", 1002, 5),
               (await s.breaker_states(["glm/x"], 1002))["glm/x"].state,
               await s.breaker_admit("glm/x", 1012, 5), await s.breaker_admit("glm/x", 1012.5, 5),
               await s.breaker_failure("glm/x", 1013, cfg),  # a failed probe: 10 s x backoff 2
               (await s.breaker_states(["glm/x"], 1013))["glm/x"].open_until]
        await s.breaker_success("glm/x")
        out.append(await s.breaker_admit("glm/x", 1014, 5))
        return out

    assert run(make_store, body) == ["closed", False, "failing", True, "open", "open", "probe", "open", True, 1033.0,
                                     "closed"]


def test_breaker_probe_release_and_no_growth_by_default(make_store) -> None:  # type: ignore[no-untyped-def]
    """A released probe lets the next request probe at once; without ``backoff`` a failed probe
    re-opens for ``duration`` again; a success resets the failure count."""
    cfg = Cooldown(failures=2, window=30, duration=10, max_duration=300)

    async def body(s):  # type: ignore[no-untyped-def]
        await s.breaker_failure("glm/y", 1000, cfg)
        await s.breaker_success("glm/y")  # a success in between: the count starts again
        out = [await s.breaker_failure("glm/y", 1001, cfg), await s.breaker_failure("glm/y", 1002, cfg),
               await s.breaker_admit("glm/y", 1012, 600), await s.breaker_admit("glm/y", 1013, 600)]
        await s.breaker_release("glm/y")  # the probe ended without a verdict
        out += [await s.breaker_admit("glm/y", 1014, 600), await s.breaker_failure("glm/y", 1015, cfg),
                (await s.breaker_states(["glm/y"], 1015))["glm/y"].open_until]
        await s.breaker_release("glm/z")  # no breaker: nothing is made
        out.append((await s.breaker_states(["glm/z"], 1015))["glm/z"].state)
        return out

    assert run(make_store, body) == [False, True, "probe", "open", "probe", True, 1025.0, "closed"]


def test_unreachable_redis_raises_store_error() -> None:
    async def body() -> None:
        s = RedisStore("redis://127.0.0.1:1/0", timeout=0.05)
        try:
            with pytest.raises(StoreError):
                await s.limit_acquire([LimitSpec("{c:f}:rpm", 10, 1)])
            assert await s.ping() is False
        finally:
            await s.close()

    asyncio.run(body())


def test_memory_cache_is_bounded() -> None:
    async def body() -> list[bytes | None]:
        s = MemoryStore(max_entries=3)
        for i in range(5):
            await s.cache_set(f"k{i}", str(i).encode(), 60)
        return [await s.cache_get(f"k{i}") for i in range(5)]

    assert asyncio.run(body()) == [None, None, b"2", b"3", b"4"]


def test_stats_kv_and_logs(make_store) -> None:  # type: ignore[no-untyped-def]
    async def body(s):  # type: ignore[no-untyped-def]
        await s.stats_add("exp:t:a", {"requests": 1, "cost_usd": 0.25})
        await s.stats_add("exp:t:a", {"requests": 1, "cost_usd": 0.5, "errors": 1})
        await s.kv_set("resp:1", b"t\ta", 60)
        for i in range(5):
            await s.log_push("shadow:t", [str(i).encode()], 3)
        await s.log_push("many", [b"a", b"b", b"c", b"d"], 3)
        await s.log_push("many", [], 3)
        await s.stats_add("minute:1", {"requests": 2}, ttl=60)
        await s.stats_add("minute:2", {"requests": 3, "errors": 1})
        many = await s.stats_get_many(["minute:1", "nothing", "minute:2"])
        return (await s.stats_get("exp:t:a"), await s.stats_get("nothing"), await s.kv_get("resp:1"),
                await s.kv_get("resp:2"), await s.log_get("shadow:t", 10), await s.log_get("many", 10), many)

    stats, empty, hit, miss, log, batch, many = run(make_store, body)
    assert stats == {"requests": 2.0, "cost_usd": 0.75, "errors": 1.0} and empty == {}
    assert hit == b"t\ta" and miss is None and log == [b"4", b"3", b"2"]
    assert batch == [b"d", b"c", b"b"]  # the last pushed is the newest
    assert many == [{"requests": 2.0}, {}, {"requests": 3.0, "errors": 1.0}]


def test_stats_written_with_a_ttl_expire(make_store) -> None:  # type: ignore[no-untyped-def]
    """A counter hash written with a ttl lives that long after its last write (Redis: its PTTL;
    memory: on its injected clock), one without stays."""
    async def body(s):  # type: ignore[no-untyped-def]
        await s.stats_add("short", {"n": 1}, ttl=30)
        await s.stats_add("short", {"n": 1}, ttl=60)  # the last write sets it
        await s.stats_add("forever", {"n": 1})
        if isinstance(s, MemoryStore):
            s.clock = lambda: 1e10
            return await s.stats_get_many(["short", "forever"]), None
        short = await s.client.pttl(f"{s.prefix}:stats:{{short}}")
        forever = await s.client.pttl(f"{s.prefix}:stats:{{forever}}")
        return await s.stats_get_many(["short", "forever"]), (short, forever)

    got, ttls = run(make_store, body)
    if ttls is None:
        assert got == [{}, {"n": 1.0}]
    else:
        assert got == [{"n": 2.0}, {"n": 1.0}]
        assert 30_000 < ttls[0] <= 60_000 and ttls[1] == -1


def test_a_paced_limiter_admits_one_unit_per_interval_beside_the_shared_bucket(make_store) -> None:  # type: ignore[no-untyped-def]
    """Background work: paced (no burst) on its own key, and counted in the shared bucket."""
    async def body(s):  # type: ignore[no-untyped-def]
        specs = [LimitSpec("{p:q}:rpm", 10, 1), LimitSpec("{p:q}:bg:rpm", 5, 1, paced=True)]
        first = await s.limit_acquire(specs)
        second = await s.limit_acquire(specs)  # paced: 12 s after the first, at 5 per minute
        interactive = [await s.limit_acquire(specs[:1]) for _ in range(10)]
        return first, second, interactive

    first, second, interactive = run(make_store, body)
    assert first.allowed and not second.allowed and 11.5 < second.retry_after <= 12.0
    assert [r.allowed for r in interactive] == [True] * 9 + [False]  # the background request used one of 10


def test_budgets_reserve_all_or_nothing_and_adjust(make_store) -> None:  # type: ignore[no-untyped-def]
    from router.stores import BudgetSpec

    async def body(s):  # type: ignore[no-untyped-def]
        day, month = "t:x:d:2026-12-01", "t:x:m:2026-12"
        a = await s.budget_acquire([BudgetSpec(day, 1000, 600, 60), BudgetSpec(month, 5000, 600, 60)])
        b = await s.budget_acquire([BudgetSpec(day, 1000, 600, 60), BudgetSpec(month, 5000, 600, 60)])  # day over
        await s.budget_adjust(day, -400, 60)  # the request cost 200, not 600
        c = await s.budget_acquire([BudgetSpec(day, 1000, 600, 60), BudgetSpec(month, 5000, 600, 60)])
        return a, b, c, await s.budget_spent([day, month, "unknown"])

    a, b, c, spent = run(make_store, body)
    assert a == [600, 600] and b is None and c == [800, 1200] and spent == [800, 1200, 0]


def test_admit_runs_each_step_only_after_the_ones_before(make_store) -> None:  # type: ignore[no-untyped-def]
    """``Store.admit``: the caller's limits, then its budgets, then the cache lookup, then the
    first target's quota and budget, each step only when those before it succeeded."""
    from router.stores import BudgetSpec
    from router.stores.base import AdmitAsk

    def ask(cost: int = 1, budget: int = 10, key: str | None = "k1", target: str = "{p:p}:rpm") -> AdmitAsk:
        return AdmitAsk([LimitSpec("{c:a}:rpm", 5, cost)], [BudgetSpec("task:t:d:x", 100, budget, 60)], key, 30.0,
                        [LimitSpec(target, 100 if target == "{p:p}:rpm" else 1, 1)],
                        [BudgetSpec("provider:p:d:x", 1000, 10, 60)])

    async def body(s):  # type: ignore[no-untyped-def]
        out: dict[str, Any] = {}
        out["lead"] = await s.admit(ask())  # a miss: locked for us, and the target charged
        out["follow"] = await s.admit(ask())  # the same key locked by another: the target not charged
        out["hit_setup"] = await s.cache_set("k2", b"entry", 60)
        out["hit"] = await s.admit(ask(key="k2"))  # a hit: the target not charged
        out["over_limit"] = await s.admit(ask(cost=9))  # over the caller's limit: nothing done
        out["over_budget"] = await s.admit(ask(budget=95))  # over the budget: the limits given back
        await s.limit_acquire([LimitSpec("{p:q}:rpm", 1, 1)])  # that target's quota spent
        out["target_over"] = await s.admit(ask(key=None, target="{p:q}:rpm"))  # only the target refused
        out["rpm"] = await s.limit_acquire([LimitSpec("{c:a}:rpm", 5, 0)])
        out["target_rpm"] = await s.limit_acquire([LimitSpec("{p:p}:rpm", 100, 0)])
        out["spent"] = await s.budget_spent(["task:t:d:x", "provider:p:d:x"])
        out["k1_locked"] = await s.lock("k1", 1.0)
        return out

    o = run(make_store, body)
    lead = o["lead"]
    assert lead.limits.allowed and lead.limits.remaining == [4] and lead.budgets == [10]
    assert lead.cache == (None, True) and lead.target.allowed and lead.target_budgets == [10]
    follow = o["follow"]
    assert follow.limits.allowed and follow.cache == (None, False) and follow.target is None
    hit = o["hit"]
    assert hit.cache == (b"entry", False) and hit.target is None and hit.budgets == [30]
    over = o["over_limit"]
    assert not over.limits.allowed and over.limits.retry_after > 0 and over.cache is None
    ob = o["over_budget"]
    assert ob.limits.allowed and ob.budgets is None and ob.cache is None and ob.target is None
    to = o["target_over"]
    assert to.limits.allowed and to.budgets == [40] and to.cache is None
    assert to.target is not None and not to.target.allowed and to.target.retry_after > 0
    # charged: lead, follow, hit and target_over (4 of 5 rpm); over_limit and over_budget nothing
    assert o["rpm"].remaining == [1]
    assert o["target_rpm"].remaining == [99]  # only the leader's call charged the target
    assert o["spent"] == [40, 10]
    assert o["k1_locked"] is False  # the leader's lock stands


def test_write_many_applies_each_write(make_store) -> None:  # type: ignore[no-untyped-def]
    from router.stores.base import Write

    async def body(s):  # type: ignore[no-untyped-def]
        await s.limit_acquire([LimitSpec("{c:w}:tpm", 1000, 900)])
        await s.budget_adjust("task:w:d:x", 500, 60)
        assert await s.lock("kw", 30.0)
        assert await s.lock("kw2", 30.0)
        await s.write_many([Write("limit_adjust", ("{c:w}:tpm", 1000, -800)), Write("budget_adjust", ("task:w:d:x", -200, 60)),
                            Write("cache_set_unlock", ("kw", b"answer", 60)), Write("unlock", ("kw2",))])
        return (await s.limit_acquire([LimitSpec("{c:w}:tpm", 1000, 800)]), await s.budget_spent(["task:w:d:x"]),
                await s.cache_get("kw"), await s.lock("kw", 1.0), await s.lock("kw2", 1.0))

    tpm, spent, entry, relock, relock2 = run(make_store, body)
    assert tpm.allowed and spent == [300] and entry == b"answer" and relock and relock2


def test_write_many_one_by_one_tries_every_write_after_a_failure() -> None:
    """On a store without pipelines (a Redis Cluster), a failed write does not drop the rest."""
    from router.stores.base import Write, writes_one_by_one

    class Flaky(MemoryStore):
        async def limit_adjust(self, key: str, limit: int, delta: int) -> None:
            raise StoreError("redis: TimeoutError")

    async def go() -> tuple[bool, bool]:
        s = Flaky()
        assert await s.lock("k", 30.0)
        with pytest.raises(StoreError):
            await writes_one_by_one(s, [Write("limit_adjust", ("{c:x}:tpm", 10, -1)),
                                        Write("cache_set_unlock", ("k", b"entry", 60))])
        return await s.cache_get("k") == b"entry", await s.lock("k", 1.0)

    assert asyncio.run(go()) == (True, True)


def test_an_admission_gives_back_what_nobody_used() -> None:
    """An admission that looked the cache up (and took its lock) and charged the first target,
    then ended without streaming, releases the lock and refunds the target's quota."""
    from router.limits import FirstTarget, Limiter
    from router.loading import parse_config

    config = parse_config("""
version: 1
providers:
  p:
    protocol: openai
    base_url: http://upstream/v1
    api_key: k
    limits: {rpm: 10}
    models: {m: {context_window: 1000}}
tasks:
  t: {chain: [p/m], limits: {rpm: 10}}
""", {})

    async def go() -> tuple[bool, list[int], list[int]]:
        store = MemoryStore()
        limiter = Limiter(config, store)
        async with limiter.caller("alice", "t", 10, cache=("key", 30.0), first=FirstTarget("p", "m")) as ticket:
            assert ticket.looked == (None, True) and ticket.first is not None
        caller = await store.limit_acquire([LimitSpec("{c:alice}:t:t:rpm", 10, 0)])
        target = await store.limit_acquire([LimitSpec("{p:p}:rpm", 10, 0)])
        return await store.lock("key", 1.0), caller.remaining, target.remaining

    relocked, caller, target = asyncio.run(go())
    assert relocked  # the lock was released
    assert caller == [10]  # nothing was served: the caller's charge is refunded too
    assert target == [10]  # the target's quota was given back whole
