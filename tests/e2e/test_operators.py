"""Operators: live routing.yaml, SIGHUP, workers, tenants and keys, secrets, validate, deployment."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from router.auth import hash_key
from router.emulator import free_port
from tests.e2e._client import ask, stream_events
from tests.e2e.conftest import Proc

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

ZAI_SECRET_ENV = "zk-ENVFILE-7c1d9e"
ZAI_SECRET_LOCAL = "zk-LOCALFILE-2b8f4a"
TENANT_KEY = "tk-billing-9f3e2d77"
OTHER_KEY = "tk-search-1a2b3c4d"
ADMIN_KEY = "ak-admin-55aa66bb"


def base_yaml(emu: str, chain: str = "[glm/glm-a]", extra: str = "") -> str:
    return f"""
version: 1
providers:
  glm:
    protocol: openai
    base_url: {emu}/api/paas/v4
    api_key: ${{ZAI_API_KEY}}
    models:
      glm-a: {{context_window: 200000, price: {{input: 1, output: 1}}}}
  claude:
    protocol: anthropic
    base_url: {emu}
    api_key: ${{ANTHROPIC_API_KEY:-unused}}
    models:
      claude-a: {{context_window: 200000, price: {{input: 1, output: 1}}}}
tasks:
  t:
    chain: {chain}
  other:
    chain: [claude/claude-a]
{extra}"""


def start(tmp: Path, text: str, *args: str, env: dict[str, str] | None = None) -> tuple[str, Proc]:
    (tmp / "routing.yaml").write_text(text)
    port = free_port()
    proc = Proc(["serve", "--config", str(tmp / "routing.yaml"), "--port", str(port), *args], tmp / "router.log",
                {"ZAI_API_KEY": "zk-process", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/healthz")
    return url, proc


def version(url: str, headers: dict[str, str] | None = None) -> str:
    return httpx.get(url + "/readyz", headers=headers).json()["config"]["version"]  # type: ignore[no-any-return]


def wait_for(pred, timeout: float = 2.0) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def model_of(url: str, task: str = "t", **kw) -> str:  # type: ignore[no-untyped-def]
    return httpx.post(url + "/v1/tasks", json={"task": task, "messages": ask("hi")}, timeout=10, **kw).json()["model"]


def test_valid_edit_applies_live_and_invalid_edit_changes_nothing(tmp_path: Path, emulator: str) -> None:
    url, proc = start(tmp_path, base_yaml(emulator))
    try:
        v1 = version(url)
        assert model_of(url) == "glm-a"
        (tmp_path / "routing.yaml").write_text(base_yaml(emulator, "[claude/claude-a, glm/glm-a]"))
        took = wait_for(lambda: version(url) != v1)
        assert took < 2.0 and model_of(url) == "claude-a"
        v2 = version(url)
        (tmp_path / "routing.yaml").write_text(base_yaml(emulator, "[claude/claude-a, glmx/glm-a]"))
        wait_for(lambda: httpx.get(url + "/readyz").json()["config"]["rejected"] is not None)
        ready = httpx.get(url + "/readyz").json()
        assert ready["config"]["version"] == v2
        assert "tasks.t.chain[1]: unknown provider 'glmx'" in ready["config"]["rejected"]["errors"]
        assert model_of(url) == "claude-a"  # the last good config keeps serving
        (tmp_path / "routing.yaml").write_text("providers: [oops\n")
        wait_for(lambda: httpx.get(url + "/readyz").json()["config"]["rejected"]["errors"][0].startswith("line "))
        assert httpx.get(url + "/v1/routes").json()["config"]["version"] == v2
    finally:
        proc.stop()
    assert "unknown provider 'glmx'" in proc.output() and "rejected" in proc.output()


def test_in_flight_stream_finishes_on_its_config(tmp_path: Path, emulator: str) -> None:
    url, proc = start(tmp_path, base_yaml(emulator))
    try:
        slow = {"glm-a": {"text": " ".join(["w"] * 30), "chunk_delay_ms": 40}}
        result: dict[str, list] = {}  # type: ignore[type-arg]

        def run() -> None:
            with httpx.Client(timeout=20) as c:
                result["events"] = stream_events(c, url, {"task": "t", "messages": ask("slow", slow)})

        t = threading.Thread(target=run)
        v1 = version(url)
        t.start()
        time.sleep(0.3)
        (tmp_path / "routing.yaml").write_text(base_yaml(emulator, "[claude/claude-a]"))
        wait_for(lambda: version(url) != v1)
        assert model_of(url) == "claude-a"
        t.join(20)
        events = result["events"]
        assert events[0]["model"] == "glm-a" and events[-1]["type"] == "end"
        assert sum(e["type"] == "text.delta" for e in events) == 30
    finally:
        proc.stop()


def test_sighup_reloads(tmp_path: Path, emulator: str) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "routing.yaml").write_text(base_yaml(emulator))
    link_dir = tmp_path / "etc"
    link_dir.mkdir()
    (link_dir / "routing.yaml").symlink_to(real / "routing.yaml")  # edits to the target are not watched
    port = free_port()
    proc = Proc(["serve", "--config", str(link_dir / "routing.yaml"), "--port", str(port)], tmp_path / "r.log",
                {"ZAI_API_KEY": "zk"})
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url + "/healthz")
        v1 = version(url)
        (real / "routing.yaml").write_text(base_yaml(emulator, "[claude/claude-a]"))
        time.sleep(0.5)
        assert version(url) == v1  # not seen by the watcher
        os.kill(proc.p.pid, signal.SIGHUP)
        wait_for(lambda: version(url) != v1)
        assert model_of(url) == "claude-a"
    finally:
        proc.stop()


def test_every_worker_reloads(tmp_path: Path, emulator: str) -> None:
    url, proc = start(tmp_path, base_yaml(emulator), "--workers", "2")
    try:
        wait_for(lambda: httpx.get(url + "/readyz").status_code == 200, 20)
        v1 = version(url)
        (tmp_path / "routing.yaml").write_text(base_yaml(emulator, "[claude/claude-a]"))

        seen: dict[int, str] = {}

        def all_new() -> bool:  # fresh connections spread over both workers; each watches the file
            for _ in range(16):
                r = httpx.get(url + "/readyz").json()
                seen[r["pid"]] = r["config"]["version"]
            return len(seen) == 2 and all(v != v1 for v in seen.values())

        try:
            assert wait_for(all_new, 4) < 4
        except AssertionError:
            raise AssertionError(f"seen {seen}, v1 {v1}: {proc.output()[-3000:]}") from None
    finally:
        proc.stop()


def tenant_yaml(emu: str) -> str:
    return base_yaml(emu, extra=f"""
