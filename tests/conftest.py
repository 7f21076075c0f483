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
