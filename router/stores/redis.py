"""The Redis store: state shared by every router replica, one Lua script (``router.stores.lua``)
per atomic operation.

Keys are namespaced by ``prefix`` and carry Redis Cluster hash tags, so every multi-key script but
a request's admission (``lua.BEGIN``, not used on a Cluster) touches one slot: ``{prefix}:rl:{c:<caller>}:...`` (a caller's limiters), ``{prefix}:rl:{p:<provider>}:...``
(a provider's and its models' limiters), ``{prefix}:cb:{<target>}`` (a circuit),
``{prefix}:cache:{<hash>}`` (a cached answer) and ``...:lock`` (its in-flight marker).
Rate-limit scripts use Redis's clock (``TIME``), so replicas with skewed clocks still agree.
Every call is bounded by ``timeout`` seconds; any failure raises ``StoreError``. redis-py
reconnects by itself, and re-loads scripts after a Redis restart (``NOSCRIPT``).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from router.policy import EffectiveCooldown as Cooldown
from router.stores import lua
from router.stores.base import (
    PERIOD,
    STORE_BUDGET,
    Admission,
    AdmitAnswer,
    AdmitAsk,
    BreakerState,
    BudgetSpec,
    LimitResult,
    LimitSpec,
    StoreError,
    Write,
    admit_in_steps,
    writes_one_by_one,
)

__all__ = ["RedisStore"]


def _limit_result(got: list[Any]) -> LimitResult:
    """A ``gcra_out`` reply: {allowed, retry_ms, remaining_1, reset_ms_1, ...}."""
    allowed = int(got[0]) == 1
    return LimitResult(allowed=allowed, retry_after=0.0 if allowed else round(float(got[1]) / 1000, 3),
                       remaining=[int(x) for x in got[2::2]], reset=[round(float(x) / 1000, 3) for x in got[3::2]])


def _ttl_ms(budgets: list[BudgetSpec]) -> int:
    return max(1, int(max((b.ttl for b in budgets), default=0) * 1000))


def sentinel_client(url: str, opts: dict[str, Any]) -> tuple[Any, Any]:
    """(the ``Sentinel``, the client) of ``redis+sentinel://host:port[,host:port...]/<service>[/<db>]``:
    the primary of ``service`` as the sentinels report it (redis-py follows a failover by asking
    them again). Raises ``ValueError`` for a URL without hosts or service."""
    from redis.asyncio.sentinel import Sentinel

    parts = urlsplit(url)
    hosts: list[tuple[str, int]] = []
    for h in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = h.partition(":")
        if host:
            hosts.append((host, int(port) if port else 26379))
    path = [x for x in parts.path.split("/") if x]
    if not hosts or not path:
        raise ValueError("a sentinel URL is redis+sentinel://host:port[,host:port]/<service>[/<db>]")
    password = parts.password if "@" in parts.netloc else None
    sentinel = Sentinel(hosts, **opts)  # type: ignore[no-untyped-call]
    return sentinel, sentinel.master_for(path[0], db=int(path[1]) if len(path) > 1 else 0, password=password, **opts)


def _split_cluster_flag(url: str) -> tuple[str, bool]:
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    cluster = any(k == "cluster" and v.lower() in ("1", "true", "yes") for k, v in query)
    rest = urlencode([(k, v) for k, v in query if k != "cluster"])
    return urlunsplit(parts._replace(query=rest)), cluster


class RedisStore:
    """``Store`` over Redis: ``redis://`` (or ``rediss://``) for one server, add ``?cluster=true``
    for a Redis Cluster, or ``redis+sentinel://host:port[,host:port...]/<service>[/<db>]`` for a
    primary that Redis Sentinel fails over (redis-py's ``Sentinel.master_for``: every command
    goes to the primary the sentinels name now; a password in the URL is the data nodes').

    ``timeout``: seconds allowed for each call (connect included); ``prefix`` namespaces keys.
    """

    kind = "redis"

    def __init__(self, url: str, *, prefix: str = "llmr", timeout: float = 0.05) -> None:
        # one immediate retry on a connection error (a pooled connection Redis closed when it restarted
        # is found dead on use); redis-py's default backoff (up to seconds) would outlast ``timeout``
        opts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                                "decode_responses": False, "retry": Retry(NoBackoff(), 1)}
        self._sentinel: Any = None
        self.cluster = False
        if url.startswith("redis+sentinel://"):
            self._sentinel, self.client = sentinel_client(url, opts)
        else:
            url, cluster = _split_cluster_flag(url)
            self.cluster = cluster
            self.client = (aioredis.RedisCluster.from_url(url, **opts) if cluster
                           else aioredis.Redis.from_url(url, max_connections=256, **opts))
        self.prefix = prefix
        self.timeout = timeout
        self._acquire = self.client.register_script(lua.ACQUIRE)
        self._adjust = self.client.register_script(lua.ADJUST)
        self._budget = self.client.register_script(lua.BUDGET)
        self._admit = self.client.register_script(lua.ADMIT)
        self._failure = self.client.register_script(lua.FAILURE)
        self._release = self.client.register_script(lua.RELEASE)
        self._hold = self.client.register_script(lua.HOLD)
        self._get_or_lock = self.client.register_script(lua.GET_OR_LOCK)
        self._begin = self.client.register_script(lua.BEGIN)

    async def _call(self, coro: Any) -> Any:
        """Await one command within ``timeout``, and within what is left of the current
        request's ``StoreBudget``: a call that times out spends its wait from the budget, so once
        a frozen Redis has cost a request one ``timeout``, its further calls fail at once. Calls
        that answer spend nothing (a healthy Redis never runs a request out)."""
        budget = STORE_BUDGET.get()
        timeout = self.timeout
        if budget is not None:
            timeout -= budget.spent
            if timeout <= 0:
                coro.close()
                raise StoreError("redis: this request's store time is spent")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            async with asyncio.timeout(timeout):
                return await coro
        except TimeoutError:
            if budget is not None:
                budget.spent += loop.time() - t0
            raise StoreError("redis: TimeoutError") from None
        except (RedisError, RedisClusterException, OSError) as e:  # a cluster not formed yet: not a RedisError
            raise StoreError(f"redis: {type(e).__name__}") from None

    def _cb(self, key: str) -> str:
        return f"{self.prefix}:cb:{{{key}}}"

    # -- circuit breakers ------------------------------------------------------------------
    async def breaker_admit(self, key: str, now: float, probe_lease: float) -> Admission:
        got = await self._call(self._admit(keys=[self._cb(key)], args=[now, probe_lease]))
        verdict = got.decode() if isinstance(got, bytes) else str(got)
        return verdict  # type: ignore[return-value]

    async def breaker_success(self, key: str) -> None:
        await self._call(self.client.delete(self._cb(key)))

    async def breaker_hold(self, key: str, now: float, until: float) -> None:
        await self._call(self._hold(keys=[self._cb(key)], args=[now, until]))

    async def breaker_release(self, key: str) -> None:
        await self._call(self._release(keys=[self._cb(key)]))

    async def breaker_failure(self, key: str, now: float, cfg: Cooldown) -> bool:
        got = await self._call(self._failure(keys=[self._cb(key)], args=[
            now, cfg.failures, cfg.window, cfg.duration, cfg.max_duration, cfg.backoff]))
        return bool(int(got))

    async def breaker_states(self, keys: list[str], now: float) -> dict[str, BreakerState]:
        out = {}
        for key in keys:
            v = await self._call(self.client.hmget(self._cb(key), "f", "tr", "ou"))
            f, tr, ou = (float(x) if x is not None else 0.0 for x in v)
            if ou:
                out[key] = BreakerState(state="open" if now < ou else "half_open", trips=int(tr), open_until=ou)
            else:
                out[key] = BreakerState(failures=int(f))
        return out

    # -- rate limits -----------------------------------------------------------------------
    async def limit_acquire(self, specs: list[LimitSpec]) -> LimitResult:
        args: list[Any] = [int(PERIOD * 1000)]
        for s in specs:
            args += [s.limit, s.cost, 1 if s.paced else 0]
        got = await self._call(self._acquire(keys=[f"{self.prefix}:rl:{s.key}" for s in specs], args=args))
        return _limit_result(got)

    async def limit_adjust(self, key: str, limit: int, delta: int) -> None:
        await self._call(self._adjust(keys=[f"{self.prefix}:rl:{key}"], args=[int(PERIOD * 1000), limit, delta]))

    # -- a request's admission and settlement, one round trip each ------------------------
    async def admit(self, ask: AdmitAsk) -> AdmitAnswer:
        """One script (``lua.BEGIN``) on one Redis or behind Sentinel; on a Redis Cluster, whose
        keys of one ask lie in several slots, one call per step (``admit_in_steps``)."""
        if self.cluster:
            return await admit_in_steps(self, ask)
        tl, tb = ask.target_limits or [], ask.target_budgets or []
        cache = [] if ask.cache_key is None else [f"{self.prefix}:cache:{{{ask.cache_key}}}"]
        keys = ([f"{self.prefix}:rl:{s.key}" for s in ask.limits] + [self._bk(b.key) for b in ask.budgets]
                + cache + [k + ":lock" for k in cache]
                + [f"{self.prefix}:rl:{s.key}" for s in tl] + [self._bk(b.key) for b in tb])
        args: list[Any] = [int(PERIOD * 1000), len(ask.limits), len(ask.budgets), 2 * len(cache), len(tl), len(tb),
                           max(1, int(ask.cache_lock * 1000)), _ttl_ms(ask.budgets), _ttl_ms(tb)]
        for group in (ask.limits, ask.budgets, tl, tb):
            for x in group:
                args += [x.limit, x.cost, 1 if x.paced else 0] if isinstance(x, LimitSpec) else [x.limit, x.cost]
        got = await self._call(self._begin(keys=keys, args=args))
        out = AdmitAnswer(limits=_limit_result(got[0]))
        if len(got) > 1:
            out.budgets = [int(x) for x in got[1][1:]] if int(got[1][0]) == 1 else None
        if len(got) > 2 and got[2]:
            kind = int(got[2][0])
            out.cache = (got[2][1], False) if kind == 1 else (None, kind == 2)
        if len(got) > 3:
            out.target = _limit_result(got[3])
        if len(got) > 4:
            out.target_budgets = [int(x) for x in got[4][1:]] if int(got[4][0]) == 1 else None
        elif out.target is not None and out.target.allowed:
            out.target_budgets = []
        return out

    async def write_many(self, writes: list[Write]) -> None:
        """One pipeline (not a transaction: each write is atomic alone); on a Redis Cluster one
        call per write."""
        if not writes:
            return
        if self.cluster:
            await writes_one_by_one(self, writes)
            return

        async def run() -> tuple[list[Write], Exception | None]:
            adjusts: list[tuple[int, Write]] = []  # command index of each limit adjustment
            async with self.client.pipeline(transaction=False) as pipe:
                for w in writes:
                    op, a = w
                    if op == "limit_adjust":
                        # EVALSHA straight into the pipeline: a registered script would make the
                        # pipeline ask SCRIPT EXISTS first, a round trip of its own
                        adjusts.append((len(pipe.command_stack), w))
                        pipe.evalsha(self._adjust.sha, 1, f"{self.prefix}:rl:{a[0]}", int(PERIOD * 1000), a[1], a[2])
                    elif op == "budget_adjust":
                        pipe.incrby(self._bk(a[0]), a[1])
                        pipe.pexpire(self._bk(a[0]), max(1, int(a[2] * 1000)))
                    elif op == "cache_set_unlock":
                        k = f"{self.prefix}:cache:{{{a[0]}}}"
                        pipe.set(k, a[1], px=max(1, int(a[2] * 1000)))
                        pipe.delete(k + ":lock")
                    elif op == "unlock":
                        pipe.delete(f"{self.prefix}:cache:{{{a[0]}}}:lock")
                    else:
                        raise ValueError(f"not a deferrable write: {op}")
                got = await pipe.execute(raise_on_error=False)
            failed = next((r for r in got if isinstance(r, Exception) and not isinstance(r, NoScriptError)), None)
            return [w for i, w in adjusts if isinstance(got[i], NoScriptError)], failed

        again, failed = await self._call(run())
        for w in again:  # Redis restarted and forgot the script (so these did not run): one by one, loading it
            await self.limit_adjust(*w.args)
        if failed is not None:
            raise StoreError(f"redis: {type(failed).__name__}")

    # -- budgets (one hash tag for all: a request's tenant and task budgets in one script) -----
    def _bk(self, key: str) -> str:
        return f"{self.prefix}:bud:{{budgets}}:{key}"

    async def budget_acquire(self, specs: list[BudgetSpec]) -> list[int] | None:
        args: list[Any] = [x for s in specs for x in (s.limit, s.cost)]
        args.append(max(1, int(max(s.ttl for s in specs) * 1000)))
        got = await self._call(self._budget(keys=[self._bk(s.key) for s in specs], args=args))
        return [int(x) for x in got] if got else None

    async def budget_adjust(self, key: str, delta: int, ttl: float) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incrby(self._bk(key), delta)
            pipe.pexpire(self._bk(key), max(1, int(ttl * 1000)))
            await self._call(pipe.execute())

    async def budget_spent(self, keys: list[str]) -> list[int]:
        if not keys:
            return []
        got = await self._call(self.client.mget([self._bk(k) for k in keys]))
        return [int(x) if x is not None else 0 for x in got]

    # -- cache and locks -------------------------------------------------------------------
    async def cache_get(self, key: str) -> bytes | None:
        return await self._call(self.client.get(f"{self.prefix}:cache:{{{key}}}"))  # type: ignore[no-any-return]

    async def cache_set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call(self.client.set(f"{self.prefix}:cache:{{{key}}}", value, px=max(1, int(ttl * 1000))))

    async def cache_get_or_lock(self, key: str, ttl: float) -> tuple[bytes | None, bool]:
        k = f"{self.prefix}:cache:{{{key}}}"  # the entry and its lock share one hash slot
        got = await self._call(self._get_or_lock(keys=[k, k + ":lock"], args=[max(1, int(ttl * 1000))]))
        if isinstance(got, bytes):
            return got, False
        return None, int(got) == 1

    async def cache_set_unlock(self, key: str, value: bytes, ttl: float) -> None:
        k = f"{self.prefix}:cache:{{{key}}}"

        async def run() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(k, value, px=max(1, int(ttl * 1000)))
                pipe.delete(k + ":lock")
                await pipe.execute()

        await self._call(run())

    async def lock(self, key: str, ttl: float) -> bool:
        got = await self._call(self.client.set(f"{self.prefix}:cache:{{{key}}}:lock", b"1", nx=True,
                                               px=max(1, int(ttl * 1000))))
        return bool(got)

    async def unlock(self, key: str) -> None:
        await self._call(self.client.delete(f"{self.prefix}:cache:{{{key}}}:lock"))

    # -- outcomes --------------------------------------------------------------------------
    async def stats_add(self, key: str, fields: dict[str, float], ttl: float | None = None) -> None:
        k = f"{self.prefix}:stats:{{{key}}}"

        async def run() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                for f, v in fields.items():
                    pipe.hincrbyfloat(k, f, v)
                if ttl is not None:
                    pipe.pexpire(k, max(1, int(ttl * 1000)))
                await pipe.execute()

        await self._call(run())

    async def stats_get(self, key: str) -> dict[str, float]:
        raw = await self._call(self.client.hgetall(f"{self.prefix}:stats:{{{key}}}"))
        return {f.decode(): float(v) for f, v in raw.items()}

    async def stats_get_many(self, keys: list[str]) -> list[dict[str, float]]:
        if not keys:
            return []

        async def run() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:  # on a cluster: one batch per node
                for key in keys:
                    pipe.hgetall(f"{self.prefix}:stats:{{{key}}}")
                return await pipe.execute()  # type: ignore[no-any-return]

        return [{f.decode(): float(v) for f, v in raw.items()} for raw in await self._call(run())]

    async def kv_set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call(self.client.set(f"{self.prefix}:kv:{{{key}}}", value, px=max(1, int(ttl * 1000))))

    async def kv_get(self, key: str) -> bytes | None:
        return await self._call(self.client.get(f"{self.prefix}:kv:{{{key}}}"))  # type: ignore[no-any-return]

    async def log_push(self, key: str, values: list[bytes], keep: int) -> None:
        if not values:
            return
        k = f"{self.prefix}:log:{{{key}}}"

        async def run() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.lpush(k, *values)
                pipe.ltrim(k, 0, keep - 1)
                await pipe.execute()

        await self._call(run())

    async def log_get(self, key: str, n: int) -> list[bytes]:
        return await self._call(self.client.lrange(f"{self.prefix}:log:{{{key}}}", 0, n - 1))  # type: ignore[no-any-return]

    async def ping(self) -> bool:
        """Whether the store answers: a read of one key (on a cluster, PING goes to every node,
        so one dead node would say "unreachable" even after its replica took over)."""
        try:
            await self._call(self.client.get(f"{self.prefix}:ping"))
            return True
        except StoreError:
            return False

    async def close(self) -> None:
        await self.client.aclose()
        for s in self._sentinel.sentinels if self._sentinel is not None else ():  # their own connections
            await s.aclose()
