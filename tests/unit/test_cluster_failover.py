"""A Redis Cluster primary fails under steady traffic (SIGKILL; its replica takes over after the
cluster's node timeout): no request fails (``on_store_error: allow`` lets them through,
uncounted, while the slot has no primary), the store recovers by itself, and after it the limits
are exact again (N admitted for a limit of N) and cached answers are whole. Prints the measured
window: the README quotes it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from router.stores import LimitSpec
from router.stores.base import background
from router.stores.redis import RedisStore
from tests.conftest import RedisCluster
from tests.unit._app import app

YAML = """
version: 1
providers:
  glm:
    protocol: openai
    base_url: http://emulator/api/paas/v4
    api_key: k
    models:
      glm-4.6: {context_window: 200000}
tasks:
  chat: {chain: [glm/glm-4.6]}
  limited: {chain: [glm/glm-4.6], limits: {rpm: 5}}
  cached: {chain: [glm/glm-4.6], cache: {ttl: 600}}
on_store_error: allow
queue: {workers: 0}
"""


def _primary_of(cluster: RedisCluster, key: str) -> tuple[int, int]:
    """(port, pid) of the primary serving ``key``'s slot."""
    node = redis.Redis(port=cluster.ports[0])
    slot = node.execute_command("CLUSTER", "KEYSLOT", key)
    for lo, hi, primary, *_ in node.execute_command("CLUSTER", "SLOTS"):
        if lo <= slot <= hi:
            port = int(primary[1])
            return port, cluster.procs[cluster.ports.index(port)].pid
    raise AssertionError("no primary for the slot")


@pytest.mark.slow
def test_a_primary_failover_under_load_fails_no_request_and_limits_are_exact_after(tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path)
    prefix = "llmr-fo"
    report: dict[str, Any] = {}

    async def go() -> None:
        store = RedisStore(cluster.url, prefix=prefix, timeout=0.2)
        try:
            async with app(YAML, store=store) as a:
                port, pid = _primary_of(cluster, "{c:steady}")  # the slot of the steady caller's limiter keys
                statuses: list[int] = []
                degraded_at: list[float] = []
                stop = asyncio.Event()

                async def steady() -> None:
                    while not stop.is_set():
                        r = await a.client.post("/v1/tasks", json={"task": "chat", "messages": [
                            {"role": "user", "content": "hi"}]}, headers={"x-caller": "steady"})
                        statuses.append(r.status_code)
                        await asyncio.sleep(0.01)

                cached = await a.client.post("/v1/tasks", json={"task": "cached", "messages": [
                    {"role": "user", "content": "keep me"}]})
                loaders = [asyncio.create_task(steady()) for _ in range(4)]
                await asyncio.sleep(0.3)
                t0 = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                recovered = None
                while time.monotonic() - t0 < 30:
                    ok = await background(_writes(store))  # outside any request's store budget
                    if not ok:
                        degraded_at.append(time.monotonic() - t0)
                    elif degraded_at:
                        recovered = time.monotonic() - t0
                        break
                    await asyncio.sleep(0.05)
                stop.set()
                await asyncio.gather(*loaders)
                assert recovered is not None, f"the store never recovered: {sorted(set(_seen))[:5]}"
                report.update(window_s=round(recovered, 2), requests=len(statuses),
                              failed=sum(1 for s in statuses if s != 200))
                assert report["failed"] == 0  # on_store_error: allow
                got = [(await a.client.post("/v1/tasks", json={"task": "limited", "messages": [
                    {"role": "user", "content": f"n{i}"}]}, headers={"x-caller": "after"})).status_code for i in range(8)]
                assert got == [200] * 5 + [429] * 3  # exact again
                again = await a.client.post("/v1/tasks", json={"task": "cached", "messages": [
                    {"role": "user", "content": "keep me"}]})
                assert again.status_code == 200 and again.json()["text"] == cached.json()["text"]
        finally:
            await store.close()

    try:
        asyncio.run(go())
    finally:
        cluster.stop()
    print(f"\nfailover: store back {report['window_s']} s after the primary was killed; "
          f"{report['requests']} requests meanwhile, {report['failed']} failed")


async def _writes(store: RedisStore) -> bool:
    """Whether a write to the killed primary's slot goes through again."""
    try:
        await store.limit_acquire([LimitSpec("{c:steady}:probe", 1_000_000, 1)])  # the limiter keys' slot
        return True
    except Exception as e:  # noqa: BLE001 - StoreError while the slot has no primary
        _seen.append(f"{type(e).__name__}: {e}")
        return False


_seen: list[str] = []


@pytest.mark.slow
def test_redis_sentinel_urls_follow_a_failover(tmp_path: Path) -> None:
    """``redis+sentinel://``: a primary, its replica and a sentinel (quorum 1) on loopback; the
    primary is killed, the sentinel promotes the replica, and the store follows it."""
    import shutil
    import subprocess

    from tests.conftest import _cluster_ports, _answers

    exe = shutil.which("redis-server") or "redis-server"
    primary, replica, sentinel = _cluster_ports(3)
    base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
    procs = [subprocess.Popen([exe, "--port", str(primary), *base], cwd=tmp_path, stdout=subprocess.DEVNULL),
             subprocess.Popen([exe, "--port", str(replica), "--replicaof", "127.0.0.1", str(primary), *base], cwd=tmp_path,
                              stdout=subprocess.DEVNULL)]
    (tmp_path / "sentinel.conf").write_text(
        f"port {sentinel}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {primary} 1\n"
        "sentinel down-after-milliseconds mymaster 500\nsentinel failover-timeout mymaster 3000\n")
    procs.append(subprocess.Popen([exe, str(tmp_path / "sentinel.conf"), "--sentinel"], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL))
    try:
        deadline = time.monotonic() + 15
        def known() -> bool:  # the sentinel has seen the replica (it learns replicas from the primary's INFO)
            try:
                replicas = redis.Redis(port=sentinel).sentinel_slaves("mymaster")
            except redis.RedisError:
                return False
            return any(not r.get("is_sdown") and not r.get("is_disconnected") for r in replicas)

        while not (_answers(f"redis://127.0.0.1:{sentinel}/0")
                   and redis.Redis(port=replica).info("replication").get("master_link_status") == "up" and known()):
            assert time.monotonic() < deadline, "sentinel setup did not come up"
            time.sleep(0.05)

        async def go() -> float:
            store = RedisStore(f"redis+sentinel://127.0.0.1:{sentinel}/mymaster/0", prefix="llmr-s", timeout=0.5)
            try:
                first = await store.limit_acquire([LimitSpec("{c:s}:rpm", 3, 1)])
                assert first.allowed
                procs[0].kill()
                procs[0].wait()
                t0 = time.monotonic()
                while time.monotonic() - t0 < 20:
                    if await background(_writes(store)):
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError(f"the store never followed the failover: {sorted(set(_seen))[:3]}")
                took = time.monotonic() - t0
                got = [(await store.limit_acquire([LimitSpec("{c:after}:rpm", 3, 1)])).allowed for _ in range(4)]
                assert got == [True, True, True, False]  # exact on the new primary
                return took
            finally:
                await store.close()

        took = asyncio.run(go())
        assert redis.Redis(port=replica).info("replication")["role"] == "master"
        print(f"\nsentinel failover: the store wrote again {took:.2f} s after the primary was killed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
