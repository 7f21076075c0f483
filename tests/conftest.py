"""Fixtures every test layer may use: a real Redis.

``redis_url``: ``REDIS_URL`` when set, else a Redis answering on 127.0.0.1:6379, else a
``redis-server`` this fixture starts on a free port (and stops). Tests keep their keys under a
fresh prefix and delete them afterwards. ``redis_proc`` always starts a private server, for tests
that stop and restart it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


class RedisProc:
    """A private ``redis-server`` on a free port that a test may stop and start again."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        self.exe = exe
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.p: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.p = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _answers(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.kill()
            self.p.wait()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url and _answers(url):
        yield url
        return
    if _answers("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379/0"
        return
    proc = RedisProc()
    try:
        yield proc.url
    finally:
        proc.stop()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    prefix = "llmr-test-" + uuid.uuid4().hex[:12]
    yield prefix
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=prefix + ":*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.fixture
def redis_proc() -> Iterator[RedisProc]:
    proc = RedisProc()
    try:
        yield proc
    finally:
        proc.stop()


def _cluster_ports(n: int) -> list[int]:
    """``n`` ports whose cluster-bus port (port + 10000) is free too (an ephemeral port's is past 65535)."""
    import random

    out: list[int] = []
    while len(out) < n:
        p = random.randint(20000, 29999)
        try:
            for q in (p, p + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
        except OSError:
            continue
        if p not in out:
            out.append(p)
    return out


class RedisCluster:
    """A private Redis Cluster on loopback: 3 primaries, each with a replica, made with the
    cluster commands themselves (``CLUSTER MEET``, ``ADDSLOTSRANGE``, ``REPLICATE``), so only
    ``redis-server`` is needed. ``url`` names one primary with ``?cluster=true``."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        self.ports = _cluster_ports(6)
        self.procs = [subprocess.Popen(
            [exe, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file",
             f"nodes-{p}.conf", "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
             "--repl-diskless-sync-delay", "0"],  # replicas sync at once, not after the default 5 s
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in self.ports]
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0?cluster=true"
        try:
            self._form()
        except BaseException:
            self.stop()
            raise

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def _form(self) -> None:
        deadline = time.monotonic() + 20
        for p in self.ports:
            while not _answers(f"redis://127.0.0.1:{p}/0"):
                if time.monotonic() > deadline:
                    raise RuntimeError("cluster node did not start")
                time.sleep(0.02)
        first = self._node(self.ports[0])
        for p in self.ports[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", p)
        for i, (lo, hi) in enumerate(((0, 5460), (5461, 10922), (10923, 16383))):
            self._node(self.ports[i]).execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        ids = [self._node(p).execute_command("CLUSTER", "MYID").decode() for p in self.ports]
        while any(len(self._node(p).execute_command("CLUSTER", "NODES").decode().splitlines()) < 6 for p in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError("cluster nodes did not meet")
            time.sleep(0.05)
        for i in range(3):
            self._node(self.ports[3 + i]).execute_command("CLUSTER", "REPLICATE", ids[i])
        while any(b"cluster_state:ok" not in self._node(p).execute_command("CLUSTER", "INFO") for p in self.ports) \
                or any(self._node(p).info("replication").get("master_link_status") != "up"
                       for p in self.ports[3:]):  # every replica in sync: it can take over
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not form")
            time.sleep(0.05)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster for the session (3 primaries with replicas), started and stopped here."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