tenants:
  billing-svc:
    keys: [{hash_key(TENANT_KEY)}]
    tasks: [t]
    limits: {{rpm: 3}}
  search-svc:
    keys: [{hash_key(OTHER_KEY)}]
admin_keys: [{hash_key(ADMIN_KEY)}]
""")


def test_auth_matrix(tmp_path: Path, emulator: str) -> None:
    url, proc = start(tmp_path, tenant_yaml(emulator))
    try:
        def post(task: str, headers: dict[str, str]) -> httpx.Response:
            return httpx.post(url + "/v1/tasks", json={"task": task, "messages": ask("x")}, headers=headers, timeout=10)

        assert post("t", {}).status_code == 401
        assert post("t", {"authorization": "Bearer wrong"}).status_code == 401
        assert post("t", {"authorization": f"Bearer {TENANT_KEY}"}).status_code == 200
        assert post("t", {"x-api-key": TENANT_KEY}).status_code == 200
        forbidden = post("other", {"authorization": f"Bearer {TENANT_KEY}"})
        assert forbidden.status_code == 403 and forbidden.json()["error"]["type"] == "permission_error"
        assert post("other", {"authorization": f"Bearer {OTHER_KEY}"}).status_code == 200  # every task
        assert post("t", {"authorization": f"Bearer {TENANT_KEY}"}).status_code == 200
        limited = post("t", {"authorization": f"Bearer {TENANT_KEY}"})
        assert limited.status_code == 429 and limited.headers["x-ratelimit-limit"] == "3"  # the tenant's own
        assert httpx.get(url + "/v1/routes").status_code == 401
        assert httpx.get(url + "/v1/routes", headers={"authorization": f"Bearer {TENANT_KEY}"}).status_code == 403
        routes = httpx.get(url + "/v1/routes", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert routes.status_code == 200 and routes.json()["tenants"]["billing-svc"]["keys"] == 1
        assert hash_key(TENANT_KEY).split(":")[1] not in routes.text
        with openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError):
                c.chat.completions.create(model="t", messages=[{"role": "user", "content": "x"}])
        with openai.OpenAI(base_url=url + "/v1", api_key=TENANT_KEY, max_retries=0) as c:
            with pytest.raises(openai.PermissionDeniedError):
                c.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    finally:
        proc.stop()
    assert "auth: off" not in proc.output()


def test_secrets_layering_and_redaction(tmp_path: Path, emulator: str) -> None:
    (tmp_path / ".env").write_text(f"ZAI_API_KEY={ZAI_SECRET_ENV}\nANTHROPIC_API_KEY={ZAI_SECRET_ENV}-ant\n")
    (tmp_path / ".env.local").write_text(f"ZAI_API_KEY={ZAI_SECRET_LOCAL}\n")
    text = tenant_yaml(emulator)
    (tmp_path / "routing.yaml").write_text(text)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("ZAI_API_KEY", "ANTHROPIC_API_KEY")}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        proc = Proc(["serve", "--config", str(tmp_path / "routing.yaml"), "--port", str(port)], tmp_path / "r.log")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    url = f"http://127.0.0.1:{port}"
    seen: list[str] = []
    try:
        proc.wait_http(url + "/healthz")
        auth = {"authorization": f"Bearer {TENANT_KEY}"}
        ok = httpx.post(url + "/v1/tasks", json={"task": "t", "messages": ask("x", {"*": {"text": "fine"}})}, headers=auth)
        assert ok.status_code == 200
        sent = httpx.get(f"{emulator}/_emulator/last/glm-a").json()["credential_sha256"]
        assert sent == hashlib.sha256(ZAI_SECRET_LOCAL.encode()).hexdigest()  # .env.local over .env
        for r in (ok, httpx.get(url + "/readyz"), httpx.get(url + "/v1/routes", headers={"authorization": f"Bearer {ADMIN_KEY}"}),
                  httpx.post(url + "/v1/tasks", json={"task": "t", "messages": ask("x", {"*": {"status": 401}})}, headers=auth),
                  httpx.post(url + "/v1/tasks", json={"task": "t", "messages": ask("x")},
                             headers={"authorization": f"Bearer {ZAI_SECRET_LOCAL}"}),
                  httpx.post(url + "/v1/chat/completions", json={"model": "t", "messages": []}, headers=auth)):
            seen.append(r.text + json.dumps(dict(r.headers)))
        (tmp_path / "routing.yaml").write_text(text.replace("glm/glm-a", "glmx/glm-a"))  # a rejected edit is logged
        wait_for(lambda: httpx.get(url + "/readyz").json()["config"]["rejected"] is not None)
    finally:
        proc.stop()
    show = subprocess.run([sys.executable, "-m", "router", "validate", "--show", str(tmp_path / "routing.yaml")],
                          capture_output=True, text=True, env=env)
    everything = "\n".join(seen) + proc.output() + show.stdout + show.stderr
    for secret in (ZAI_SECRET_ENV, ZAI_SECRET_LOCAL, TENANT_KEY, ADMIN_KEY, hash_key(TENANT_KEY)[7:]):
        assert secret not in everything


def test_validate_warnings_show_and_hash_key(tmp_path: Path) -> None:
    text = base_yaml("http://127.0.0.1:9", extra=f"""
tenants:
  only-t:
    keys: [{hash_key(TENANT_KEY)}]
    tasks: [t]
""").replace("glm-a: {context_window: 200000, price: {input: 1, output: 1}}", "glm-a: {context_window: 200000}")
    (tmp_path / "routing.yaml").write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("ZAI_API_KEY",)}
    r = subprocess.run([sys.executable, "-m", "router", "validate", "--show", str(tmp_path / "routing.yaml")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0
    for expected in ("environment variable ZAI_API_KEY is referenced but not set",
                     "providers.glm.models.glm-a: no price",
                     "tasks.t.chain: every target is on provider 'glm'",
                     "tasks.other: no tenant may use it", "admin_keys: none"):
        assert expected in r.stderr
    shown = json.loads(r.stdout)
    assert shown["providers"]["claude"]["api_key"] == "<set>" and shown["tenants"]["only-t"]["keys"] == "<1 key hash(es)>"
    h = subprocess.run([sys.executable, "-m", "router", "hash-key"], input=TENANT_KEY + "\n",
                       capture_output=True, text=True)
    assert h.stdout.strip() == hash_key(TENANT_KEY) and TENANT_KEY not in h.stdout


def test_compose_file(tmp_path: Path) -> None:
    compose = ROOT / "docker-compose.yml"
    docker = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True) \
        if subprocess.run(["which", "docker"], capture_output=True).returncode == 0 else None
    if docker is not None and docker.returncode == 0:
        r = subprocess.run(["docker", "compose", "-f", str(compose), "config", "-q"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(compose.read_text())
    services = doc["services"]
    assert {"router", "redis", "otel-collector"} <= set(services)
    router, redis_svc = services["router"], services["redis"]
    assert router["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert any(str(v).endswith(":ro") for v in router["volumes"])
    assert router["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in redis_svc and "healthcheck" in router
    assert services["otel-collector"]["profiles"] == ["otel"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER " in dockerfile and "HEALTHCHECK" in dockerfile and "slim" in dockerfile


def test_sighup_to_the_parent_reloads_every_worker_and_dead_workers_return(tmp_path: Path, emulator: str) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "routing.yaml").write_text(base_yaml(emulator))
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "routing.yaml").symlink_to(real / "routing.yaml")  # only SIGHUP can make them see the edit
    port = free_port()
    proc = Proc(["serve", "--config", str(etc / "routing.yaml"), "--port", str(port), "--workers", "2"],
                tmp_path / "w.log", {"ZAI_API_KEY": "zk"})
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url + "/healthz")
        seen: dict[int, str] = {}

        def both(pred) -> bool:  # type: ignore[no-untyped-def]
            for _ in range(16):
                r = httpx.get(url + "/readyz").json()
                seen[r["pid"]] = r["config"]["version"]
            return len(seen) >= 2 and all(pred(v) for v in seen.values())

        wait_for(lambda: both(lambda v: True), 10)
        v1 = next(iter(seen.values()))
        (real / "routing.yaml").write_text(base_yaml(emulator, "[claude/claude-a]"))
        os.kill(proc.p.pid, signal.SIGHUP)
        seen.clear()
        wait_for(lambda: both(lambda v: v != v1), 4)
        victim = next(iter(seen))
        os.kill(victim, signal.SIGKILL)
        seen.clear()
        wait_for(lambda: both(lambda v: True) and victim not in seen and len(seen) == 2, 15)
    finally:
        proc.stop()
